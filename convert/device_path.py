"""The device path of the conversion gate: test faces through the device's own detection, landmarks and crop.

The crop path (quantize.py's int8 figure) feeds the model FER-2013's own 48x48 faces. The device never sees those:
it finds a face in a frame, measures its landmarks and cuts its own crop with the card's ``crop_spec``. Here each
test face is upscaled into a frame as the landmark cache does (``edge_app.pipeline.faces.small_face_frame``), and
the pipeline of the device's composition root (``edge_app.app.build_pipeline``, with the ``detection:`` settings)
does the rest, as on the device. A face the detector does not find has no prediction: ``face_found_rate`` reports
it, ``accuracy`` and ``macro_f1`` are over the found faces, and the gate compares that accuracy with the crop path's
on the same faces (like with like). ``accuracy_counting_misses`` counts the faces not found as wrong.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge_app.app import build_pipeline
from edge_app.commands.check import NO_PREDICTION, macro_f1
from edge_app.config import AppConfig
from edge_app.pipeline.faces import small_face_frame


def sample_rows(count: int, size: int, seed: int = 0) -> np.ndarray:
    """Positions of ``size`` of ``count`` faces (a fixed random sample, in order); all of them when size is 0."""
    if size <= 0 or size >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size, replace=False))


def device_predictions(model_path: Path, card_path: Path, classes: list[str], faces: np.ndarray,
                       config: AppConfig) -> np.ndarray:
    """The class the device gives each 48x48 face (``NO_PREDICTION`` where the detector finds none), from the
    pipeline the device's composition root builds for ``config`` with this model, one face per frame, on the CPU."""
    config = config.model_copy(update={
        "model": config.model.model_copy(update={"path": str(model_path), "card": str(card_path),
                                                 "classes": list(classes), "flip_average": False}),
        "runtime": config.runtime.model_copy(update={"delegate": "cpu"}),
        "detection": config.detection.model_copy(update={"max_faces": 1}),
    })
    pipeline = build_pipeline(config)
    predictions = np.full(len(faces), NO_PREDICTION, np.int64)
    for i, face in enumerate(tqdm(faces, desc="device path", disable=None)):
        found = pipeline.faces.detect(small_face_frame(face))
        if found:
            predictions[i] = int(pipeline.classifier.predict(found[0].crop, found[0].features).argmax())
    return predictions


def device_path_report(labels: np.ndarray, device: np.ndarray, crop: np.ndarray, num_classes: int,
                       max_drop: float) -> dict:
    """The device path's figures beside the crop path's on the same faces, and whether it passes the gate."""
    found = device != NO_PREDICTION
    n_found = int(found.sum())
    accuracy = float(np.mean(device[found] == labels[found])) if n_found else 0.0
    crop_accuracy = float(np.mean(crop[found] == labels[found])) if n_found else 0.0
    drop = round(100 * (crop_accuracy - accuracy), 2)
    return {
        "n": int(len(labels)), "n_found": n_found, "face_found_rate": round(n_found / max(len(labels), 1), 4),
        "accuracy": round(accuracy, 4),
        "macro_f1": round(macro_f1(labels[found], device[found], num_classes), 4),
        "accuracy_counting_misses": round(float(np.mean(device == labels)), 4),
        "crop_accuracy_same_faces": round(crop_accuracy, 4),
        "crop_accuracy_all": round(float(np.mean(crop == labels)), 4),
        "misses": "left out of accuracy and macro_f1 (see face_found_rate, accuracy_counting_misses)",
        "drop_points": drop, "max_drop_points": max_drop, "passed": bool(n_found) and drop <= max_drop,
    }
