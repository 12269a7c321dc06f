"""train/train.py and train/evaluate.py end to end: a separable synthetic set is learned, FER-2013 is evaluated
with every report file, and --resume continues a run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from train_helpers import run_script, small_fer

from edge_app.model_card import load_card

SYNTHETIC_CLASSES = ("happy", "sad")
# Batches of 16 give the batch-norm statistics enough steps to settle on a few hundred images.
TINY_NET = ("--batch-size", "16", "--widths", "8", "16", "--warmup-epochs", "0")


def stripes(vertical: bool, rng: np.random.Generator) -> np.ndarray:
    """A 48x48 image of stripes with a random period, phase and noise: the orientation is the class."""
    period, phase = rng.uniform(6, 12), rng.uniform(0, 2 * np.pi)
    ramp = np.sin(2 * np.pi * np.arange(48) / period + phase)
    image = np.tile(ramp, (48, 1)) if vertical else np.tile(ramp[:, None], (1, 48))
    return np.clip(127 + 90 * image + rng.normal(0, 20, (48, 48)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def synthetic_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image-folder dataset (train/<class>/, test/<class>/) where happy = horizontal, sad = vertical stripes."""
    root = tmp_path_factory.mktemp("synthetic")
    rng = np.random.default_rng(0)
    for split, count in (("train", 300), ("test", 30)):
        for label, name in enumerate(SYNTHETIC_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                cv2.imwrite(str(folder / f"{i}.png"), stripes(bool(label), rng))
    return root


def test_a_separable_synthetic_set_is_learned(synthetic_folder: Path, tmp_path: Path) -> None:
    run, reports = tmp_path / "run", tmp_path / "reports"
    trained = run_script("train/train.py", "--data", synthetic_folder, "--out", run, "--cache-dir", tmp_path / "cache",
                         "--classes", *SYNTHETIC_CLASSES, "--epochs", "8", "--lr", "3e-3", *TINY_NET)
    assert trained.returncode == 0, trained.stderr[-3000:]
    card = load_card(run / "model.card.json")
    assert tuple(card.classes) == SYNTHETIC_CLASSES and card.training["data_source"] == synthetic_folder.name
    evaluated = run_script("train/evaluate.py", "--model", run / "model.keras", "--data", synthetic_folder,
                           "--cache-dir", tmp_path / "cache", "--out", reports, "--gradcam-per-class", "2")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    report = json.loads((reports / "evaluation.json").read_text())
    assert report["results"]["plain"]["n"] == 60
    assert report["results"]["plain"]["accuracy"] >= 0.95, report["results"]["plain"]
    # Mirroring does not change stripe orientation, so TTA must agree.
    assert report["results"]["tta"]["accuracy"] >= 0.95
    assert report["train_duplicates"] == 0


def test_one_short_epoch_on_fer_then_every_report(fer_data_path: Path, tmp_path: Path) -> None:
    data = small_fer(fer_data_path, tmp_path / "fer_small.npz")
    run, reports, cache = tmp_path / "run", tmp_path / "reports", tmp_path / "cache"
    trained = run_script("train/train.py", "--data", data, "--out", run, "--cache-dir", cache, "--epochs", "1",
                         *TINY_NET)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert {"model.keras", "model.card.json", "last.keras", "best.keras", "history.csv"} <= {
        p.name for p in run.iterdir()}
    evaluated = run_script("train/evaluate.py", "--model", run / "model.keras", "--data", data, "--cache-dir", cache,
                           "--out", reports, "--gradcam-per-class", "2", "--compare", f"again={run / 'best.keras'}")
    # best.keras has no card beside it: the comparison is refused, naming the file.
    assert evaluated.returncode != 0 and "best.card.json" in evaluated.stderr

    evaluated = run_script("train/evaluate.py", "--model", run / "model.keras", "--data", data, "--cache-dir", cache,
                           "--out", reports, "--gradcam-per-class", "2", "--compare", f"again={run / 'model.keras'}")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    summary = json.loads(evaluated.stdout.strip().splitlines()[-1])
    report = json.loads((reports / "evaluation.json").read_text())
    assert set(report["files"]) == {"evaluation.json", "evaluation.md", "confusion_matrix.png", "training_curves.png",
                                    "gradcam.png", "ablation.json", "ablation.md"}
    for name in report["files"]:
        assert (reports / name).stat().st_size > 0
        if name.endswith(".png"):
            assert cv2.imread(str(reports / name)) is not None
    classes = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert set(report["results"]) == {"plain", "tta", "no_landmarks"}
    for mode in ("plain", "tta", "no_landmarks"):
        result = report["results"][mode]
        assert result["n"] == 280 and 0.0 <= result["accuracy"] <= 1.0
        assert 0.0 <= result["accuracy_without_train_duplicates"] <= 1.0
        assert np.asarray(result["confusion_matrix"]).sum() == 280
        assert np.trace(result["confusion_matrix"]) == round(result["accuracy"] * 280)
        assert list(result["per_class"]) == classes
        assert all(c["support"] == 40 for c in result["per_class"].values())
        for average in ("macro", "weighted"):
            assert set(result[average]) == {"precision", "recall", "f1"}
            assert all(0.0 <= v <= 1.0 for v in result[average].values())
    assert summary["accuracy"] == report["results"]["plain"]["accuracy"]
    ferplus = report["ferplus_majority"]  # the slice carries FER-2013's FER+ votes
    assert 0 < ferplus["n"] <= 280 and 0.0 <= ferplus["fer_label_agreement"] <= 1.0
    for mode in ("plain", "tta"):
        assert ferplus[mode]["n"] == ferplus["n"] and list(ferplus[mode]["per_class"]) == classes
        assert np.asarray(ferplus[mode]["confusion_matrix"]).sum() == ferplus["n"]
    assert "against the FER+ majority label" in (reports / "evaluation.md").read_text()
    assert report["training"]["epochs"] == 1 and report["training"]["best_epoch"] == 1
    ablation = json.loads((reports / "ablation.json").read_text())
    assert [r["name"] for r in ablation[:2]] == ["model", "again"]
    assert ablation[0]["accuracy"] == ablation[1]["accuracy"]
    assert [r["reference"] for r in ablation[2:]] == [0.54, 0.604, 0.615, 0.622]
    assert "| again | fusion | none | 560 x 1 |" in (reports / "ablation.md").read_text()


def test_resume_continues_the_last_epoch_the_best_checkpoint_and_patience(synthetic_folder: Path,
                                                                          tmp_path: Path) -> None:
    run = tmp_path / "run"
    common = ("train/train.py", "--data", synthetic_folder, "--out", run, "--cache-dir", tmp_path / "cache",
              "--classes", *SYNTHETIC_CLASSES, "--patience", "3", *TINY_NET)
    first = run_script(*common, "--epochs", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    with (run / "history.csv").open() as f:
        accuracies = [float(row["val_accuracy"]) for row in csv.DictReader(f)]
    state = json.loads((run / "state.json").read_text())
    assert state["best_val_accuracy"] == pytest.approx(max(accuracies))
    assert state["epochs_since_best"] == len(accuracies) - 1 - int(np.argmax(accuracies))

    # As if the earlier sittings had reached a validation accuracy that no epoch can beat, two epochs ago:
    # the resumed epoch must neither replace best.keras nor reset patience (3), so training stops after it.
    state.update(best_val_accuracy=1.0, epochs_since_best=2)
    (run / "state.json").write_text(json.dumps(state))
    best_before = (run / "best.keras").read_bytes()
    resumed = run_script(*common, "--epochs", "6", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and "at epoch 2" in resumed.stderr
    with (run / "history.csv").open() as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [0, 1, 2]
    assert (run / "best.keras").read_bytes() == best_before
    assert not list(run.glob("*.partial*"))  # checkpoints are written beside, then renamed over
    state = json.loads((run / "state.json").read_text())
    assert state["epoch"] == 3 and state["best_val_accuracy"] == 1.0 and state["epochs_since_best"] == 3
    # The card's training time covers both sittings: more than the resumed one alone.
    training = load_card(run / "model.card.json").training
    assert training["train_seconds"] == pytest.approx(state["train_seconds"], abs=1.0)
    assert training["train_seconds"] > training["train_seconds_this_run"] > 0


def test_evaluate_names_a_missing_model(tmp_path: Path) -> None:
    result = run_script("train/evaluate.py", "--model", tmp_path / "nothing.keras", "--out", tmp_path / "reports")
    assert result.returncode != 0
    assert "nothing.keras: no such model file" in result.stderr
    assert not (tmp_path / "reports").exists()


def test_a_second_stage_distils_from_a_trained_model(synthetic_folder: Path, tmp_path: Path) -> None:
    common = ("--data", synthetic_folder, "--cache-dir", tmp_path / "cache", "--classes", *SYNTHETIC_CLASSES,
              *TINY_NET)
    first = run_script("train/train.py", *common, "--out", tmp_path / "first", "--epochs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    teacher = tmp_path / "first" / "model.keras"
    missing = run_script("train/train.py", *common, "--out", tmp_path / "bad", "--epochs", "1",
                         "--teacher", tmp_path / "nothing.keras")
    assert missing.returncode != 0 and "nothing.keras: no such model file" in missing.stderr
    assert not (tmp_path / "bad" / "model.keras").exists()

    unpaired = run_script("train/train.py", *common, "--out", tmp_path / "bad", "--epochs", "1", "--average-with-init")
    assert unpaired.returncode == 2 and "--average-with-init needs --init-from" in unpaired.stderr

    # A learning rate so small that one epoch leaves the trained weights where --init-from put them.
    second = run_script("train/train.py", *common, "--out", tmp_path / "second", "--epochs", "1", "--lr", "1e-7",
                        "--init-from", teacher, "--teacher", teacher, "--distill-weight", "0.7", "--average-with-init")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "distilling from" in second.stderr
    training = load_card(tmp_path / "second" / "model.card.json").training
    first_card = load_card(tmp_path / "first" / "model.card.json")
    assert training["init_from"]["file"] == "model.keras"
    assert training["init_from"]["train_seconds"] == first_card.training["train_seconds"] > 0
    assert training["recipe"]["teacher"] == [str(teacher)] and training["recipe"]["distill_weight"] == 0.7
    import keras

    first_model, best_model, saved_model = (keras.models.load_model(path, compile=False) for path in (
        teacher, tmp_path / "second" / "best.keras", tmp_path / "second" / "model.keras"))
    # The second stage started from the first stage's trained weights, not from new ones...
    for trained, fine_tuned in zip(first_model.trainable_weights, best_model.trainable_weights, strict=True):
        np.testing.assert_allclose(fine_tuned.numpy(), trained.numpy(), atol=1e-4, err_msg=trained.path)
    # ...and the saved model is the mean of the two stages' weights (the batch-norm statistics moved in between).
    first_weights, best_weights = first_model.get_weights(), best_model.get_weights()
    assert not all(np.array_equal(a, b) for a, b in zip(first_weights, best_weights))
    for first_stage, best, saved in zip(first_weights, best_weights, saved_model.get_weights(), strict=True):
        np.testing.assert_allclose(saved, (first_stage + best) / 2, rtol=1e-6, atol=1e-7)


    # The targets are the teacher's: a teacher that calls every face happy (99.75%, whatever the input), fine-tuned
    # from itself so that nothing moves, scores a training loss near its entropy against its own targets (0.32
    # with label smoothing 0.1), where the balanced labels would give about 3.0 (every sad face at 0.25%).
    logits = first_model.get_layer("logits")
    logits.set_weights([np.zeros_like(logits.get_weights()[0]), np.array([3.0, -3.0], np.float32)])
    constant = tmp_path / "constant" / "model.keras"
    constant.parent.mkdir()
    first_model.save(constant)
    (constant.parent / "model.card.json").write_bytes((tmp_path / "first" / "model.card.json").read_bytes())
    third = run_script("train/train.py", *common, "--out", tmp_path / "third", "--epochs", "1", "--lr", "1e-7",
                       "--init-from", constant, "--teacher", constant, "--distill-weight", "1.0")
    assert third.returncode == 0, third.stderr[-3000:]
    with (tmp_path / "third" / "history.csv").open() as f:
        (epoch,) = list(csv.DictReader(f))
    assert float(epoch["loss"]) == pytest.approx(0.32, abs=0.05)

    # Two teachers are averaged: the happy one and one undecided (50/50) give targets of 75/25, against which the
    # same happy student scores about 1.66 (smoothed 0.724/0.276), where either teacher alone gives 0.32 or 3.0.
    logits.set_weights([np.zeros_like(logits.get_weights()[0]), np.zeros(2, np.float32)])
    undecided = tmp_path / "undecided" / "model.keras"
    undecided.parent.mkdir()
    first_model.save(undecided)
    (undecided.parent / "model.card.json").write_bytes((tmp_path / "first" / "model.card.json").read_bytes())
    fourth = run_script("train/train.py", *common, "--out", tmp_path / "fourth", "--epochs", "1", "--lr", "1e-7",
                        "--init-from", constant, "--teacher", constant, undecided, "--distill-weight", "1.0")
    assert fourth.returncode == 0, fourth.stderr[-3000:]
    assert "one of 2 teachers" in fourth.stderr
    with (tmp_path / "fourth" / "history.csv").open() as f:
        (epoch,) = list(csv.DictReader(f))
    assert float(epoch["loss"]) == pytest.approx(1.66, abs=0.1)
    assert load_card(tmp_path / "fourth" / "model.card.json").training["recipe"]["teacher"] == [str(constant),
                                                                                                str(undecided)]
