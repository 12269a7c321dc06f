"""convert/quantize.py on a tiny real model: the report, the card checksums, and both gates (int8 against float, the
device path against the crop path)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from train_helpers import ROOT, TEST_PER_CLASS, run_script

from edge_app.model_card import load_card
from edge_app.pipeline.mediapipe_assets import sha256_file


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


def test_report_and_card_measure_the_device_path(tiny_model: dict[str, Path]) -> None:
    report = json.loads(tiny_model["report"].read_text())
    device = report["device_path"]
    assert device["n"] == report["n"] and device["passed"] is True and report["int8_passed"] is True
    # The landmark cache finds ~95% of FER-2013 faces in the same upscaled frame.
    assert 0.8 <= device["face_found_rate"] <= 1 and device["n_found"] == round(device["face_found_rate"] * device["n"])
    assert device["accuracy"] > 0.2 and 0 < device["macro_f1"] <= 1
    assert device["accuracy_counting_misses"] <= device["accuracy"]
    assert device["drop_points"] == round(100 * (device["crop_accuracy_same_faces"] - device["accuracy"]), 2)
    card = load_card(tiny_model["card"])
    assert card.metrics["device_path"] == {k: device[k] for k in card.metrics["device_path"]}
    assert {"accuracy", "macro_f1", "face_found_rate", "n"} <= set(card.metrics["device_path"])
    assert "Device path" in (tiny_model["models"] / "quantization_report.md").read_text()


def test_a_wrong_crop_spec_fails_the_device_path_gate(tiny_model: dict[str, Path], tmp_path: Path) -> None:
    """The crop path never reads the card's crop spec, the device does: with the crop framed on the chin instead of
    the face, the shipped model (which reads the face; the tiny one leans on landmarks) must lose accuracy on the
    device path only, and the conversion must stop with the int8 gate passed."""
    shutil.copyfile(ROOT / "models" / "fer_fusion.keras", tmp_path / "fer_fusion.keras")
    card = json.loads((ROOT / "models" / "fer_fusion.card.json").read_text())
    card["preprocessing"]["crop"] = {"size_iod": 1.5, "centre_below_eyes_iod": 1.6}
    (tmp_path / "fer_fusion.card.json").write_text(json.dumps({**card, "files": {}}))
    out = tmp_path / "models"
    limit = 15  # points: 140 faces make the right spec's figure move a few points (it measured 4.6 here)
    result = run_script(
        "convert/quantize.py", "--model", tmp_path / "fer_fusion.keras", "--out", out, "--data", tiny_model["data"],
        "--cache-dir", tiny_model["cache"], "--calibration-size", "100", "--limit", "140",
        "--max-device-path-drop", str(limit),
    )
    assert result.returncode == 1, result.stderr[-2000:]
    report = json.loads((out / "quantization_report.json").read_text())
    device = report["device_path"]
    assert report["int8_passed"] is True and device["passed"] is False and report["passed"] is False
    assert device["n"] == 140 and device["face_found_rate"] >= 0.8 and device["drop_points"] > limit
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(f"FAILED: device path accuracy {100 * device['accuracy']:.2f}% is "
                              f"{device['drop_points']:.2f} points below the int8 crop path's")
    assert sorted(p.name for p in out.iterdir()) == ["quantization_report.json", "quantization_report.md"]


def test_device_path_figures_leave_out_faces_not_found_and_compare_the_same_faces() -> None:
    from convert.device_path import device_path_report, sample_rows

    labels = np.array([0, 1, 2, 0, 1])
    device = np.array([0, 1, -1, 1, -1])  # -1: no face found
    crop = np.array([0, 1, 2, 0, 0])
    d = device_path_report(labels, device, crop, 3, max_drop=1.0)
    assert (d["n"], d["n_found"], d["face_found_rate"]) == (5, 3, 0.6)
    assert d["accuracy"] == 0.6667 and d["accuracy_counting_misses"] == 0.4
    assert d["crop_accuracy_same_faces"] == 1.0 and d["crop_accuracy_all"] == 0.8
    assert d["drop_points"] == 33.33 and d["passed"] is False
    assert device_path_report(labels, crop, crop, 3, max_drop=1.0)["passed"] is True
    assert device_path_report(labels, np.full(5, -1), crop, 3, max_drop=1.0)["passed"] is False  # nothing found
    assert sample_rows(10, 0).tolist() == list(range(10)) and sample_rows(3, 5).tolist() == [0, 1, 2]
    picked = sample_rows(100, 10)
    assert len(set(picked)) == 10 and picked.tolist() == sorted(picked) == sample_rows(100, 10).tolist()


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
    from edge_app.pipeline.runtime import TFLiteModel

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
