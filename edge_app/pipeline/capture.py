"""Frame sources: the bundled demo photo, image files and folders, video files, cameras (OpenCV or picamera2),
stream URLs and GStreamer pipelines (edge_app.pipeline.gstreamer, through PyGObject).

``open_source`` opens one source once; ``ReconnectingSource`` is what the service reads: it paces frames to
``source.fps``, rotates and mirrors them, returns RGB uint8, and when the source fails (camera unplugged, stream
gone, file truncated) it says so in ``state`` and reopens it with exponential backoff instead of giving up.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from edge_app.config import ConfigError, SourceConfig
from edge_app.pipeline import image_bytes
from edge_app.pipeline.faces import FrameError, as_rgb8

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "rtp", "tcp", "srt")
PICAMERA2_MISSING = "picamera2 is not installed: on Raspberry Pi OS, apt install python3-picamera2"
ROTATIONS = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}
# How long ReconnectingSource.read() waits at most while a reopen is not yet due, so the caller's loop stays lively.
REOPEN_POLL_S = 0.25
OPENCV_SILENT = 0  # cv2.utils.logging.LOG_LEVEL_SILENT, which not every build exposes
# A stream URL whose server stops answering fails after this long (opening or reading) and is reopened, instead of
# hanging the service until the systemd watchdog kills it; short enough that SIGTERM still ends the process in 5 s.
STREAM_TIMEOUT_S = 3.0
_USERINFO = re.compile(r"(://)[^/@\s]*@")


class SourceError(RuntimeError):
    """A source that cannot be opened or stopped delivering frames; the message names it (without credentials)."""


class ImageError(ValueError):
    """A file that is not a complete, readable image; the message names the file."""


def redact(uri: str) -> str:
    """``uri`` as it may appear in logs and status: user names and passwords in URLs replaced by ``***``."""
    return _USERINFO.sub(r"\1***@", uri)


def demo_image() -> Path:
    """The bundled demo input: a public-domain NASA portrait (skimage.data.astronaut)."""
    return Path(str(resources.files("edge_app").joinpath("data/demo_face.jpg")))


def read_image(path: str | Path) -> np.ndarray:
    """An image file as RGB uint8; ``ImageError`` naming the file when it is missing, empty, a directory,
    not an image, or truncated."""
    path = Path(path)
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not data:
        raise ImageError(f"{path}: empty file (0 bytes)")
    if not image_bytes.complete(data):
        raise ImageError(f"{path}: truncated image (the file ends before the picture does)")
    frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if frame is None:
        raise ImageError(f"{path}: not an image OpenCV can read")
    try:
        return as_rgb8(frame, bgr=True)
    except FrameError as exc:
        raise ImageError(f"{path}: {exc}") from None


class FrameSource(Protocol):
    """One opened source. ``read`` returns a frame in any layout ``as_rgb8`` accepts, with ``bgr`` telling the
    channel order, or None at the end; it raises SourceError when the source fails and FrameError for one bad
    frame (the source goes on)."""

    name: str
    bgr: bool

    def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


class StillSource:
    """Image files in order, optionally looping; an unreadable file is one bad frame (FrameError), warned about once."""

    bgr = False

    def __init__(self, paths: list[Path], loop: bool, name: str) -> None:
        self.paths = paths
        self.loop = loop
        self.name = name
        self._next = 0
        self._good_in_pass = 0
        self._still: np.ndarray | None = None  # a single image is decoded once (the demo, a photo)
        self._warned: set[Path] = set()

    def read(self) -> np.ndarray | None:
        if self._next == len(self.paths):
            if self._good_in_pass == 0:
                raise SourceError(f"{self.name}: no readable image")
            if not self.loop:
                return None
            self._next, self._good_in_pass = 0, 0
        path = self.paths[self._next]
        self._next += 1
        frame = self._still
        if frame is None:
            try:
                frame = read_image(path)
            except ImageError as exc:
                if path not in self._warned:
                    log.warning("%s; skipped", exc)
                    self._warned.add(path)
                raise FrameError(str(exc)) from None
            if len(self.paths) == 1:
                self._still = frame
        self._good_in_pass += 1
        return frame

    def close(self) -> None:
        self._still = None


@contextmanager
def _quiet_opencv() -> Iterator[None]:
    """OpenCV prints its own warnings when a camera index does not exist; our SourceError says it once, clearly."""
    previous = cv2.getLogLevel()
    cv2.setLogLevel(OPENCV_SILENT)
    try:
        yield
    finally:
        cv2.setLogLevel(previous)


class CaptureSource:
    """An OpenCV capture: camera (index or /dev/video*), stream URL or video file."""

    bgr = True

    def __init__(self, kind: str, target: int | str, config: SourceConfig, name: str) -> None:
        self.kind = kind
        self.name = name
        self.loop = config.loop and kind == "video"
        with _quiet_opencv():
            if kind == "stream":
                timeout_ms = int(STREAM_TIMEOUT_S * 1000)
                self.capture = cv2.VideoCapture(target, cv2.CAP_FFMPEG, [
                    cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms])
            else:
                self.capture = cv2.VideoCapture(target)
        if not self.capture.isOpened():
            self.capture.release()
            why = "file not found" if kind == "video" and not Path(str(target)).exists() else "cannot open"
            raise SourceError(f"{name}: {why}")
        if kind == "camera":
            self.capture.set(cv2.CAP_PROP_FRAME_WIDTH, config.width)
            self.capture.set(cv2.CAP_PROP_FRAME_HEIGHT, config.height)
            if config.fps > 0:  # a camera running faster than the cap would only fill its buffers with stale frames
                self.capture.set(cv2.CAP_PROP_FPS, config.fps)
        self.frame_count = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT)) if kind == "video" else 0
        self.position = 0

    def read(self) -> np.ndarray | None:
        ok, frame = self.capture.read()
        if ok:
            self.position += 1
            return frame
        if self.kind != "video":
            raise SourceError(f"{self.name}: stopped delivering frames")
        if self.position == 0:
            raise SourceError(f"{self.name}: no frame could be decoded (not a video, or corrupt)")
        if self.frame_count and self.position < self.frame_count:
            why = f"{self.name}: ended at frame {self.position} of {self.frame_count} (truncated or corrupt)"
            if self.loop:
                raise SourceError(why)  # reopened after the backoff: plays again from the start
            log.warning("%s; treating it as the end of the video", why)
            return None
        if not self.loop:
            return None
        self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
        self.position = 0
        return self.read()

    def close(self) -> None:
        self.capture.release()


class Picamera2Source:
    """A Raspberry Pi camera through picamera2 (libcamera); imported only when chosen."""

    bgr = True  # picamera2's "RGB888" is B, G, R in memory

    def __init__(self, config: SourceConfig, name: str) -> None:
        from picamera2 import Picamera2  # only on a Pi, only when chosen

        self.name = name
        try:
            self.camera = Picamera2()
            self.camera.configure(self.camera.create_video_configuration(
                main={"size": (config.width, config.height), "format": "RGB888"}))
            self.camera.start()
        except (RuntimeError, IndexError, OSError) as exc:
            raise SourceError(f"{name}: cannot open ({exc})") from None

    def read(self) -> np.ndarray | None:
        try:
            return self.camera.capture_array("main")
        except (RuntimeError, OSError) as exc:
            raise SourceError(f"{self.name}: stopped delivering frames ({exc})") from None

    def close(self) -> None:
        self.camera.close()


def resolve(config: SourceConfig) -> tuple[str, int | str]:
    """The kind of source (demo, picamera2, camera, stream, gstreamer, video, images) and what to open.

    ``ConfigError`` when ``source.uri`` cannot be understood: that is a setting to fix, not a source to retry.
    """
    uri = config.uri.strip()
    kind = config.kind
    path = Path(uri).expanduser()
    if kind == "auto":
        if uri == "demo":
            kind = "demo"
        elif uri == "picamera2":
            kind = "picamera2"
        elif uri.isdigit() or uri.startswith("/dev/video"):
            kind = "camera"
        elif uri.split("://", 1)[0].lower() in STREAM_SCHEMES and "://" in uri:
            kind = "stream"
        elif "!" in uri:
            kind = "gstreamer"
        elif path.is_dir():
            kind = "images"
        elif path.is_file():
            kind = "images" if path.suffix.lower() in IMAGE_SUFFIXES else "video"
        else:
            raise ConfigError(
                f"source.uri: {redact(uri)!r} is not 'demo', 'picamera2', a camera index or /dev/video*, a stream URL,"
                " a GStreamer pipeline ending in appsink, or an existing video file, image or folder")
    if kind == "demo":
        return "demo", str(demo_image())
    if kind == "picamera2":
        try:
            import picamera2  # noqa: F401 - checked at start-up so that the error is immediate and clear
        except ImportError:
            raise ConfigError(f"source.kind: {PICAMERA2_MISSING}") from None
        return "picamera2", uri
    if kind == "camera":
        if uri.isdigit():
            return "camera", int(uri)
        if not uri.startswith("/dev/"):
            raise ConfigError(f"source.uri: expected a camera index or a /dev/video* path, got {redact(uri)!r}")
        return "camera", uri
    if kind == "gstreamer" or (kind == "stream" and "!" in uri):
        from edge_app.pipeline.gstreamer import check_pipeline  # imports gi: only when a pipeline is the source

        check_pipeline(uri)
        return "gstreamer", uri
    if kind == "stream":
        return "stream", uri
    return kind, str(path)


def open_source(kind: str, target: int | str, config: SourceConfig) -> FrameSource:
    """Open a source that ``resolve`` found, once; SourceError when it cannot be opened now."""
    name = f"source {redact(config.uri.strip())!r}"
    if kind == "demo":
        return StillSource([Path(str(target))], loop=True, name=name)
    if kind == "picamera2":
        return Picamera2Source(config, name)
    if kind == "gstreamer":
        from edge_app.pipeline.gstreamer import GStreamerSource  # imports gi: only when a pipeline is the source

        return GStreamerSource(str(target), config, name)
    if kind == "images":
        path = Path(str(target))
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not images:
                raise SourceError(f"{name}: the folder holds no {'/'.join(sorted(IMAGE_SUFFIXES))} images")
            return StillSource(images, config.loop, name)
        if not path.is_file():
            raise SourceError(f"{name}: file not found")
        return StillSource([path], config.loop, name)
    return CaptureSource(kind, target, config, name)


class ReconnectingSource:
    """The configured source, paced, rotated and mirrored, reopened with exponential backoff when it fails.

    ``state`` is ``"ok"``, ``"reopening: <why>"`` or ``"ended"`` (a non-looping file or folder has been played);
    ``read`` returns None while reopening (after waiting at most ``REOPEN_POLL_S``) and once ended, so the
    caller keeps publishing and stopping promptly. ``ConfigError`` from the constructor when ``source.uri`` cannot
    be understood.
    """

    def __init__(self, config: SourceConfig) -> None:
        self.config = config
        self.kind, self.target = resolve(config)
        self.name = f"source {redact(config.uri.strip())!r}"
        self.state = "ok"
        self.reopens = 0
        self._source: FrameSource | None = None
        self._delay = config.reopen_initial_s
        self._next_attempt = time.monotonic()
        self._interval = 1.0 / config.fps if config.fps > 0 else 0.0
        self._next_frame = time.monotonic()

    @property
    def ended(self) -> bool:
        return self.state == "ended"

    def read(self) -> np.ndarray | None:
        """The next frame as RGB uint8, or None (see the class); FrameError for one bad frame."""
        if self.ended:
            return None
        if self._source is None and not self._open():
            return None
        assert self._source is not None
        self._pace()
        try:
            frame = self._source.read()
        except SourceError as exc:
            self._fail(str(exc))
            return None
        if frame is None:
            self._close()
            self.state = "ended"
            log.info("%s: ended", self.name)
            return None
        rgb = as_rgb8(frame, bgr=self._source.bgr)
        if self.state != "ok":
            log.info("%s: frames are flowing again", self.name)
            self.state = "ok"
        self._delay = self.config.reopen_initial_s
        if self.config.rotate:
            rgb = cv2.rotate(rgb, ROTATIONS[self.config.rotate])
        if self.config.mirror:
            rgb = cv2.flip(rgb, 1)
        return rgb

    def close(self) -> None:
        self._close()

    def _open(self) -> bool:
        wait = self._next_attempt - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, REOPEN_POLL_S))
            return False
        try:
            self._source = open_source(self.kind, self.target, self.config)
        except SourceError as exc:
            self._fail(str(exc))
            return False
        self._next_frame = time.monotonic()
        return True

    def _fail(self, why: str) -> None:
        """Close what is open, say why, and schedule the next attempt (delay doubling up to reopen_max_s)."""
        self._close()
        if self.state != f"reopening: {why}":
            log.warning("%s; reopening in %.1f s", why, self._delay)
        self.state = f"reopening: {why}"
        self.reopens += 1
        self._next_attempt = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, self.config.reopen_max_s)

    def _pace(self) -> None:
        """At most ``source.fps`` frames a second; a slow consumer is not made to catch up in a burst."""
        if not self._interval:
            return
        now = time.monotonic()
        if self._next_frame > now:
            time.sleep(self._next_frame - now)
            now = self._next_frame
        self._next_frame = max(self._next_frame + self._interval, now)

    def _close(self) -> None:
        if self._source is not None:
            source, self._source = self._source, None
            source.close()
