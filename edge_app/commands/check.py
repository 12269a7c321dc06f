"""On-device accuracy check: ``edge-emotion check --data PATH`` runs the deployed model on labelled faces.

It uses the configured model, runtime and delegate, so it measures what this device
really does, and compares the accuracy with the one ``convert/quantize.py`` measured
(the model card). Two modes:

* default: 48x48 faces (the project's npz, Kaggle's fer2013.csv or an image-folder copy,
  loaded by ``edge_app.dataset``), landmarks computed exactly as for training;
* ``--full-pipeline``: ordinary photos through detection, landmarks and cropping; PATH is a
  folder ``<class name>/*.jpg|png`` or an npz with ``images`` (N,H,W,3 uint8 RGB) and
  ``emotion`` (N, FER-2013 coding). A photo with no face found, or that cannot be read, counts as wrong.

Prints one JSON object; exits 1 when accuracy is more than ``--tolerance`` points below the card's.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from edge_app.app import Pipeline, build_pipeline
from edge_app.dataset import DataError, load_dataset
from edge_app.emotions import fer_label_map
from edge_app.pipeline.capture import IMAGE_SUFFIXES, ImageError, read_image
from edge_app.pipeline.classify import EmotionClassifier
from edge_app.pipeline.faces import FacePipeline, FrameError
from edge_app.pipeline.preprocess import landmark_features
from edge_app.pipeline.runtime import ModelLoadError

log = logging.getLogger(__name__)

NO_PREDICTION = -1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path,
                        help="labelled faces: npz, fer2013.csv or image folder (with --full-pipeline: photos)")
    parser.add_argument("--split", choices=("train", "validation", "test", "all"), default="test",
                        help="FER-2013 split to use (default: test = PrivateTest); ignored with --full-pipeline")
    parser.add_argument("--tolerance", type=float, default=1.0,
                        help="exit 1 when accuracy is more than this many points below the model card's")
    parser.add_argument("--full-pipeline", action="store_true",
                        help="run detection, landmarks and cropping on ordinary photos")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N faces or photos")
    parser.add_argument("--predictions", type=Path, default=None,
                        help="also write each face's label and predicted class index (-1: no face) to this JSON "
                             "file, e.g. to compare two devices face by face")


def macro_f1(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    """Mean F1 over the classes that occur in the labels or predictions (a missing prediction is a miss)."""
    scores = []
    for c in range(num_classes):
        tp = int(np.sum((predictions == c) & (labels == c)))
        fp = int(np.sum((predictions == c) & (labels != c)))
        fn = int(np.sum((predictions != c) & (labels == c)))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def recall_per_class(labels: np.ndarray, predictions: np.ndarray, classes: tuple[str, ...]) -> dict[str, float]:
    """Each class's recall (the share of its faces given that class; a face without prediction is a miss), for
    the classes that occur in the labels: the figure that shows a class the model hardly ever says."""
    return {name: round(float(np.mean(predictions[labels == c] == c)), 4) for c, name in enumerate(classes)
            if np.any(labels == c)}


def mean_ms(times: list[float]) -> float | None:
    return round(float(np.mean(times)), 3) if times else None


def progress(items: Any, total: int, desc: str) -> Any:
    """A progress bar on a terminal, nothing when stderr is piped."""
    return tqdm(items, total=total, desc=desc, disable=not sys.stderr.isatty())


def check_faces(args: argparse.Namespace, classifier: EmotionClassifier) -> tuple[np.ndarray, np.ndarray, dict]:
    """Labels and predictions for 48x48 faces, landmarks found as the training landmark cache finds them."""
    data = load_dataset(args.data)
    if args.split != "all":
        data = data.split(args.split)
    data = data.with_classes(classifier.classes)
    if args.limit:
        data = data.select(np.arange(len(data)) < args.limit)
    if len(data) == 0:
        raise DataError(f"{args.data}: no faces of classes {list(classifier.classes)} in split {args.split!r}")
    pipeline = FacePipeline.for_small_faces(classifier.crop_spec)
    predictions, times = np.empty(len(data), np.int64), []
    for i, image in enumerate(progress(data.images, len(data), "check")):
        features = landmark_features(pipeline.small_face_landmarks(image))
        predictions[i] = classifier.predict(image, features).argmax()
        times.append(classifier.last_ms)
    return data.labels, predictions, {"ms_per_image": mean_ms(times)}


def photos(path: Path, classes: tuple[str, ...]) -> tuple[int, Iterator[tuple[str, int, np.ndarray | None]]]:
    """(count, iterator of (name, label, RGB image or None when unreadable)) for a photo folder or npz."""
    if path.is_dir():
        files = []
        for folder in sorted(p for p in path.iterdir() if p.is_dir()):
            if folder.name.lower() not in classes:
                log.warning("%s: not a class of the model %s, skipped", folder, list(classes))
                continue
            label = classes.index(folder.name.lower())
            files += [(f, label) for f in sorted(folder.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise DataError(f"{path}: no <class name>/*.jpg|png photos for classes {list(classes)}")

        def read() -> Iterator[tuple[str, int, np.ndarray | None]]:
            for file, label in files:
                try:
                    image = read_image(file)
                except ImageError as exc:
                    log.warning("%s; counted as wrong", exc)  # names the file and why (empty, truncated, ...)
                    image = None
                yield str(file), label, image

        return len(files), read()
    if path.suffix.lower() != ".npz" or not path.is_file():
        raise DataError(f"{path}: expected a folder <class name>/*.jpg|png or an npz with images and emotion")
    try:
        with np.load(path) as data:
            images, emotions = data["images"], data["emotion"].astype(np.int64)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # EOF/BadZip: empty or cut short
        raise DataError(f"{path}: not an npz with arrays images and emotion ({exc})") from exc
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8 or len(images) != len(emotions):
        raise DataError(f"{path}: images has shape {images.shape} {images.dtype}, expected (N, H, W, 3) uint8 "
                        f"with one emotion per image ({len(emotions)})")
    labels = fer_label_map(classes)[np.clip(emotions, 0, 6)]
    labels[(emotions < 0) | (emotions > 6)] = -1
    rows = np.flatnonzero(labels >= 0)
    return len(rows), ((f"{path}[{i}]", int(labels[i]), images[i]) for i in rows)


def check_photos(args: argparse.Namespace, device: Pipeline) -> tuple[np.ndarray, np.ndarray, dict]:
    """Labels and predictions for photos through the device's face pipeline (largest face per photo)."""
    classifier, pipeline = device
    pipeline.max_faces = 1
    count, samples = photos(args.data, classifier.classes)
    count = min(count, args.limit) if args.limit else count
    labels, predictions, found, unreadable, pipeline_ms, times = [], [], 0, 0, [], []
    for i, (name, label, image) in enumerate(progress(samples, count, "check")):
        if i >= count:
            break
        labels.append(label)
        predictions.append(NO_PREDICTION)
        if image is None:  # photos() said why
            unreadable += 1
            continue
        start = time.perf_counter()
        try:
            faces = pipeline.detect(image)
        except FrameError as exc:
            log.warning("%s: %s; counted as wrong", name, exc)
            unreadable += 1
            continue
        if faces:
            found += 1
            predictions[-1] = int(classifier.predict(faces[0].crop, faces[0].features).argmax())
            times.append(classifier.last_ms)
        pipeline_ms.append(1000 * (time.perf_counter() - start))
    extra = {"ms_per_image": mean_ms(times), "pipeline_ms_per_image": mean_ms(pipeline_ms),
             "face_found_rate": round(found / max(len(labels), 1), 4), "unreadable": unreadable}
    return np.asarray(labels, np.int64), np.asarray(predictions, np.int64), extra


def expected_accuracy(classifier: EmotionClassifier) -> float | None:
    """The accuracy convert/quantize.py measured for the file in use (else for the int8 file)."""
    files = classifier.card.files
    entry = classifier.card.entry_for(classifier.card_path.parent, classifier.model_path)
    for candidate in (entry[1] if entry else None, files.get("int8")):
        if candidate is not None and candidate.accuracy is not None:
            return candidate.accuracy
    return None


def main(args: argparse.Namespace, config: Any) -> int:
    try:
        if args.full_pipeline:
            device = build_pipeline(config)
            classifier = device.classifier
            labels, predictions, extra = check_photos(args, device)
        else:
            classifier = EmotionClassifier.from_config(config)
            labels, predictions, extra = check_faces(args, classifier)
    except (ModelLoadError, DataError) as exc:
        print(f"edge-emotion check: {exc}", file=sys.stderr)
        return 2
    accuracy = float(np.mean(predictions == labels))
    expected = expected_accuracy(classifier)
    delta = None if expected is None else accuracy - expected
    result = {
        "mode": "full-pipeline" if args.full_pipeline else "faces",
        "data": str(args.data),
        "split": None if args.full_pipeline else args.split,
        "model": classifier.model_path.name,
        "delegate": classifier.delegate_in_use,
        "flip_average": classifier.flip_average,
        "n": int(len(labels)),
        "accuracy": round(accuracy, 4),
        "macro_f1": round(macro_f1(labels, predictions, len(classifier.classes)), 4),
        "recall": recall_per_class(labels, predictions, classifier.classes),
        **extra,
        "expected_accuracy": expected,
        "delta": None if delta is None else round(delta, 4),
        "tolerance_points": args.tolerance,
    }
    passed = delta is None or 100 * delta >= -args.tolerance
    result["passed"] = passed
    if args.predictions is not None:
        per_face = {"classes": list(classifier.classes), "labels": labels.tolist(), "predictions": predictions.tolist()}
        args.predictions.write_text(json.dumps(per_face))
    print(json.dumps(result))
    if not passed:
        log.error("accuracy %.2f%% is %.2f points below the model card's %.2f%% (tolerance %.2f points)",
                  100 * accuracy, -100 * delta, 100 * expected, args.tolerance)
    return 0 if passed else 1
