"""Model inputs from a face: the 48x48 grayscale crop and the landmark feature vector.

Training (``train/``) and the device both call these functions; the crop framing
parameters travel in the model card so that the device frames faces the way the
training images were framed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cache
from importlib import resources

import cv2
import numpy as np

from edge_app.pipeline.geometry import square_warp_matrix
from edge_app.pipeline.landmarks import NUM_LANDMARKS

CROP_SIZE = 48
# Eye centres from Face Mesh: the mean of each eye's two corners (the person's right eye first).
RIGHT_EYE_CORNERS = (33, 133)
LEFT_EYE_CORNERS = (362, 263)
# 468 (x, y) pairs plus one flag that says whether landmarks were found.
LANDMARK_FEATURES = NUM_LANDMARKS * 2 + 1


@dataclass(frozen=True)
class CropSpec:
    """Where the 48x48 crop sits relative to the eyes, in units of the inter-ocular distance (IOD).

    ``size_iod``: crop side / IOD. ``centre_below_eyes_iod``: how far the crop centre lies
    below the eye midpoint / IOD. Fitted to FER-2013 framing by ``train/landmark_cache.py``.
    """

    size_iod: float
    centre_below_eyes_iod: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def face_input(crops: np.ndarray) -> np.ndarray:
    """The emotion model's face input: uint8 crops (..., 48, 48) as float32 in [0, 1] with a channel axis.

    The one place the pixel scaling is written: training, conversion, evaluation and the device's
    classifier all feed faces through it, so they cannot drift apart.
    """
    return np.asarray(crops)[..., None].astype(np.float32) / 255.0


def eye_centres(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(right eye, left eye) centres in pixels from Face Mesh landmarks (468, 2+)."""
    xy = landmarks[:, :2]
    return xy[list(RIGHT_EYE_CORNERS)].mean(0), xy[list(LEFT_EYE_CORNERS)].mean(0)


def _eye_frame(right_eye: np.ndarray, left_eye: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Eye midpoint, inter-ocular distance and roll angle (radians, image y down)."""
    mid = (right_eye + left_eye) / 2.0
    delta = left_eye - right_eye
    return mid, float(np.hypot(*delta)), float(np.arctan2(delta[1], delta[0]))


def crop_face(image: np.ndarray, right_eye: np.ndarray, left_eye: np.ndarray, spec: CropSpec) -> np.ndarray:
    """A level 48x48 uint8 grayscale crop framed from the eye centres (in pixels of ``image``).

    ``image`` is grayscale (training data) or RGB (camera frames): an RGB face is turned
    grey after it is cut out, so a frame costs no whole-frame colour conversion.
    """
    mid, iod, roll = _eye_frame(np.asarray(right_eye, np.float64), np.asarray(left_eye, np.float64))
    side = max(spec.size_iod * iod, 1.0)
    c, s = np.cos(roll), np.sin(roll)
    down = np.array([-s, c])  # the face's "down" direction in the image
    centre = mid + down * spec.centre_below_eyes_iod * iod
    # Warp to an intermediate size near the source resolution, then area-downsample: no aliasing.
    factor = int(max(1, min(8, side // CROP_SIZE)))
    out = CROP_SIZE * factor
    warped = cv2.warpAffine(
        image, square_warp_matrix(centre, side, roll, out), (out, out),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE,
    )
    if warped.ndim == 3:
        warped = cv2.cvtColor(warped, cv2.COLOR_RGB2GRAY)
    if factor > 1:
        warped = cv2.resize(warped, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_AREA)
    return warped


def crop_landmarks(landmarks: np.ndarray, spec: CropSpec) -> np.ndarray:
    """Where landmarks (N, 2+) land inside the crop that ``crop_face`` makes, in crop pixels."""
    mid, iod, roll = _eye_frame(*eye_centres(landmarks))
    c, s = np.cos(roll), np.sin(roll)
    rel = landmarks[:, :2] - mid
    local = np.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1]], axis=1)
    local[:, 1] -= spec.centre_below_eyes_iod * iod
    return local / (spec.size_iod * iod) * CROP_SIZE + CROP_SIZE / 2.0


def landmark_features(landmarks: np.ndarray | None) -> np.ndarray:
    """The landmark input: (x, y) centred on the eye midpoint, scaled by IOD, rotated level, + a found flag.

    ``None`` (no landmarks) or landmarks that are not finite give all zeros: the "no
    landmarks" input that training also uses.
    """
    features = np.zeros(LANDMARK_FEATURES, np.float32)
    if landmarks is None or not np.all(np.isfinite(landmarks[:, :2])):
        return features
    mid, iod, roll = _eye_frame(*eye_centres(landmarks))
    if iod < 1e-6:
        return features
    c, s = np.cos(roll), np.sin(roll)
    rel = (landmarks[:, :2] - mid) / iod
    level = np.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1]], axis=1)
    features[:-1] = level.reshape(-1)
    features[-1] = 1.0
    return features


@cache
def mirror_index() -> np.ndarray:
    """Face Mesh landmark index of each landmark's mirror image (the person's left <-> right)."""
    text = resources.files("edge_app").joinpath("data/face_mesh_mirror.json").read_text()
    return np.asarray(json.loads(text)["mirror"], dtype=np.int64)


def mirror_features(features: np.ndarray) -> np.ndarray:
    """The landmark features of the horizontally flipped face (works on a batch too)."""
    features = np.asarray(features, np.float32)
    points = features[..., :-1].reshape(*features.shape[:-1], NUM_LANDMARKS, 2)[..., mirror_index(), :]
    points = points * np.array([-1.0, 1.0], np.float32)
    flag = features[..., -1:]
    return np.concatenate([points.reshape(*features.shape[:-1], -1), flag], axis=-1) * (flag > 0)


def mirror_inputs(crops: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The horizontally flipped face crop(s) and landmark features: what flip test-time augmentation
    feeds the model, in evaluation and on the device. ``crops``: (48, 48) or a batch (N, 48, 48)."""
    return crops[..., ::-1], mirror_features(features)
