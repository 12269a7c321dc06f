"""MediaPipe's two face models, shipped inside this package (``edge_app/pipeline/mediapipe_models``).

The device install needs no mediapipe: the mediapipe wheel drags in jax, matplotlib and
``opencv-contrib-python`` (whose ``cv2`` needs libGL, absent on a headless Pi) for two files of
1.47 MB. The files are MediaPipe's, unmodified (Apache-2.0: see the LICENSE and NOTICE beside
them). Each is checked against the sha256 the decoding code was written for: another version
of the model would decode to garbage without any error.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from edge_app.pipeline.runtime import ModelLoadError

# Where each file lies inside the mediapipe package (0.10.14 - 0.10.21 ship the same bytes).
FACE_DETECTOR = "modules/face_detection/face_detection_short_range.tflite"
FACE_LANDMARKER = "modules/face_landmark/face_landmark.tflite"

KNOWN_SHA256 = {
    FACE_DETECTOR: "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
    FACE_LANDMARKER: "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814",
}

SHIPPED_DIR = Path(__file__).resolve().parent / "mediapipe_models"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped_path(relative: str) -> Path:
    """Where the copy of mediapipe's ``relative`` file lies in this package (not yet verified)."""
    return SHIPPED_DIR / Path(relative).name


@cache
def mediapipe_model(relative: str) -> Path:
    """Path of a verified MediaPipe face model shipped with this package."""
    path = shipped_path(relative)
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing: the edge-emotion install is incomplete, reinstall it")
    return verified(path, KNOWN_SHA256[relative])


def verified(path: Path, expected_sha256: str) -> Path:
    """``path`` if its content has the expected sha256, else a ModelLoadError naming the file."""
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise ModelLoadError(
            f"{path} has sha256 {actual}, expected {expected_sha256}: not the MediaPipe model this code decodes; "
            "reinstall edge-emotion"
        )
    return path
