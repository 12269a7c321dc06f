"""BlazeFace short-range face detection, decoded in numpy the way MediaPipe's graph does.

Mirrors MediaPipe's ``face_detection_short_range`` graph: letterboxed 128x128 input in
[-1, 1], SSD anchors, sigmoid scores, weighted non-max suppression, letterbox removal.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge_app.pipeline.geometry import iou_matrix
from edge_app.pipeline.mediapipe_assets import FACE_DETECTOR, mediapipe_model
from edge_app.pipeline.runtime import TFLiteModel

INPUT_SIZE = 128
NUM_KEYPOINTS = 6  # right eye, left eye (the person's), nose tip, mouth, right ear, left ear


@dataclass(frozen=True)
class Detection:
    """One face: box ``(x0, y0, x1, y1)`` and ``keypoints`` (6, 2) in image pixels."""

    box: np.ndarray
    score: float
    keypoints: np.ndarray

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Overflow-free logistic function."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))


def ssd_anchors() -> np.ndarray:
    """Anchor centres (896, 2) of the short-range model (SsdAnchorsCalculator, fixed size)."""
    centres = []
    # strides 8, 16, 16, 16: layers with the same stride share a grid, 2 anchors per layer.
    for stride, per_cell in ((8, 2), (16, 6)):
        size = INPUT_SIZE // stride
        ys, xs = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
        grid = np.stack([(xs + 0.5) / size, (ys + 0.5) / size], axis=-1).reshape(-1, 2)
        centres.append(np.repeat(grid, per_cell, axis=0))
    return np.concatenate(centres).astype(np.float32)


def weighted_nms(
    boxes: np.ndarray, scores: np.ndarray, keypoints: np.ndarray, iou_threshold: float = 0.3
) -> list[tuple[np.ndarray, float, np.ndarray]]:
    """MediaPipe's WEIGHTED non-max suppression: overlapping boxes are averaged by score."""
    order = np.argsort(-scores)
    remaining = order
    kept = []
    while remaining.size:
        top = remaining[0]
        overlap = iou_matrix(boxes[top][None], boxes[remaining])[0] > iou_threshold
        cluster = remaining[overlap]
        weights = scores[cluster][:, None]
        box = (boxes[cluster] * weights).sum(0) / weights.sum()
        kps = (keypoints[cluster] * weights[:, :, None]).sum(0) / weights.sum()
        kept.append((box, float(scores[top]), kps))
        remaining = remaining[~overlap]
    return kept


class FaceDetector:
    """Find faces in an RGB uint8 frame; ``delegate`` as in ``TFLiteModel`` (``model.delegate_in_use`` says)."""

    def __init__(self, min_score: float = 0.5, iou_threshold: float = 0.3, num_threads: int = 1,
                 delegate: str = "cpu"):
        self.model = TFLiteModel(mediapipe_model(FACE_DETECTOR), delegate=delegate, num_threads=num_threads)
        self.min_score = min_score
        self.iou_threshold = iou_threshold
        self.anchors = ssd_anchors()
        self._input = next(iter(self.model.inputs))

    def __call__(self, rgb: np.ndarray) -> list[Detection]:
        h, w = rgb.shape[:2]
        scale = INPUT_SIZE / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        resized = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        canvas = np.zeros((INPUT_SIZE, INPUT_SIZE, 3), np.float32)
        top, left = (INPUT_SIZE - nh) // 2, (INPUT_SIZE - nw) // 2
        canvas[top : top + nh, left : left + nw] = resized.astype(np.float32) / 127.5 - 1.0
        out = self.model({self._input: canvas[None]})
        raw = out["regressors"][0]
        scores = sigmoid(out["classificators"][0, :, 0])
        keep = scores >= self.min_score
        if not keep.any():
            return []
        raw, scores, anchors = raw[keep], scores[keep], self.anchors[keep]
        centre = raw[:, 0:2] / INPUT_SIZE + anchors
        half = raw[:, 2:4] / INPUT_SIZE / 2
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        kps = raw[:, 4 : 4 + 2 * NUM_KEYPOINTS].reshape(-1, NUM_KEYPOINTS, 2) / INPUT_SIZE + anchors[:, None, :]
        # Letterboxed [0, 1] coordinates -> image pixels.
        offset = np.array([left, top], np.float32)
        detections = []
        for box, score, kp in weighted_nms(boxes, scores, kps, self.iou_threshold):
            box_px = (box.reshape(2, 2) * INPUT_SIZE - offset) / scale
            kp_px = (kp * INPUT_SIZE - offset) / scale
            detections.append(Detection(box_px.reshape(4), score, kp_px))
        return detections
