"""EmotionClassifier and the model card: real converted models, and the ways a model file can be wrong."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_app.model_card import ModelError, default_model_path, load_card
from edge_app.pipeline.classify import EmotionClassifier
from edge_app.pipeline.preprocess import LANDMARK_FEATURES, landmark_features, mirror_features

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def models(tiny_model: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the converted models, free to damage."""
    return Path(shutil.copytree(tiny_model["models"], tmp_path / "models"))


@pytest.fixture(scope="module")
def test_faces(tiny_model: dict[str, Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A few test-split faces of the tiny model's data with their cached landmark features."""
    from edge_app.dataset import TEST, load_dataset
    from train.landmark_cache import features_from_landmarks, load_or_compute

    data = load_dataset(tiny_model["data"])
    features = features_from_landmarks(load_or_compute(data, tiny_model["cache"]))
    rows = np.flatnonzero(data.splits == TEST)[:20]
    return data.images[rows], features[rows], data.labels[rows]


def test_predicts_probabilities_with_the_cards_preprocessing(tiny_model, test_faces) -> None:
    classifier = EmotionClassifier(tiny_model["int8"])
    card = load_card(tiny_model["card"])
    assert classifier.card_path == tiny_model["card"]
    assert classifier.classes == tuple(card.classes)
    assert classifier.crop_spec.size_iod == card.preprocessing.crop.size_iod
    assert classifier.delegate_in_use == "cpu"
    faces, features, _ = test_faces
    probs = classifier.predict(faces[0], features[0])
    assert probs.shape == (7,) and abs(float(probs.sum()) - 1.0) < 0.02 and (probs >= 0).all()
    assert classifier.last_ms > 0
    batch = classifier.predict_batch(faces, features)
    assert batch.shape == (len(faces), 7)
    np.testing.assert_allclose(batch[0], probs)


def test_shipped_int8_classifier_gives_the_float_models_answers_and_uses_both_inputs(test_faces) -> None:
    """The device's feed (pixel scaling, inputs bound by name) is the one the model was trained with: on real faces
    the shipped int8 classifier gives the Keras model's probabilities within int8 rounding, and taking away either
    input moves them further than that rounding (the landmarks a little: they are worth 0.8 points)."""
    import keras

    from edge_app.model_card import float_model_inputs

    classifier = EmotionClassifier()
    model = keras.models.load_model(ROOT / "models" / "fer_fusion.keras")
    faces, features, _ = test_faces
    reference = model.predict(float_model_inputs(faces, features), verbose=0)
    probs = classifier.predict_batch(faces, features)
    rounding = float(np.abs(probs - reference).mean())
    assert rounding < 0.01 and np.mean(probs.argmax(1) == reference.argmax(1)) >= 0.9
    found = features[:, -1] == 1
    assert found.sum() >= 10
    no_landmarks = classifier.predict_batch(faces[found], np.stack([landmark_features(None)] * int(found.sum())))
    grey_faces = classifier.predict_batch(np.full_like(faces[found], 128), features[found])
    for changed in (no_landmarks, grey_faces):
        assert np.abs(changed - probs[found]).mean() > 2 * rounding


def test_flip_average_is_the_mean_of_the_face_and_its_mirror(tiny_model, test_faces) -> None:
    plain = EmotionClassifier(tiny_model["int8"])
    averaged = EmotionClassifier(tiny_model["int8"], flip_average=True)
    faces, features, _ = test_faces
    for face, feature in zip(faces[:5], features[:5]):
        mirrored = plain.predict(face[:, ::-1], mirror_features(feature))
        np.testing.assert_allclose(averaged.predict(face, feature), (plain.predict(face, feature) + mirrored) / 2,
                                   atol=1e-6)
    assert averaged.last_ms > 0
    assert any(np.abs(averaged.predict(f, x) - plain.predict(f, x)).max() > 0 for f, x in zip(faces, features))


def test_non_finite_features_become_the_no_landmarks_input(tiny_model, test_faces, caplog) -> None:
    classifier = EmotionClassifier(tiny_model["int8"])
    face = test_faces[0][0]
    broken = np.full(LANDMARK_FEATURES, np.nan, np.float32)
    broken[5] = np.inf
    with caplog.at_level(logging.WARNING):
        first = classifier.predict(face, broken)
        classifier.predict(face, broken)
    np.testing.assert_array_equal(first, classifier.predict(face, np.zeros(LANDMARK_FEATURES, np.float32)))
    assert np.isfinite(first).all()
    assert sum("non-finite" in r.message for r in caplog.records) == 1


def test_bad_inputs_are_named(tiny_model) -> None:
    classifier = EmotionClassifier(tiny_model["int8"])
    with pytest.raises(ValueError, match=r"crop: expected \(48, 48\) uint8, got \(48, 40\)"):
        classifier.predict(np.zeros((48, 40), np.uint8), np.zeros(LANDMARK_FEATURES, np.float32))
    with pytest.raises(ValueError, match=r"features: expected \(937,\), got \(10,\)"):
        classifier.predict(np.zeros((48, 48), np.uint8), np.zeros(10, np.float32))


def test_refuses_a_file_that_does_not_match_its_card(models: Path) -> None:
    int8 = models / "fer_fusion_int8.tflite"
    data = bytearray(int8.read_bytes())
    data[len(data) // 2] ^= 0xFF
    int8.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"fer_fusion_int8.tflite does not match its card \(sha256 .*re-run "
                                         r"convert/quantize.py"):
        EmotionClassifier(int8)


def test_refuses_a_truncated_file_even_when_the_card_was_rewritten_for_it(models: Path) -> None:
    int8 = models / "fer_fusion_int8.tflite"
    int8.write_bytes(int8.read_bytes()[:2000])
    with pytest.raises(ModelError, match="does not match its card"):
        EmotionClassifier(int8)
    card_path = models / "fer_fusion.card.json"
    card = json.loads(card_path.read_text())
    card["files"]["int8"].update(sha256=__import__("hashlib").sha256(int8.read_bytes()).hexdigest(), size_bytes=2000)
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelError, match="fer_fusion_int8.tflite: cannot load as a TFLite model"):
        EmotionClassifier(int8)


def test_refuses_a_card_whose_classes_differ_from_the_config(tiny_model) -> None:
    with pytest.raises(ModelError, match=r"model classes \['angry', .*\] differ from model.classes \['happy', 'sad'\]"):
        EmotionClassifier(tiny_model["int8"], expected_classes=("happy", "sad"))
    assert EmotionClassifier(tiny_model["int8"], expected_classes=load_card(tiny_model["card"]).classes)


def test_refuses_a_card_whose_inputs_differ(models: Path) -> None:
    card_path = models / "fer_fusion.card.json"
    card = json.loads(card_path.read_text())
    card["inputs"]["landmarks"]["shape"] = [1, 468]
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelError, match=r"card input 'landmarks' has shape \[1, 468\], the device feeds \[1, 937\]"):
        EmotionClassifier(models / "fer_fusion_int8.tflite")
    card_path.write_text("{not json")
    with pytest.raises(ModelError, match=r"fer_fusion.card.json: not valid JSON"):
        EmotionClassifier(models / "fer_fusion_int8.tflite", card_path)


def test_a_missing_model_or_card_is_named(models: Path) -> None:
    card = models / "fer_fusion.card.json"
    with pytest.raises(ModelError, match="model file not found: .*missing_int8.tflite"):
        EmotionClassifier(models / "missing_int8.tflite", card)
    card.unlink()
    with pytest.raises(ModelError, match="fer_fusion_int8.tflite: no model card in .* lists this file"):
        EmotionClassifier(models / "fer_fusion_int8.tflite")
    with pytest.raises(ModelError, match="model card .*fer_fusion.card.json: cannot read"):
        EmotionClassifier(models / "fer_fusion_int8.tflite", card)


def test_edgetpu_without_compiled_model_falls_back_to_cpu_with_one_warning(models: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        classifier = EmotionClassifier(models / "fer_fusion_int8.tflite", delegate="edgetpu")
    assert classifier.delegate_in_use == "cpu"
    assert classifier.model_path == models / "fer_fusion_int8.tflite"
    warnings = [r.message for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "no Edge TPU model beside fer_fusion_int8.tflite" in warnings[0]


def test_edgetpu_model_is_checked_and_needs_the_library(models: Path, caplog) -> None:
    compiled = models / "fer_fusion_int8_edgetpu.tflite"
    shutil.copyfile(models / "fer_fusion_int8_edgetpu_ready.tflite", compiled)
    with caplog.at_level(logging.WARNING):
        unlisted = EmotionClassifier(models / "fer_fusion_int8.tflite", delegate="edgetpu")
    assert unlisted.model_path.name == "fer_fusion_int8.tflite"
    assert any("is not listed in fer_fusion.card.json" in r.message for r in caplog.records)
    registered = subprocess.run([sys.executable, "convert/quantize.py", "--register-edgetpu", str(compiled)],
                                cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert registered.returncode == 0, registered.stderr
    entry = load_card(models / "fer_fusion.card.json").files["edgetpu"]
    assert entry.file == compiled.name
    # Nothing ran on an Edge TPU here: the card says so instead of repeating the CPU's figure.
    assert entry.accuracy is None and entry.note.startswith("accuracy not measured")
    measured = subprocess.run([sys.executable, "convert/quantize.py", "--register-edgetpu", str(compiled),
                               "--edgetpu-accuracy", "0.655"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert measured.returncode == 0, measured.stderr
    entry = load_card(models / "fer_fusion.card.json").files["edgetpu"]
    assert entry.accuracy == 0.655 and "measured by `edge-emotion check` on an Edge TPU" in entry.note
    # No libedgetpu here: the runtime says so once and the CPU model runs.
    classifier = EmotionClassifier(models / "fer_fusion_int8.tflite", delegate="edgetpu")
    assert classifier.delegate_in_use == "cpu" and classifier.model_path.name == "fer_fusion_int8.tflite"
    compiled.write_bytes(compiled.read_bytes()[:-10])
    with pytest.raises(ModelError, match="fer_fusion_int8_edgetpu.tflite does not match its card"):
        EmotionClassifier(models / "fer_fusion_int8.tflite", delegate="edgetpu")


def test_default_model_is_the_shipped_int8_file() -> None:
    assert default_model_path().name == "fer_fusion_int8.tflite"
    assert default_model_path().parent.name == "models"
