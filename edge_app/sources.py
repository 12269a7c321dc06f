"""Frame sources: the bundled demo photo, an image file or folder, a video file, a camera or stream (OpenCV).

Every source yields RGB uint8 frames at most ``source.fps`` per second, rotated and mirrored as configured.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from edge_app.config import SourceConfig
from edge_app.faces import as_rgb8

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
_ROTATIONS = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


class SourceError(RuntimeError):
    """A source that cannot be opened or read."""


def demo_image() -> Path:
    """The bundled demo input: a public-domain NASA portrait (skimage.data.astronaut)."""
    return Path(str(resources.files("edge_app").joinpath("data/demo_face.jpg")))


def _read_image(path: Path) -> np.ndarray | None:
    frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if frame is None:
        log.warning("%s: not a readable image, skipped", path)
        return None
    return as_rgb8(frame, bgr=True)


def _stills(paths: list[Path], loop: bool) -> Iterator[np.ndarray]:
    while True:
        frames = 0
        for path in paths:
            frame = _read_image(path)
            if frame is not None:
                frames += 1
                yield frame
        if not loop or frames == 0:
            return


def _capture(target: int | str, config: SourceConfig, loop: bool) -> Iterator[np.ndarray]:
    capture = cv2.VideoCapture(target)
    if not capture.isOpened():
        raise SourceError(f"source.uri: cannot open {target!r}")
    if isinstance(target, int):
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, config.width)
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, config.height)
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                if loop and isinstance(target, str) and Path(target).is_file():
                    capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    ok, frame = capture.read()
                if not ok:
                    return
            yield as_rgb8(frame, bgr=True)
    finally:
        capture.release()


def _raw_frames(config: SourceConfig) -> Iterator[np.ndarray]:
    uri = config.uri.strip()
    if config.kind == "picamera2" or uri == "picamera2":
        raise SourceError("source.kind: picamera2 is not supported by this build yet; use a camera index")
    if config.kind == "demo" or uri == "demo":
        return _stills([demo_image()], loop=True)
    path = Path(uri)
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise SourceError(f"source.uri: {path} holds no .jpg/.png/.bmp images")
        return _stills(images, config.loop)
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return _stills([path], config.loop)
    if path.is_file():
        return _capture(str(path), config, config.loop)
    if uri.isdigit():
        return _capture(int(uri), config, loop=False)
    if "://" in uri or uri.startswith("/dev/"):
        return _capture(uri, config, loop=False)
    raise SourceError(f"source.uri: {uri!r} is neither 'demo', a file, a folder, a camera index, a device nor a URL")


def frames(config: SourceConfig) -> Iterator[np.ndarray]:
    """RGB frames from the configured source, rate-capped, rotated and mirrored."""
    interval = 1.0 / config.fps if config.fps > 0 else 0.0
    next_due = time.monotonic()
    for frame in _raw_frames(config):
        if interval:
            delay = next_due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_due = max(next_due + interval, time.monotonic() - interval)
        if config.rotate:
            frame = cv2.rotate(frame, _ROTATIONS[config.rotate])
        if config.mirror:
            frame = np.ascontiguousarray(frame[:, ::-1])
        yield frame
