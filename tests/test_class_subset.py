"""A class subset chosen at training time flows through conversion to the device, which enforces it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage import data
from train_helpers import run_script, small_fer

from edge_app.config import load_config
from edge_app.model_card import ModelError, load_card
from edge_app.pipeline.classify import EmotionClassifier
from edge_app.pipeline.faces import FacePipeline

SUBSET = ("happy", "sad", "surprise", "neutral")


def test_four_class_model_from_training_to_the_device(tmp_path: Path, fer_data_path: Path) -> None:
    fer = small_fer(fer_data_path, tmp_path / "fer_small.npz")
    run, models, cache = tmp_path / "run", tmp_path / "models", tmp_path / "cache"
    trained = run_script(
        "train/train.py", "--data", fer, "--out", run, "--cache-dir", cache, "--classes", *SUBSET,
        "--epochs", "2", "--batch-size", "32", "--widths", "8", "16",
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    converted = run_script(
        "convert/quantize.py", "--model", run / "model.keras", "--out", models, "--data", fer,
        "--cache-dir", cache, "--calibration-size", "40", "--max-accuracy-drop", "100", "--max-device-path-drop", "100",
    )
    assert converted.returncode == 0, converted.stderr[-3000:]
    card = load_card(models / "fer_fusion.card.json")
    assert tuple(card.classes) == SUBSET

    classifier = EmotionClassifier(models / "fer_fusion_int8.tflite", expected_classes=SUBSET)
    assert classifier.classes == SUBSET
    face = FacePipeline.from_config(load_config(None, [], env={}), classifier.crop_spec).detect(data.astronaut())[0]
    probabilities = classifier.predict(face.crop, face.features)
    assert probabilities.shape == (4,) and abs(float(np.sum(probabilities)) - 1.0) < 0.02

    with pytest.raises(ModelError, match="class"):
        EmotionClassifier(models / "fer_fusion_int8.tflite", expected_classes=("happy", "sad"))
