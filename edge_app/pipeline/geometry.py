"""Geometry shared by the stages: box overlap (the detector's suppression, the detection/follow merge, the tracker)
and the warp of a rotated square of the frame (Face Mesh's input, the 48x48 crop)."""

from __future__ import annotations

import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in ``a`` (N, 4) with every box in ``b`` (M, 4), boxes x0, y0, x1, y1."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def square_warp_matrix(centre: np.ndarray, side: float, rotation: float, out_size: int) -> np.ndarray:
    """Affine matrix taking output pixels (0..out_size) to the image pixels of a square of ``side`` pixels centred on
    ``centre`` and turned ``rotation`` radians (clockwise in image space), for ``cv2.WARP_INVERSE_MAP``.

    Pixel-centre convention: output pixel centre (j + 0.5) maps to the image point whose pixel centre is at + 0.5.
    """
    c, s = np.cos(rotation), np.sin(rotation)
    k = side / out_size
    a = np.array([[c * k, -s * k], [s * k, c * k]])
    t = np.asarray(centre, np.float64) - a @ np.array([out_size / 2, out_size / 2]) + a @ [0.5, 0.5] - 0.5
    return np.hstack([a, t[:, None]]).astype(np.float64)
