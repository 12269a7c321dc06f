"""Derive the Face Mesh mirror table (``edge_app/data/face_mesh_mirror.json``).

Runs Face Mesh on real faces and on their horizontal flips: landmark ``j`` of a flipped
face, flipped back, lands on the mirror landmark ``m(j)`` of the original. An optimal
one-to-one assignment over the summed distances gives ``m``; it is checked to be an
involution. Run once: ``python train/face_mesh_mirror.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_app.pipeline.detect import FaceDetector  # noqa: E402
from edge_app.pipeline.landmarks import NUM_LANDMARKS, FaceMesh, roi_from_detection  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "edge_app" / "data" / "face_mesh_mirror.json"


def faces() -> list[np.ndarray]:
    from skimage import data

    return [data.astronaut(), np.ascontiguousarray(data.astronaut()[:, ::-1])]


def landmarks(rgb: np.ndarray, detector: FaceDetector, mesh: FaceMesh) -> np.ndarray:
    detection = max(detector(rgb), key=lambda d: d.score)
    points, _ = mesh(rgb, roi_from_detection(detection))
    return points[:, :2]


def main() -> None:
    detector, mesh = FaceDetector(), FaceMesh()
    cost = np.zeros((NUM_LANDMARKS, NUM_LANDMARKS))
    for rgb in faces():
        width = rgb.shape[1]
        original = landmarks(rgb, detector, mesh)
        flipped = landmarks(np.ascontiguousarray(rgb[:, ::-1]), detector, mesh)
        flipped[:, 0] = width - flipped[:, 0]
        scale = np.ptp(original[:, 0])
        cost += np.linalg.norm(flipped[:, None, :] - original[None, :, :], axis=2) / scale
    rows, cols = linear_sum_assignment(cost)
    mirror = cols[np.argsort(rows)]
    if not np.array_equal(mirror[mirror], np.arange(NUM_LANDMARKS)):
        raise SystemExit("mirror assignment is not an involution; use more / more frontal faces")
    residual = float(cost[np.arange(NUM_LANDMARKS), mirror].mean() / len(faces()))
    OUT.write_text(json.dumps({
        "source": "train/face_mesh_mirror.py on skimage.data.astronaut() and its flip",
        "mean_residual_face_widths": round(residual, 5),
        "self_symmetric": int((mirror == np.arange(NUM_LANDMARKS)).sum()),
        "mirror": mirror.tolist(),
    }) + "\n")
    midline = int((mirror == np.arange(NUM_LANDMARKS)).sum())
    print(f"wrote {OUT}: residual {residual:.4f} face widths, {midline} on the midline")


if __name__ == "__main__":
    main()
