"""``edge-emotion ui [--host 127.0.0.1] [--port 8501]``: a local page to upload a photo and see each face's emotions.

A small server from the standard library (``http.server``): one HTML page and one JSON endpoint, so the preview
adds no dependency and runs on a Raspberry Pi beside the service. Uploads are read into memory, checked by their
content (JPEG or PNG magic bytes, size, pixel count), run through the same face pipeline and drawing as
``edge-emotion annotate``, and dropped: nothing is written to disk and nothing is logged but counts.
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import logging
import socket
import sys
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

from edge_app.app import build_pipeline
from edge_app.commands import gradcam
from edge_app.commands.annotate import COLOURS, OTHER_COLOUR, classify_faces, draw_faces
from edge_app.commands.ui_page import PAGE
from edge_app.config import AppConfig
from edge_app.emotions import DESCRIPTIONS
from edge_app.model_card import ModelError, verify
from edge_app.pipeline import image_bytes
from edge_app.pipeline.classify import EmotionClassifier
from edge_app.pipeline.faces import FacePipeline, as_rgb8
from edge_app.pipeline.runtime import ModelLoadError

log = logging.getLogger(__name__)

MB = 1024 * 1024
# Larger photos are refused before decoding: a small PNG can unpack to gigabytes, more than a Pi has.
MAX_PIXELS = 40_000_000
# Side of the Grad-CAM picture of the 48x48 face.
HEATMAP_PX = 192
# The page may load and contact nothing but this server.
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
       "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'")


class UploadError(ValueError):
    """An upload the page cannot use; the message is shown to the user as it is."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.UNPROCESSABLE_ENTITY):
        super().__init__(message)
        self.status = status


def decode_upload(data: bytes) -> tuple[np.ndarray, str]:
    """The photo in ``data`` as RGB uint8 and its format (``jpeg`` or ``png``), judged by content, not by name.

    ``UploadError`` for anything that is not a readable JPEG or PNG of at most ``MAX_PIXELS`` pixels.
    """
    if not data:
        raise UploadError("The upload is empty: choose a JPEG or PNG photo.", HTTPStatus.BAD_REQUEST)
    kind = image_bytes.image_kind(data)
    if kind is None:
        raise UploadError("This file is not a JPEG or PNG image (its content was checked, not its name).",
                          HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
    size = image_bytes.picture_size(data)
    if size is None:
        raise UploadError(f"This {kind.upper()} file is damaged or cut short: it cannot be read.")
    if size[0] * size[1] > MAX_PIXELS:
        raise UploadError(f"The photo is {size[0]}x{size[1]} pixels; at most {MAX_PIXELS // 1_000_000} "
                          "megapixels are accepted.", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
    # IMREAD_COLOR applies the EXIF orientation of phone photos and reduces 16-bit or alpha PNGs to 8-bit BGR.
    frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if frame is None:
        raise UploadError(f"This {kind.upper()} file is damaged or cut short: it cannot be read.")
    return as_rgb8(frame, bgr=True), kind


def _data_url(rgb: np.ndarray, kind: str) -> str:
    """``rgb`` encoded as a JPEG or PNG ``data:`` URL, in memory."""
    ok, encoded = cv2.imencode(".jpg" if kind == "jpeg" else ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, 92] if kind == "jpeg" else [])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {kind} image")
    return f"data:image/{kind};base64,{base64.b64encode(encoded.tobytes()).decode('ascii')}"


def load_gradcam(classifier: EmotionClassifier) -> gradcam.GradCam | None:
    """Grad-CAM of the float model listed in the classifier's own card (same classes, same crop), or None (logged)
    when TensorFlow is not installed or the card lists no float model that is present and intact."""
    if not gradcam.available():
        log.info("TensorFlow is not installed: the page shows no Grad-CAM heat maps")
        return None
    entry = classifier.card.files.get("keras")
    if entry is None:
        log.info("model card %s lists no float model: the page shows no Grad-CAM heat maps", classifier.card_path)
        return None
    path = classifier.card_path.parent / entry.file
    try:
        verify(classifier.card, path, card_dir=classifier.card_path.parent)
    except ModelError as exc:
        log.warning("no Grad-CAM heat maps: %s", exc)
        return None
    log.info("loading %s for Grad-CAM heat maps", path)
    return gradcam.GradCam(path)


@dataclass
class PreviewApp:
    """What the page runs on: the device's models, the optional Grad-CAM, and the upload limits.

    One photo is analysed at a time (``lock``): the models are not thread-safe and a Pi has little to spare.
    """

    classifier: EmotionClassifier
    pipeline: FacePipeline
    heatmaps: gradcam.GradCam | None
    max_upload_bytes: int
    max_faces: int
    lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @classmethod
    def from_config(cls, config: AppConfig) -> PreviewApp:
        """The models as ``edge-emotion run`` loads them; the pipeline looks for one face more than ``ui.max_faces``
        so that a photo with too many can be told apart from one with just enough."""
        classifier, pipeline = build_pipeline(config)
        pipeline.max_faces = config.ui.max_faces + 1
        return cls(classifier, pipeline, load_gradcam(classifier), int(config.ui.max_upload_mb * MB),
                   config.ui.max_faces)

    def page(self) -> bytes:
        """The HTML page with this server's upload limit, which the page checks before sending a file."""
        return (PAGE.replace("__MAX_UPLOAD_BYTES__", str(self.max_upload_bytes))
                .replace("__MAX_UPLOAD_MB__", f"{self.max_upload_bytes / MB:g}").encode())

    def analyse(self, data: bytes) -> dict:
        """The JSON answer for one uploaded photo: the annotated image and, per face, box, emotion, probabilities,
        description and heat map. ``UploadError`` for a photo the page cannot use."""
        rgb, kind = decode_upload(data)
        with self.lock:
            pairs = classify_faces(rgb, self.pipeline, self.classifier)
            if not pairs:
                raise UploadError("No face found in this photo. Faces must face the camera and be at least "
                                  f"{self.pipeline.min_face_px} pixels wide.")
            if len(pairs) > self.max_faces:
                raise UploadError(f"This photo has more than {self.max_faces} faces; the page reads at most "
                                  f"{self.max_faces} (ui.max_faces).")
            faces = []
            for face, result in pairs:
                heatmap = None
                if self.heatmaps is not None:
                    cam = self.heatmaps(face.crop, face.features, self.classifier.classes.index(result.emotion))
                    size = (HEATMAP_PX, HEATMAP_PX)
                    big = cv2.resize(face.crop, size, interpolation=cv2.INTER_CUBIC)
                    heatmap = _data_url(cv2.cvtColor(gradcam.overlay(big, cv2.resize(cam, size)), cv2.COLOR_BGR2RGB),
                                        "png")
                faces.append({
                    "box": [round(float(v), 1) for v in result.box],
                    "emotion": result.emotion,
                    "probabilities": {name: round(float(p), 4) for name, p in result.probabilities.items()},
                    "description": DESCRIPTIONS.get(result.emotion, ""),
                    "heatmap": heatmap,
                })
        annotated = draw_faces(rgb, [result for _, result in pairs])
        return {
            "faces": faces,
            "image": _data_url(annotated, kind),
            "download_name": "annotated." + ("jpg" if kind == "jpeg" else "png"),
            "colours": {name: "#{:02x}{:02x}{:02x}".format(*COLOURS.get(name, OTHER_COLOUR))
                        for name in self.classifier.classes},
        }


class PreviewHandler(BaseHTTPRequestHandler):
    """``GET /``: the page. ``POST /api/detect`` (the photo's bytes as the body): JSON, ``{"error": ...}`` when
    the photo cannot be used."""

    server: PreviewServer
    protocol_version = "HTTP/1.1"
    timeout = 60  # a client that stops sending frees its thread
    server_version = "edge-emotion"
    sys_version = ""

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", CSP)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: HTTPStatus, payload: dict) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        if self.path.split("?")[0] in ("/", "/index.html"):
            self._send(HTTPStatus.OK, self.server.app.page(), "text/html; charset=utf-8")
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no page at {self.path.split('?')[0]}"})

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?")[0] != "/api/detect":
            self.close_connection = True  # its body is not read
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no endpoint at {self.path.split('?')[0]}"})
            return
        limit = self.server.app.max_upload_bytes
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            length = -1
        if length < 0 or self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._json(HTTPStatus.LENGTH_REQUIRED, {"error": "send the photo as the request body, with its length"})
            return
        if length > limit:
            self.close_connection = True  # refused before reading: the body is never received
            self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {
                "error": f"This file is {length / MB:.1f} MB; the largest accepted upload is {limit / MB:g} MB "
                         "(ui.max_upload_mb)."})
            return
        try:
            data = self.rfile.read(length)
        except OSError:  # the client stopped sending (timeout) or went away
            self.close_connection = True
            return
        if len(data) < length:
            self.close_connection = True
            self._json(HTTPStatus.BAD_REQUEST, {"error": "the upload was cut short; try again"})
            return
        try:
            answer = self.server.app.analyse(data)
        except UploadError as exc:
            log.info("upload refused (%d bytes): %s", length, exc)
            self._json(exc.status, {"error": str(exc)})
            return
        except Exception:  # a bug must not leave the page waiting on a dropped connection
            log.exception("upload of %d bytes failed", length)
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "the photo could not be analysed; see the log"})
            return
        log.info("upload of %d bytes: %d face(s)", length, len(answer["faces"]))
        self._json(HTTPStatus.OK, answer)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        log.debug("%s " + format, self.address_string(), *args)


class PreviewServer(ThreadingHTTPServer):
    """The HTTP server, carrying the ``PreviewApp``; IPv6 when the host is an IPv6 address."""

    daemon_threads = True

    def __init__(self, app: PreviewApp, host: str, port: int):
        self.app = app
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), PreviewHandler)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _port(text: str) -> int:
    port = int(text) if text.strip().isdigit() else -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0-65535 (0: any free port), got {text}")
    return port


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--host`` and ``--port``; both default to the ``ui:`` section of the config."""
    parser.add_argument("--host", metavar="ADDRESS",
                        help="address to listen on (default ui.host, 127.0.0.1: this machine only; "
                             "0.0.0.0 opens the page to the network)")
    parser.add_argument("--port", type=_port, metavar="PORT", help="port to listen on (default ui.port, 8501)")


def main(args: argparse.Namespace, config: AppConfig) -> int:
    """Serve the page until interrupted; 2 when the models cannot be loaded or the address cannot be bound."""
    host = args.host or config.ui.host
    port = config.ui.port if args.port is None else args.port
    try:
        app = PreviewApp.from_config(config)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        server = PreviewServer(app, host, port)
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port} ({exc.strerror or exc})", file=sys.stderr)
        return 2
    bound_host, bound_port = server.server_address[:2]
    if not is_loopback(host):
        log.warning("listening on %s port %d: anyone who can reach this machine there can upload photos to the "
                    "page (use --host 127.0.0.1 to keep it to this machine)", host, bound_port)
    shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
    log.info("preview page at http://%s:%d/ (Ctrl+C to stop)", shown, bound_port)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
