"""Convert the Keras model to TFLite and validate it: ``python convert/quantize.py [--flags]``.

Makes ``<name>_int8.tflite`` (full integer: int8 inputs, outputs and per-channel weights,
calibrated on a class-balanced sample of the training split), ``<name>_float16.tflite``
(for the GPU delegate) and ``<name>_int8_edgetpu_ready.tflite`` (batch-1 inputs so every op
maps to the Edge TPU; compile it with ``edgetpu_compiler``). Each is run on the test split
(PrivateTest) through the device's own classifier and compared with the float Keras model, and
the int8 model also runs the device path (``convert/device_path.py``: each test face detected,
landmarked and cropped by the device's ``FacePipeline``). The files, the updated card and
``quantization_report.{json,md}`` land in ``--out`` only when int8 accuracy is within
``--max-accuracy-drop`` points of float and the device path within ``--max-device-path-drop``
points of the int8 crop path; otherwise ``--out`` is left as it was (except the report) and the
exit status is 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

if TYPE_CHECKING:
    import keras

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from convert.device_path import device_path_report, device_predictions, sample_rows  # noqa: E402
from edge_app.config import AppConfig, ConfigError, load_config  # noqa: E402
from edge_app.dataset import TEST, TRAIN, DataError  # noqa: E402
from edge_app.model_card import ModelCard, ModelError, describe_file, float_model_inputs, load_card  # noqa: E402
from edge_app.pipeline.classify import EmotionClassifier  # noqa: E402
from train.landmark_cache import DEFAULT_CACHE_DIR, load_with_features, recorded_path, training_card_path  # noqa: E402

log = logging.getLogger("quantize")
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fer2013.npz"
# Card file kind -> file name suffix after the model name.
TFLITE_KINDS = {"int8": "_int8.tflite", "float16": "_float16.tflite", "edgetpu_ready": "_int8_edgetpu_ready.tflite"}
# Where a card file's accuracy comes from when that is not obvious (every figure here is measured on this machine).
CPU_NOTES = {"edgetpu_ready": "accuracy measured on the CPU (the batch-1 int8 model that edgetpu_compiler takes)"}
EDGETPU_NOT_MEASURED = ("accuracy not measured: no Edge TPU where it was registered; measure it with `edge-emotion "
                        "check` on the device and pass --edgetpu-accuracy")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "models" / "fer_fusion.keras"),
                   help="Keras model; its card <stem>.card.json must lie beside it")
    p.add_argument("--out", default=str(ROOT / "models"), help="where the TFLite files, card and report go")
    p.add_argument("--data", default=os.environ.get("FER2013_PATH", str(DEFAULT_DATA)))
    p.add_argument("--calibration-size", type=int, default=None,
                   help="training faces for int8 calibration (default: convert.calibration_size)")
    p.add_argument("--max-accuracy-drop", type=float, default=None,
                   help="fail when int8 accuracy is more than this many points below float (default: "
                        "convert.max_accuracy_drop)")
    p.add_argument("--device-path-size", type=int, default=None,
                   help="test faces also run through the device path, 0 = all (default: convert.device_path_size)")
    p.add_argument("--max-device-path-drop", type=float, default=None,
                   help="fail when the device path's accuracy is more than this many points below the int8 crop "
                        "path's on the same faces (default: convert.max_device_path_drop)")
    p.add_argument("--limit", type=int, default=0, help="validate on only the first N test faces (quick runs)")
    p.add_argument("--config", default=None, help="config.yaml for the convert: section (default: the app's)")
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR), help="landmark cache (train/landmark_cache.py)")
    p.add_argument("--register-edgetpu", metavar="PATH", default=None,
                   help="only add an edgetpu_compiler output to the card beside it, then exit")
    p.add_argument("--edgetpu-accuracy", type=float, default=None,
                   help="with --register-edgetpu: the accuracy `edge-emotion check` measured on an Edge TPU "
                        "(default: recorded as not measured)")
    return p.parse_args(argv)


def convert_settings(args: argparse.Namespace) -> AppConfig:
    """The config (its ``convert:`` section with the flags laid over it; ``detection:`` for the device path)."""
    flags = {"calibration_size": args.calibration_size, "max_accuracy_drop": args.max_accuracy_drop,
             "device_path_size": args.device_path_size, "max_device_path_drop": args.max_device_path_drop}
    overrides = [f"convert.{key}={value}" for key, value in flags.items() if value is not None]
    try:
        return load_config(args.config, overrides)
    except ConfigError as exc:
        raise SystemExit(f"config: {exc}") from exc


def calibration_indices(labels: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """Up to ``size`` row indices, the same number from each class (other classes fill in for small ones)."""
    rng = np.random.default_rng(seed)
    rows, ranks, classes = [], [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        rows.append(idx)
        ranks.append(np.arange(len(idx)))
        classes.append(np.full(len(idx), c))
    rows, ranks, classes = np.concatenate(rows), np.concatenate(ranks), np.concatenate(classes)
    return np.sort(rows[np.lexsort((classes, ranks))][:size])


def to_tflite(model: keras.Model, kind: str, calibration: dict[str, np.ndarray]) -> bytes:
    """TFLite flatbuffer: ``float16`` weights, or full-integer ``int8`` calibrated on ``calibration``."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if kind == "float16":
        converter.target_spec.supported_types = [tf.float16]
    else:
        converter.representative_dataset = representative_dataset(calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with contextlib.redirect_stdout(sys.stderr):  # Keras' export prints its signature: keep stdout for the result
        return converter.convert()


def representative_dataset(calibration: dict[str, np.ndarray]) -> Callable[[], Iterator[dict[str, np.ndarray]]]:
    """One face at a time, keyed by input name: the converter orders a multi-input model's inputs its own way."""
    n = len(next(iter(calibration.values())))

    def faces() -> Iterator[dict[str, np.ndarray]]:
        for i in range(n):
            yield {name: value[i: i + 1] for name, value in calibration.items()}

    return faces


def batch_one_model(model: keras.Model, card: ModelCard) -> keras.Model:
    """The same network with fixed batch-1 inputs (the Edge TPU compiler rejects dynamic shapes)."""
    from train.model import build_model

    recipe = card.training.get("recipe", {})
    missing = [k for k in ("branch", "widths", "dropout") if k not in recipe]
    if missing:
        raise SystemExit(f"card training.recipe lacks {missing}: cannot rebuild the batch-1 Edge TPU model")
    single = build_model(len(card.classes), branch=recipe["branch"], widths=tuple(recipe["widths"]),
                         dropout=recipe["dropout"], batch_size=1)
    try:
        single.set_weights(model.get_weights())
    except ValueError as exc:
        raise SystemExit(f"the card's recipe does not rebuild this model ({exc})") from exc
    return single


def run_tflite(path: Path, card_path: Path, classes: list[str], faces: np.ndarray,
               features: np.ndarray) -> tuple[np.ndarray, float]:
    """Probabilities from the device's own classifier, and mean inference ms per face."""
    classifier = EmotionClassifier(path, card_path, delegate="cpu", expected_classes=classes)
    probs, times = [], []
    for face, feature in tqdm(zip(faces, features), total=len(faces), desc=path.name, disable=None):
        probs.append(classifier.predict(face, feature))
        times.append(classifier.last_ms)
    return np.stack(probs), float(np.mean(times))


def compare(reference: np.ndarray, probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    diff = np.abs(probs - reference)
    return {
        "accuracy": round(float(np.mean(probs.argmax(1) == labels)), 4),
        "agreement": round(float(np.mean(probs.argmax(1) == reference.argmax(1))), 4),
        "mean_abs_prob_diff": round(float(diff.mean()), 5),
        "max_abs_prob_diff": round(float(diff.max()), 5),
    }


def per_class(classes: list[str], labels: np.ndarray, float_pred: np.ndarray, int8_pred: np.ndarray) -> dict:
    table = {}
    for i, name in enumerate(classes):
        rows = labels == i
        if not rows.any():
            continue
        f, q = float(np.mean(float_pred[rows] == i)), float(np.mean(int8_pred[rows] == i))
        table[name] = {"n": int(rows.sum()), "float_accuracy": round(f, 4), "int8_accuracy": round(q, 4),
                       "delta_points": round(100 * (q - f), 2)}
    return table


def markdown(report: dict) -> str:
    lines = [
        f"# Quantization report: {report['model']}",
        "",
        f"Test split ({report['split']}), n = {report['n']}; int8 calibrated on {report['calibration_size']} "
        f"training faces. Gate: int8 at most {report['max_accuracy_drop']} points below float -> "
        f"**{'passed' if report['int8_passed'] else 'FAILED'}** (drop {report['accuracy_drop_points']} points).",
        "",
        device_path_markdown(report["device_path"]),
        "",
        "| model | size | accuracy | vs float (points) | top-1 agreement | mean abs prob diff | max abs prob diff "
        "| ms/image |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind, m in report["models"].items():
        delta = 100 * (m["accuracy"] - report["float_accuracy"])
        agreement = "" if kind == "keras_float" else f"{100 * m['agreement']:.2f}%"
        diffs = ("", "")
        if kind != "keras_float":
            diffs = (f"{m['mean_abs_prob_diff']:.4f}", f"{m['max_abs_prob_diff']:.4f}")
        lines.append(f"| {kind} (`{m['file']}`) | {m['size_bytes'] / 1e6:.2f} MB | {100 * m['accuracy']:.2f}% | "
                     f"{delta:+.2f} | {agreement} | {diffs[0]} | {diffs[1]} | {m['ms_per_image']:.2f} |")
    lines += ["", "| class | n | float | int8 | delta (points) |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, c in report["per_class"].items():
        lines.append(f"| {name} | {c['n']} | {100 * c['float_accuracy']:.2f}% | {100 * c['int8_accuracy']:.2f}% | "
                     f"{c['delta_points']:+.2f} |")
    return "\n".join(lines) + "\n"


def device_path_markdown(d: dict) -> str:
    return (f"Device path (`convert/device_path.py`: {d['n']} test faces upscaled, detected, landmarked and cropped "
            f"by `FacePipeline`, then the int8 model): faces found {100 * d['face_found_rate']:.2f}%; on those "
            f"{d['n_found']} faces accuracy {100 * d['accuracy']:.2f}%, macro F1 {d['macro_f1']:.4f}, against "
            f"{100 * d['crop_accuracy_same_faces']:.2f}% for the int8 model on their 48x48 crops; counting the faces "
            f"not found as wrong {100 * d['accuracy_counting_misses']:.2f}%. Gate: at most {d['max_drop_points']} "
            f"points below the crop path -> **{'passed' if d['passed'] else 'FAILED'}** "
            f"(drop {d['drop_points']} points).")


def register_edgetpu(path: Path, accuracy: float | None) -> int:
    """Add an ``edgetpu_compiler`` output to the card of the int8 model beside it, with the accuracy measured on an
    Edge TPU or a note that it was not measured (the CPU's figure for the int8 model is not the Edge TPU's)."""
    if accuracy is not None and not 0 <= accuracy <= 1:
        raise SystemExit(f"--edgetpu-accuracy: expected a fraction 0-1 (as `check` prints), got {accuracy}")
    if not path.is_file():
        raise SystemExit(f"--register-edgetpu: no such file: {path}")
    cards = [c for c in sorted(path.parent.glob("*.card.json")) if "edgetpu_ready" in load_card(c).files]
    if len(cards) != 1:
        raise SystemExit(f"--register-edgetpu: expected one card with an edgetpu_ready file in {path.parent}, "
                         f"found {[c.name for c in cards]}")
    card = load_card(cards[0])
    note = EDGETPU_NOT_MEASURED if accuracy is None else "accuracy measured by `edge-emotion check` on an Edge TPU"
    card.files["edgetpu"] = describe_file(path, cards[0].parent, accuracy, note)
    card.write(cards[0])
    print(json.dumps({"card": str(cards[0]), "edgetpu": card.files["edgetpu"].model_dump(exclude_none=True)}))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.register_edgetpu:
        return register_edgetpu(Path(args.register_edgetpu), args.edgetpu_accuracy)
    config = convert_settings(args)
    calibration_size, max_drop = config.convert.calibration_size, config.convert.max_accuracy_drop
    model_path, out = Path(args.model), Path(args.out)
    card_path = training_card_path(model_path)
    if not model_path.is_file():
        raise SystemExit(f"--model: no such file: {model_path} (train one with train/train.py)")
    if not card_path.is_file():
        raise SystemExit(f"--model: no model card beside it (expected {card_path})")
    try:
        card = load_card(card_path)
        data, features = load_with_features(args.data, Path(args.cache_dir), card)
    except (ModelError, DataError) as exc:
        raise SystemExit(str(exc)) from exc

    import keras

    try:
        model = keras.models.load_model(model_path)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise SystemExit(f"--model: cannot load {model_path} as a Keras model ({exc})") from exc
    train_rows = np.flatnonzero(data.splits == TRAIN)
    calib = train_rows[calibration_indices(data.labels[train_rows], calibration_size)]
    calibration = float_model_inputs(data.images[calib], features[calib])
    test_rows = np.flatnonzero(data.splits == TEST)[: args.limit or None]
    if len(test_rows) == 0:
        raise SystemExit(f"{args.data}: no test (PrivateTest) faces of classes {card.classes}")
    faces, test_features, labels = data.images[test_rows], features[test_rows], data.labels[test_rows]

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".quantize-") as tmp:
        staged = Path(tmp)
        log.info("converting %s (%d calibration faces)", model_path, len(calib))
        builds = {"int8": (model, "int8"), "float16": (model, "float16"),
                  "edgetpu_ready": (batch_one_model(model, card), "int8")}
        paths = {}
        for kind, (network, mode) in builds.items():
            paths[kind] = staged / f"{card.name}{TFLITE_KINDS[kind]}"
            paths[kind].write_bytes(to_tflite(network, mode, calibration))
        staged_card = ModelCard.model_validate({**card.model_dump(), "files": {}})
        staged_card.files = {kind: describe_file(p, staged) for kind, p in paths.items()}
        staged_card.write(staged / f"{card.name}.card.json")

        start = time.perf_counter()
        reference = model.predict(float_model_inputs(faces, test_features), batch_size=256, verbose=0)
        keras_ms = 1000 * (time.perf_counter() - start) / len(faces)
        float_pred = reference.argmax(1)
        float_accuracy = round(float(np.mean(float_pred == labels)), 4)
        results = {"keras_float": {"file": f"{card.name}.keras", "accuracy": float_accuracy,
                                   "ms_per_image": round(keras_ms, 3), "size_bytes": model_path.stat().st_size}}
        predictions = {}
        for kind, path in paths.items():
            probs, ms = run_tflite(path, staged / f"{card.name}.card.json", card.classes, faces, test_features)
            predictions[kind] = probs.argmax(1)
            results[kind] = {"file": path.name, **compare(reference, probs, labels), "ms_per_image": round(ms, 3),
                             "size_bytes": path.stat().st_size}
        drop = round(100 * (results["keras_float"]["accuracy"] - results["int8"]["accuracy"]), 2)
        on_device = sample_rows(len(faces), config.convert.device_path_size)
        log.info("device path: %d test faces through detection, landmarks and cropping", len(on_device))
        device = device_predictions(paths["int8"], staged / f"{card.name}.card.json", card.classes,
                                    faces[on_device], config)
        device_path = device_path_report(labels[on_device], device, predictions["int8"][on_device],
                                         len(card.classes), config.convert.max_device_path_drop)
        report = {
            "model": card.name, "source": recorded_path(model_path), "data": Path(args.data).name, "split": "test",
            "n": len(faces),
            "float_accuracy": results["keras_float"]["accuracy"], "int8_accuracy": results["int8"]["accuracy"],
            "agreement": results["int8"]["agreement"], "accuracy_drop_points": drop,
            "max_accuracy_drop": max_drop, "int8_passed": drop <= max_drop,
            "passed": drop <= max_drop and device_path["passed"], "calibration_size": len(calib),
            "models": results, "per_class": per_class(card.classes, labels, float_pred, predictions["int8"]),
            "device_path": device_path,
        }
        (out / "quantization_report.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "quantization_report.md").write_text(markdown(report))
        if not report["int8_passed"]:
            print(f"FAILED: int8 accuracy {100 * report['int8_accuracy']:.2f}% is {drop:.2f} points below float "
                  f"{100 * report['float_accuracy']:.2f}% (limit {max_drop} points, n={len(faces)}, agreement "
                  f"{100 * report['agreement']:.2f}%); {out} keeps its previous models", file=sys.stderr)
        if not device_path["passed"]:
            print(f"FAILED: device path accuracy {100 * device_path['accuracy']:.2f}% is "
                  f"{device_path['drop_points']:.2f} points below the int8 crop path's "
                  f"{100 * device_path['crop_accuracy_same_faces']:.2f}% on the same {device_path['n_found']} faces "
                  f"(limit {device_path['max_drop_points']} points; faces found {device_path['n_found']} of "
                  f"{device_path['n']}); {out} keeps its previous models", file=sys.stderr)
        if not report["passed"]:
            return 1
        keras_path = out / f"{card.name}.keras"
        if keras_path.resolve() != model_path.resolve():
            shutil.copyfile(model_path, keras_path)
        for kind, path in paths.items():
            paths[kind] = Path(shutil.move(path, out / path.name))
    final = ModelCard.model_validate({**card.model_dump(), "files": {}})
    final.metrics["device_path"] = {k: device_path[k] for k in ("accuracy", "macro_f1", "face_found_rate", "n",
                                                                "accuracy_counting_misses", "crop_accuracy_same_faces")}
    final.files["keras"] = describe_file(keras_path, out, results["keras_float"]["accuracy"])
    for kind, path in paths.items():
        final.files[kind] = describe_file(path, out, results[kind]["accuracy"], CPU_NOTES.get(kind))
    if "edgetpu" in card.files:
        log.warning("the card's Edge TPU model is stale now: compile %s again", paths["edgetpu_ready"].name)
    final.write(out / f"{card.name}.card.json")
    print(json.dumps({**{k: report[k] for k in ("n", "float_accuracy", "int8_accuracy", "agreement",
                                                "accuracy_drop_points", "passed")},
                      "device_path": {k: device_path[k] for k in ("n", "accuracy", "macro_f1", "face_found_rate",
                                                                  "drop_points")}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
