"""MediaPipe Face Mesh (468 landmarks), with MediaPipe's region-of-interest rules, in numpy.

A region of interest (ROI) is a square, rotated so the eyes are level, 1.5x the face:
from a detection (eye keypoints) on the first frame, from the previous landmarks
(eye corners 33 and 263) while a face is followed.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge_app.pipeline.detect import Detection, sigmoid
from edge_app.pipeline.geometry import square_warp_matrix
from edge_app.pipeline.mediapipe_assets import FACE_LANDMARKER, mediapipe_model
from edge_app.pipeline.runtime import TFLiteModel

INPUT_SIZE = 192
NUM_LANDMARKS = 468
ROI_SCALE = 1.5
# The person's right / left eye outer corners: MediaPipe's rotation reference for tracking.
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263


@dataclass(frozen=True)
class Roi:
    """A square region: centre (x, y), side and rotation (radians, clockwise in image space), in pixels."""

    cx: float
    cy: float
    size: float
    rotation: float

    def to_image(self, uv: np.ndarray) -> np.ndarray:
        """Map ROI-normalised points (N, 2) in [0, 1] to image pixels."""
        c, s = np.cos(self.rotation), np.sin(self.rotation)
        d = (uv - 0.5) * self.size
        return np.stack([c * d[:, 0] - s * d[:, 1] + self.cx, s * d[:, 0] + c * d[:, 1] + self.cy], axis=1)

    def warp_matrix(self, out_size: int) -> np.ndarray:
        """Affine matrix taking output pixels (0..out_size) to image pixels, for ``WARP_INVERSE_MAP``."""
        return square_warp_matrix(np.array([self.cx, self.cy]), self.size, self.rotation, out_size)


def _roi(box: np.ndarray, start: np.ndarray, end: np.ndarray) -> Roi:
    rotation = -np.arctan2(-(end[1] - start[1]), end[0] - start[0])
    rotation = (rotation + np.pi) % (2 * np.pi) - np.pi
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = max(box[2] - box[0], box[3] - box[1]) * ROI_SCALE
    return Roi(float(cx), float(cy), float(side), float(rotation))


def roi_from_detection(detection: Detection) -> Roi:
    return _roi(detection.box, detection.keypoints[0], detection.keypoints[1])


def roi_from_landmarks(landmarks: np.ndarray) -> Roi:
    xy = landmarks[:, :2]
    box = np.concatenate([xy.min(0), xy.max(0)])
    return _roi(box, xy[RIGHT_EYE_OUTER], xy[LEFT_EYE_OUTER])


class FaceMesh:
    """468 landmarks (x, y in image pixels, z in the same scale) and a face-presence score for a ROI;
    ``delegate`` as in ``TFLiteModel`` (``model.delegate_in_use`` says)."""

    def __init__(self, num_threads: int = 1, delegate: str = "cpu"):
        self.model = TFLiteModel(mediapipe_model(FACE_LANDMARKER), delegate=delegate, num_threads=num_threads)
        self._input = next(iter(self.model.inputs))
        shapes = {name: int(np.prod(d["shape"])) for name, d in self.model.outputs.items()}
        self._landmarks = next(n for n, size in shapes.items() if size == NUM_LANDMARKS * 3)
        self._score = next(n for n, size in shapes.items() if size == 1)

    def __call__(self, rgb: np.ndarray, roi: Roi) -> tuple[np.ndarray, float]:
        crop = cv2.warpAffine(
            rgb,
            roi.warp_matrix(INPUT_SIZE),
            (INPUT_SIZE, INPUT_SIZE),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
        out = self.model({self._input: (crop.astype(np.float32) / 255.0)[None]})
        raw = out[self._landmarks].reshape(NUM_LANDMARKS, 3) / INPUT_SIZE
        score = float(sigmoid(out[self._score].item()))
        xy = roi.to_image(raw[:, :2])
        z = raw[:, 2:3] * roi.size
        return np.concatenate([xy, z], axis=1).astype(np.float32), score
