"""Locate MediaPipe's bundled face models without importing mediapipe.

``import mediapipe`` pulls in TensorFlow when it is installed (slow, memory-hungry), so
the package directory is found with ``importlib.util.find_spec``. Each file is checked
against the sha256 the decoding code was written for: another version of the model
would decode to garbage without any error.
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import cache
from pathlib import Path

from edge_app.runtime import ModelLoadError

FACE_DETECTOR = "modules/face_detection/face_detection_short_range.tflite"
FACE_LANDMARKER = "modules/face_landmark/face_landmark.tflite"

# Identical in mediapipe 0.10.14 - 0.10.21 (the range pyproject.toml allows).
KNOWN_SHA256 = {
    FACE_DETECTOR: "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
    FACE_LANDMARKER: "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814",
}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@cache
def mediapipe_model(relative: str) -> Path:
    """Path of a verified model file inside the installed mediapipe package."""
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "mediapipe is not installed; its bundled face models are needed: pip install 'mediapipe>=0.10.14,<0.10.22'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise ModelLoadError(
            f"{path} is missing: this mediapipe ships no face models; install 'mediapipe>=0.10.14,<0.10.22'"
        )
    return verified(path, KNOWN_SHA256[relative])


def verified(path: Path, expected_sha256: str) -> Path:
    """``path`` if its content has the expected sha256, else a ModelLoadError naming the file."""
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise ModelLoadError(
            f"{path} has sha256 {actual}, expected {expected_sha256}: "
            "a different model version; install 'mediapipe>=0.10.14,<0.10.22'"
        )
    return path
