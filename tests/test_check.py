"""`edge-emotion check` in both modes, on the tiny converted model and small real data."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data as skimage_data

from edge_app.commands import check
from edge_app.config import load_config
from edge_app.model_card import load_card
from edge_app.pipeline.classify import EmotionClassifier
from edge_app.pipeline.faces import FacePipeline
from edge_app.pipeline.preprocess import landmark_features


def run_check(argv: list[str], model: Path, capsys: pytest.CaptureFixture,
              overrides: tuple[str, ...] = ()) -> tuple[int, dict | None, str]:
    parser = argparse.ArgumentParser()
    check.add_arguments(parser)
    config = load_config(overrides=[f"model.path={model}", *overrides], env={})
    code = check.main(parser.parse_args(argv), config)
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) <= 1, "check prints one JSON object"
    return code, json.loads(lines[0]) if lines else None, err


def test_faces_mode_reproduces_the_cards_accuracy(tiny_model, capsys) -> None:
    code, result, _ = run_check(["--data", str(tiny_model["data"]), "--split", "test", "--tolerance", "3"],
                                tiny_model["int8"], capsys)
    report = json.loads(tiny_model["report"].read_text())
    assert result["n"] == report["n"]
    assert result["expected_accuracy"] == report["int8_accuracy"]
    # Landmarks computed here in float32, for conversion from the float16 cache: a few faces may flip.
    assert abs(result["accuracy"] - report["int8_accuracy"]) <= 0.02
    assert result["delta"] == pytest.approx(result["accuracy"] - result["expected_accuracy"], abs=1e-4)
    assert 0 < result["macro_f1"] <= 1 and result["ms_per_image"] > 0
    assert set(result["recall"]) == set(load_card(tiny_model["card"]).classes)  # every class is in the test slice
    assert result["delegate"] == "cpu" and result["model"] == "fer_fusion_int8.tflite"
    assert code == 0 and result["passed"] is True


def test_the_shipped_model_reads_every_class_of_privatetest(fer_data_path: Path, capsys) -> None:
    """What the README promises of the shipped int8 model, through the device's own check: its card's PrivateTest
    accuracy, and every class's recall at the recall floor it was adjusted for (convert/logit_adjust.py)."""
    from edge_app.model_card import default_model_path, find_card

    model = default_model_path()
    card = load_card(find_card(model))
    code, result, _ = run_check(["--data", str(fer_data_path), "--split", "test"], model, capsys)
    assert code == 0 and result["passed"] is True and result["n"] == 3589
    assert abs(result["accuracy"] - result["expected_accuracy"]) <= 0.002
    floor = card.training["logit_adjustment"]["min_recall"]
    assert min(result["recall"].values()) >= floor, result["recall"]


def test_faces_mode_with_flip_average_averages(tiny_model, tmp_path, capsys) -> None:
    """Test faces on which the mirror changes the answer, each labelled with the flip-averaged answer: check must
    score 100% with flip_average and 0% without, so a check that ignored the setting would fail."""
    from edge_app.dataset import TEST, load_dataset

    data = load_dataset(tiny_model["data"]).split("test")
    plain, averaged = EmotionClassifier(tiny_model["int8"]), EmotionClassifier(tiny_model["int8"], flip_average=True)
    pipeline = FacePipeline.for_small_faces(plain.crop_spec)
    faces, labels = [], []
    for image in data.images:
        features = landmark_features(pipeline.small_face_landmarks(image))  # as check computes them
        answer = int(averaged.predict(image, features).argmax())
        if answer != int(plain.predict(image, features).argmax()):
            faces.append(image)
            labels.append(answer)
    assert len(faces) >= 3, "the tiny model's mirror changes too few answers to tell averaging from none"
    path = tmp_path / "flip.npz"
    np.savez(path, pixels=np.stack(faces), emotion=np.array(labels, np.uint8),
             usage=np.full(len(faces), TEST, np.uint8))
    argv = ["--data", str(path), "--split", "test", "--tolerance", "100"]
    _, without, _ = run_check(argv, tiny_model["int8"], capsys)
    _, with_flip, _ = run_check(argv, tiny_model["int8"], capsys, overrides=("model.flip_average=true",))
    assert without["flip_average"] is False and with_flip["flip_average"] is True
    assert with_flip["n"] == without["n"] == len(faces)
    assert with_flip["accuracy"] == 1.0 and without["accuracy"] == 0.0


def test_faces_mode_fails_when_below_the_card(tiny_model, tmp_path, capsys, caplog) -> None:
    models = Path(shutil.copytree(tiny_model["models"], tmp_path / "models"))
    card_path = models / "fer_fusion.card.json"
    card = json.loads(card_path.read_text())
    card["files"]["int8"]["accuracy"] = 0.99
    card_path.write_text(json.dumps(card))
    with caplog.at_level(logging.ERROR):
        code, result, _ = run_check(["--data", str(tiny_model["data"]), "--limit", "50", "--tolerance", "1"],
                                    models / "fer_fusion_int8.tflite", capsys)
    assert result["n"] == 50 and result["expected_accuracy"] == 0.99
    assert code == 1 and result["passed"] is False and result["delta"] < -0.01
    assert any("below the model card's 99.00% (tolerance 1.00 points)" in r.getMessage() for r in caplog.records)


def answer_for(model: Path, rgb: np.ndarray) -> str:
    """The class the model gives the largest face of ``rgb`` through the device's own pipeline (config defaults)."""
    classifier = EmotionClassifier(model)
    pipeline = FacePipeline.from_config(load_config(env={}), classifier.crop_spec, max_faces=1)
    face = pipeline.detect(rgb)[0]
    return classifier.classes[int(classifier.predict(face.crop, face.features).argmax())]


@pytest.fixture
def photo_folder(tiny_model, tmp_path: Path) -> Path:
    """<answer>/astronaut.jpg (a real face, filed under the class the tiny model gives it, so that check must count
    it right), <answer>/notes.jpg (text, not an image), <answer>/cut.jpg (the same face, truncated: OpenCV alone
    would decode it with a grey bottom), contempt/ (no such class)."""
    root = tmp_path / "photos"
    staging = tmp_path / "astronaut.jpg"
    cv2.imwrite(str(staging), cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR))
    folder = root / answer_for(tiny_model["int8"], cv2.cvtColor(cv2.imread(str(staging)), cv2.COLOR_BGR2RGB))
    folder.mkdir(parents=True)
    (root / "contempt").mkdir()
    shutil.copyfile(staging, folder / "astronaut.jpg")
    (folder / "notes.jpg").write_text("this is not a picture")
    jpeg = staging.read_bytes()
    (folder / "cut.jpg").write_bytes(jpeg[: len(jpeg) * 2 // 3])
    shutil.copyfile(staging, root / "contempt" / "astronaut.jpg")
    return root


def test_full_pipeline_on_a_photo_folder(tiny_model, photo_folder, capsys, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        code, result, _ = run_check(["--full-pipeline", "--data", str(photo_folder)], tiny_model["int8"], capsys)
    assert result["mode"] == "full-pipeline"
    assert result["n"] == 3  # contempt/ is not a class of the model
    assert result["face_found_rate"] == 0.3333 and result["unreadable"] == 2
    assert result["accuracy"] == 0.3333  # the astronaut is right (its folder is the model's answer), the rest wrong
    assert result["pipeline_ms_per_image"] > 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("notes.jpg: not an image OpenCV can read; counted as wrong" in m for m in messages)
    assert any("cut.jpg: truncated image" in m and m.endswith("counted as wrong") for m in messages)
    assert any("contempt: not a class of the model" in m for m in messages)
    assert code == (0 if result["passed"] else 1)
    assert result["passed"] == (100 * result["delta"] >= -1.0)


def test_full_pipeline_on_an_npz_counts_a_photo_without_face_as_wrong(tiny_model, tmp_path, capsys) -> None:
    astronaut = skimage_data.astronaut()
    blank = np.full_like(astronaut, 128)
    path = tmp_path / "photos.npz"
    answer = load_card(tiny_model["card"]).classes.index(answer_for(tiny_model["int8"], astronaut))
    other = 6 if answer != 6 else 0  # a label a grey frame cannot be given: it has no face
    # Labelled with the model's answer (FER-2013 coding, the card's class order).
    np.savez(path, images=np.stack([astronaut, blank]), emotion=np.array([answer, other]))
    per_face = tmp_path / "per_face.json"
    code, result, _ = run_check(["--full-pipeline", "--data", str(path), "--predictions", str(per_face)],
                                tiny_model["int8"], capsys)
    assert result["n"] == 2 and result["face_found_rate"] == 0.5 and result["unreadable"] == 0
    assert result["accuracy"] == 0.5  # the astronaut is right, the blank photo (no face found) counts as wrong
    # Face by face, as arm64.sh compares two devices: the blank photo has no prediction.
    written = json.loads(per_face.read_text())
    assert written["labels"] == [answer, other] and written["predictions"] == [answer, check.NO_PREDICTION]


def test_bad_data_is_named_without_a_traceback(tiny_model, tmp_path, capsys) -> None:
    missing = tmp_path / "nowhere.npz"
    code, result, err = run_check(["--data", str(missing)], tiny_model["int8"], capsys)
    assert code == 2 and result is None and f"{missing}: no such file or directory" in err
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((2, 10, 10), np.uint8), emotion=np.array([3, 6]))
    code, result, err = run_check(["--full-pipeline", "--data", str(bad)], tiny_model["int8"], capsys)
    assert code == 2 and "expected (N, H, W, 3) uint8" in err


def test_macro_f1_matches_its_definition() -> None:
    labels = np.array([0, 0, 1, 1, 2])
    predictions = np.array([0, 1, 1, 1, -1])  # -1: no face found
    # class 0: P=1, R=.5 -> 2/3; class 1: P=2/3, R=1 -> .8; class 2: 0
    assert check.macro_f1(labels, predictions, 3) == pytest.approx((2 / 3 + 0.8 + 0) / 3)
    assert check.recall_per_class(labels, predictions, ("a", "b", "c", "d")) == {"a": 0.5, "b": 1.0, "c": 0.0}
