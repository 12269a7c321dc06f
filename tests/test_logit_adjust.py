"""convert/logit_adjust.py: per-class logit offsets folded into the final bias, and the PublicTest rules that pick them
(a recall floor for every class; tau * log(prior) for macro F1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from train_helpers import run_script

from edge_app.model_card import float_model_inputs, load_card


def test_choose_tau_takes_the_best_macro_f1_within_the_accuracy_cost() -> None:
    from convert.logit_adjust import adjusted_predictions, choose_tau

    rng = np.random.default_rng(0)
    labels = np.array([0] * 90 + [1] * 10)
    prior = np.array([0.9, 0.1])
    # The rare class's faces lean to it, but the frequent class's bias wins the argmax without the correction.
    lean = np.where(labels == 1, 0.4, 0.15) + rng.uniform(-0.05, 0.05, len(labels))
    probabilities = np.stack([1 - lean, lean], axis=1)
    assert (adjusted_predictions(probabilities, prior, 0.0) == 0).all()
    tau, curve = choose_tau(labels, probabilities, prior, ["common", "rare"], max_accuracy_cost=5.0)
    by_tau = {c["tau"]: c for c in curve}
    assert tau > 0 and by_tau[tau]["macro_f1"] > by_tau[0.0]["macro_f1"]
    floor = by_tau[0.0]["accuracy"] - 0.05
    assert by_tau[tau]["accuracy"] >= floor
    assert all(c["macro_f1"] <= by_tau[tau]["macro_f1"] for c in curve if c["accuracy"] >= floor)
    # No accuracy to spend: tau stays where accuracy does not fall.
    strict, _ = choose_tau(labels, probabilities, prior, ["common", "rare"], max_accuracy_cost=0.0)
    assert by_tau[strict]["accuracy"] >= by_tau[0.0]["accuracy"]


def test_choose_offsets_lifts_every_class_to_the_floor_at_the_best_accuracy() -> None:
    from convert.logit_adjust import choose_offsets, class_recall

    rng = np.random.default_rng(1)
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
    # Class 2's faces lean to it but class 0 wins their argmax: its recall is 0 without offsets.
    probabilities = rng.dirichlet(np.ones(3), len(labels)) * 0.2
    probabilities[np.arange(len(labels)), labels] += 0.5
    probabilities[labels == 2, 0] += 0.7
    probabilities /= probabilities.sum(1, keepdims=True)
    plain = probabilities.argmax(1)
    assert class_recall(labels, plain, 3)[2] == 0
    offsets = choose_offsets(labels, probabilities, min_recall=0.5)
    adjusted = (np.log(probabilities) + offsets).argmax(1)
    assert (class_recall(labels, adjusted, 3) >= 0.5).all()
    assert abs(offsets.mean()) < 1e-9 and offsets[2] == offsets.max()
    np.testing.assert_array_equal(offsets, choose_offsets(labels, probabilities, min_recall=0.5))
    # A floor every class already meets leaves only accuracy to gain: never below the plain argmax's.
    free = (np.log(probabilities) + choose_offsets(labels, probabilities, min_recall=0.0)).argmax(1)
    assert np.mean(free == labels) >= np.mean(plain == labels)


@pytest.fixture
def skewed_data(tiny_model: dict[str, Path], tmp_path: Path) -> tuple[Path, Path]:
    """The tiny model's data with fewer training faces of disgust and surprise (its own classes are balanced, and a
    uniform prior corrects nothing), and a landmark cache for it cut from the tiny model's."""
    from edge_app.dataset import TRAIN, load_dataset
    from train.landmark_cache import cache_path, load_or_compute

    data = load_dataset(tiny_model["data"])
    landmarks = load_or_compute(data, tiny_model["cache"])
    drop = np.zeros(len(data), bool)
    for label, count in ((1, 60), (5, 40)):
        drop[np.flatnonzero((data.splits == TRAIN) & (data.labels == label))[:count]] = True
    path, cache = tmp_path / "skewed.npz", tmp_path / "cache"
    np.savez_compressed(path, pixels=data.images[~drop], emotion=data.labels[~drop].astype(np.uint8),
                        usage=data.splits[~drop])
    cache.mkdir()
    np.savez_compressed(cache_path(load_dataset(path), cache), landmarks=landmarks[~drop].astype(np.float16))
    return path, cache


def test_adjusted_model_carries_the_correction_in_its_bias(tiny_model: dict[str, Path], skewed_data,
                                                           tmp_path: Path) -> None:
    import keras

    from edge_app.dataset import TRAIN, VALIDATION, load_dataset
    from train.landmark_cache import features_from_landmarks, load_or_compute

    data_path, cache = skewed_data
    out = tmp_path / "adjusted" / "fer_fusion.keras"
    result = run_script("convert/logit_adjust.py", "--model", tiny_model["keras"], "--out", out, "--data",
                        data_path, "--cache-dir", cache, "--rule", "prior", "--tau", "0.7")
    assert result.returncode == 0, result.stderr[-2000:]
    printed = json.loads(result.stdout)
    assert printed["tau"] == 0.7 and len(printed["curve"]) == 41
    card = load_card(out.with_name("fer_fusion.card.json"))
    record = card.training["logit_adjustment"]
    assert record["tau"] == 0.7 and record["chosen_on"] == "validation (PublicTest)" and card.files == {}
    data = load_dataset(data_path)
    prior = np.bincount(data.labels[data.splits == TRAIN], minlength=7) / np.sum(data.splits == TRAIN)
    assert prior[1] < prior[5] < prior[0]
    assert list(record["prior"].values()) == [round(float(p), 5) for p in prior]
    rows = np.flatnonzero(data.splits == VALIDATION)
    features = features_from_landmarks(load_or_compute(data, cache))
    inputs = float_model_inputs(data.images[rows], features[rows])
    before = keras.models.load_model(tiny_model["keras"]).predict(inputs, verbose=0)
    after = keras.models.load_model(out).predict(inputs, verbose=0)
    expected = np.exp(np.log(before) - 0.7 * np.log(prior))
    np.testing.assert_allclose(after, expected / expected.sum(1, keepdims=True), atol=1e-4)
    assert np.abs(after - before).max() > 0.05  # the rare classes gained
    again = run_script("convert/logit_adjust.py", "--model", out, "--out", tmp_path / "twice.keras", "--data",
                       data_path, "--cache-dir", cache)
    assert again.returncode != 0 and "already logit-adjusted (tau 0.7)" in again.stderr


def test_recall_floor_offsets_are_in_the_bias_and_lift_the_rare_classes(tiny_model: dict[str, Path], skewed_data,
                                                                         tmp_path: Path) -> None:
    import keras

    from edge_app.dataset import VALIDATION, load_dataset
    from train.landmark_cache import features_from_landmarks, load_or_compute

    data_path, cache = skewed_data
    out = tmp_path / "floor" / "fer_fusion.keras"
    result = run_script("convert/logit_adjust.py", "--model", tiny_model["keras"], "--out", out, "--data",
                        data_path, "--cache-dir", cache, "--min-recall", "0.3")
    assert result.returncode == 0, result.stderr[-2000:]
    printed = json.loads(result.stdout)
    record = load_card(out.with_name("fer_fusion.card.json")).training["logit_adjustment"]
    assert printed["rule"] == "recall-floor" and record["min_recall"] == 0.3 and record["offsets"] == printed["offsets"]
    before, after = printed["validation_before"], printed["validation_after"]
    assert min(after["recall"].values()) >= min(0.3, min(before["recall"].values()))
    assert after["recall"] == record["validation_after"]["recall"]
    data = load_dataset(data_path)
    rows = np.flatnonzero(data.splits == VALIDATION)
    inputs = float_model_inputs(data.images[rows], features_from_landmarks(load_or_compute(data, cache))[rows])
    plain = keras.models.load_model(tiny_model["keras"]).predict(inputs, verbose=0)
    adjusted = keras.models.load_model(out).predict(inputs, verbose=0)
    expected = plain * np.exp(list(printed["offsets"].values()))
    np.testing.assert_allclose(adjusted, expected / expected.sum(1, keepdims=True), atol=1e-4)
    assert round(float(np.mean(adjusted.argmax(1) == data.labels[rows])), 4) == after["accuracy"]
    # The evaluation report says what the final bias carries.
    evaluated = run_script("train/evaluate.py", "--model", out, "--data", data_path, "--cache-dir", cache, "--out",
                           tmp_path / "reports", "--gradcam-per-class", "0")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    report = json.loads((tmp_path / "reports" / "evaluation.json").read_text())
    assert report["logit_adjustment"]["offsets"] == printed["offsets"]
    assert "disgust " in (tmp_path / "reports" / "evaluation.md").read_text().split("Logit adjustment")[1]
    wrong = run_script("convert/logit_adjust.py", "--model", tiny_model["keras"], "--out", tmp_path / "x.keras",
                       "--tau", "0.5")
    assert wrong.returncode != 0 and "--tau: only the prior rule takes a tau" in wrong.stderr
