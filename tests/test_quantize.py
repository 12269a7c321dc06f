"""convert/quantize.py on a tiny real model: the report, the card checksums, and the accuracy-drop gate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_app.mediapipe_assets import sha256_file
from edge_app.model_card import load_card

ROOT = Path(__file__).resolve().parents[1]
TRAIN_PER_CLASS, VALIDATION_PER_CLASS, TEST_PER_CLASS = 80, 10, 40


def run_script(*args: str | Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def small_fer(source: Path, target: Path) -> Path:
    """A class-balanced slice of FER-2013 in the project's npz format (train / validation / test)."""
    from train.data import SPLIT_NAMES, load_dataset

    data = load_dataset(source)
    rng = np.random.default_rng(0)
    rows = []
    for split, per_class in (("train", TRAIN_PER_CLASS), ("validation", VALIDATION_PER_CLASS),
                             ("test", TEST_PER_CLASS)):
        for label in range(7):
            idx = np.flatnonzero((data.splits == SPLIT_NAMES[split]) & (data.labels == label))
            rows.append(rng.choice(idx, per_class, replace=False))
    rows = np.sort(np.concatenate(rows))
    np.savez_compressed(target, pixels=data.images[rows], emotion=data.labels[rows].astype(np.uint8),
                        usage=data.splits[rows])
    return target


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, fer_data_path: Path) -> dict[str, Path]:
    """A tiny fusion model trained by train/train.py on a FER-2013 slice and converted by quantize.py.

    Built once per session; the files live in a fixed folder of the session's temp dir, so
    modules that import this fixture reuse them instead of training again.
    """
    base = tmp_path_factory.getbasetemp() / "tiny_model"
    paths = {"base": base, "data": base / "fer_small.npz", "cache": base / "cache", "run": base / "run",
             "models": base / "models"}
    paths["keras"] = paths["run"] / "model.keras"
    paths["int8"] = paths["models"] / "fer_fusion_int8.tflite"
    paths["card"] = paths["models"] / "fer_fusion.card.json"
    paths["report"] = paths["models"] / "quantization_report.json"
    if (base / "done").is_file():
        return paths
    base.mkdir(exist_ok=True)
    small_fer(fer_data_path, paths["data"])
    trained = run_script(
        "train/train.py", "--data", paths["data"], "--out", paths["run"], "--cache-dir", paths["cache"],
        "--epochs", "30", "--batch-size", "64", "--warmup-epochs", "0", "--widths", "8", "16", "32", "64",
        "--lr", "3e-3", "--patience", "30",
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    converted = run_script(
        "convert/quantize.py", "--model", paths["keras"], "--out", paths["models"], "--data", paths["data"],
        "--cache-dir", paths["cache"], "--calibration-size", "100", "--max-accuracy-drop", "5",
    )
    assert converted.returncode == 0, converted.stderr[-3000:]
    (base / "done").write_text(converted.stdout)
    return paths


def test_report_has_sane_figures(tiny_model: dict[str, Path]) -> None:
    report = json.loads(tiny_model["report"].read_text())
    assert report["n"] == 7 * TEST_PER_CLASS
    assert report["passed"] is True
    for key in ("float_accuracy", "int8_accuracy", "agreement"):
        assert 0.0 <= report[key] <= 1.0
    # Trained briefly on 560 faces: better than chance (1/7), and int8 follows the float model.
    assert report["float_accuracy"] > 0.2
    assert report["agreement"] > 0.85
    assert abs(report["float_accuracy"] - report["int8_accuracy"]) * 100 <= 5
    for kind in ("int8", "float16", "edgetpu_ready"):
        model = report["models"][kind]
        assert 0 <= model["mean_abs_prob_diff"] <= model["max_abs_prob_diff"] <= 1
        assert model["ms_per_image"] > 0
    assert report["models"]["float16"]["agreement"] > 0.97
    assert set(report["per_class"]) == {"angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"}
    assert all(c["n"] == TEST_PER_CLASS for c in report["per_class"].values())
    table = (tiny_model["models"] / "quantization_report.md").read_text()
    assert "| int8 (`fer_fusion_int8.tflite`)" in table and "passed" in table


def test_card_lists_every_file_with_its_checksum(tiny_model: dict[str, Path]) -> None:
    card = load_card(tiny_model["card"])
    report = json.loads(tiny_model["report"].read_text())
    assert set(card.files) == {"keras", "int8", "float16", "edgetpu_ready"}
    for entry in card.files.values():
        path = tiny_model["models"] / entry.file
        assert sha256_file(path) == entry.sha256
        assert path.stat().st_size == entry.size_bytes
    assert card.files["int8"].accuracy == report["int8_accuracy"]
    assert card.files["keras"].accuracy == report["float_accuracy"]
    assert card.preprocessing.crop == load_card(tiny_model["run"] / "model.card.json").preprocessing.crop


def test_int8_model_is_fully_integer_and_edgetpu_ready_has_batch_one(tiny_model: dict[str, Path]) -> None:
    from edge_app.runtime import TFLiteModel

    for name, shapes in (("fer_fusion_int8.tflite", None), ("fer_fusion_int8_edgetpu_ready.tflite", 1)):
        model = TFLiteModel(tiny_model["models"] / name)
        details = [*model.inputs.values(), *model.outputs.values()]
        assert all(d["dtype"] == np.int8 for d in details)
        if shapes:
            assert all(d["shape_signature"][0] == 1 for d in model.inputs.values())
    float16 = TFLiteModel(tiny_model["models"] / "fer_fusion_float16.tflite")
    assert all(d["dtype"] == np.float32 for d in float16.inputs.values())


def damage_for_int8(keras_path: Path, target: Path) -> None:
    """Same float function, but one active channel of the landmark branch 10^4 times larger than the rest.

    The int8 tensor that holds it shares one scale, so every other channel rounds to zero:
    the float model is unchanged while the int8 model loses what the other channels carried.
    """
    import keras

    model = keras.models.load_model(keras_path)
    bn = model.get_layer("lm1_bn")
    gamma, beta, mean, var = bn.get_weights()
    channel = int(np.argmax(beta + np.abs(gamma)))  # one that ReLU lets through (a dead one would change nothing)
    gamma[channel] *= 1e4
    beta[channel] *= 1e4
    bn.set_weights([gamma, beta, mean, var])
    head = model.get_layer("head_dense")
    (kernel,) = head.get_weights()
    gap_width = model.get_layer("gap").output.shape[-1]
    kernel[gap_width + channel] /= 1e4  # the concatenation puts the CNN features first, then the landmark branch
    head.set_weights([kernel])
    model.save(target)


def test_damaged_model_fails_the_gate_and_leaves_out_dir_alone(tiny_model: dict[str, Path], tmp_path: Path) -> None:
    damaged = tmp_path / "model.keras"
    damage_for_int8(tiny_model["keras"], damaged)
    (tmp_path / "model.card.json").write_bytes((tiny_model["run"] / "model.card.json").read_bytes())
    out = tmp_path / "models"
    result = run_script(
        "convert/quantize.py", "--model", damaged, "--out", out, "--data", tiny_model["data"],
        "--cache-dir", tiny_model["cache"], "--calibration-size", "100", "--max-accuracy-drop", "1",
    )
    report = json.loads((out / "quantization_report.json").read_text())
    assert result.returncode == 1, result.stderr[-2000:]
    assert report["passed"] is False
    assert report["accuracy_drop_points"] > 1
    # The float model is the same function as the undamaged one.
    assert abs(report["float_accuracy"] - json.loads(tiny_model["report"].read_text())["float_accuracy"]) <= 0.01
    message = result.stderr.strip().splitlines()[-1]
    assert f"int8 accuracy {100 * report['int8_accuracy']:.2f}%" in message
    assert f"float {100 * report['float_accuracy']:.2f}%" in message and "limit 1.0 points" in message
    assert sorted(p.name for p in out.iterdir()) == ["quantization_report.json", "quantization_report.md"]


def test_missing_card_and_unreadable_model_are_named(tmp_path: Path) -> None:
    model = tmp_path / "model.keras"
    model.write_bytes(b"not a keras file")
    result = run_script("convert/quantize.py", "--model", model, "--out", tmp_path / "out", timeout=120)
    assert result.returncode != 0
    assert f"no model card beside it (expected {tmp_path / 'model.card.json'})" in result.stderr
    assert "Traceback" not in result.stderr


def test_calibration_sample_is_class_balanced() -> None:
    from convert.quantize import calibration_indices

    labels = np.array([0] * 500 + [1] * 30 + [2] * 200)
    picked = calibration_indices(labels, 120)
    assert len(picked) == len(set(picked)) == 120
    assert np.bincount(labels[picked]).tolist() == [45, 30, 45]
