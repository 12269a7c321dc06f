"""Helpers shared by the tests that feed videos: write real MJPEG files from frames."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain
from pathlib import Path

import cv2
import numpy as np

from edge_app.pipeline.capture import demo_image


def demo_face_bgr() -> np.ndarray:
    """The bundled demo photo (one real face) as OpenCV reads it: BGR uint8."""
    return cv2.imread(str(demo_image()))


def write_video(path: Path, frames: Iterable[np.ndarray], fps: float = 10) -> Path:
    """BGR frames of one size as an MJPG AVI, the format USB cameras stream; returns ``path``."""
    frames = iter(frames)
    first = next(frames)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, first.shape[1::-1])
    assert writer.isOpened(), f"OpenCV cannot write {path}"
    for frame in chain([first], frames):
        writer.write(frame)
    writer.release()
    return path
