"""Logit adjustment folded into the model: ``python convert/logit_adjust.py --out runs/adjusted/fer_fusion.keras``.

The model ends in softmax over a Dense layer (``logits``). Trained on FER-2013's class frequencies (happy 25%, disgust
1.5%), it leans towards the frequent classes. Adding a per-class offset to the logits takes that lean out, and since
the logits are ``Dense(x) = Wx + b`` it is the same as shifting ``b``: the Keras, int8, float16 and Edge TPU builds
all carry it, at no cost per face. Two rules choose the offsets, on the validation split (PublicTest) only, fixed
before any test figure is looked at:

- ``recall-floor`` (the default): per-class offsets, by coordinate ascent over a grid, that bring every class's
  PublicTest recall to ``--min-recall`` (or as close as the grid gets) and, among those, give the best PublicTest
  accuracy. A device that never says "disgust" is broken for that class, whatever its accuracy.
- ``prior``: ``-tau * log(prior)`` (Menon et al. 2021), ``prior`` the training split's class frequencies, with the
  tau of the grid with the best PublicTest macro F1.

Either is worth shipping when it costs at most ``--max-accuracy-cost`` points of PublicTest accuracy and gains what
it is for (the floor met where it was not, or ``--min-f1-gain`` of macro F1). The new model and its card
(``training.logit_adjustment``) go to ``--out``; convert them with ``convert/quantize.py --model OUT``. Prints one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from edge_app.dataset import TRAIN, VALIDATION, DataError  # noqa: E402
from edge_app.model_card import ModelCard, float_model_inputs  # noqa: E402
from train.evaluate import load_model_and_card, metrics  # noqa: E402
from train.landmark_cache import DEFAULT_CACHE_DIR, load_with_features, training_card_path  # noqa: E402

log = logging.getLogger("logit_adjust")
LOGITS_LAYER = "logits"
TAU_GRID = np.round(np.arange(0.0, 2.0001, 0.05), 2)
OFFSET_GRID = np.round(np.arange(-1.5, 1.5001, 0.05), 2)
OFFSET_SWEEPS = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "models" / "fer_fusion.keras"),
                   help="Keras model ending in softmax(Dense 'logits'); its card <stem>.card.json beside it")
    p.add_argument("--out", required=True, help="the adjusted Keras model (its card is written beside it)")
    p.add_argument("--data", default=os.environ.get("FER2013_PATH", str(ROOT.parent / "shared" / "data"
                                                                        / "fer2013.npz")))
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR), help="landmark cache (train/landmark_cache.py)")
    p.add_argument("--rule", choices=("recall-floor", "prior"), default="recall-floor",
                   help="per-class offsets for a recall floor, or tau * log(prior) for macro F1")
    p.add_argument("--min-recall", type=float, default=0.45, help="the recall-floor rule's floor for every class")
    p.add_argument("--max-accuracy-cost", type=float, default=1.0,
                   help="points of PublicTest accuracy a tau may cost and still be chosen")
    p.add_argument("--min-f1-gain", type=float, default=0.01,
                   help="PublicTest macro F1 gain that makes the adjusted model worth shipping")
    p.add_argument("--tau", type=float, default=None, help="prior rule: use this tau instead of choosing one")
    return p.parse_args(argv)


def class_prior(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Class frequencies of ``labels`` (every class at least one count, so the log is finite)."""
    counts = np.maximum(np.bincount(labels, minlength=num_classes), 1)
    return counts / counts.sum()


def log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """The logits up to a per-row constant (log-softmax), which is all an offset's argmax needs."""
    return np.log(np.maximum(probabilities, 1e-12))


def adjusted_predictions(probabilities: np.ndarray, prior: np.ndarray, tau: float) -> np.ndarray:
    """The class of each row after the prior correction."""
    return (log_probabilities(probabilities) - tau * np.log(prior)).argmax(1)


def choose_tau(labels: np.ndarray, probabilities: np.ndarray, prior: np.ndarray, classes: list[str],
               max_accuracy_cost: float) -> tuple[float, list[dict]]:
    """The grid's tau with the best macro F1 among those within ``max_accuracy_cost`` points of tau = 0, and the
    whole curve (tau, accuracy, macro F1) it was chosen from."""
    curve = []
    for tau in TAU_GRID:
        m = metrics(labels, np.eye(len(classes))[adjusted_predictions(probabilities, prior, tau)], classes)
        curve.append({"tau": float(tau), "accuracy": m["accuracy"], "macro_f1": m["macro"]["f1"]})
    floor = curve[0]["accuracy"] - max_accuracy_cost / 100
    allowed = [c for c in curve if c["accuracy"] >= floor - 1e-9]
    return max(allowed, key=lambda c: (c["macro_f1"], -c["tau"]))["tau"], curve


def class_recall(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Recall of each class (0 for a class without faces)."""
    hits = np.bincount(labels[predictions == labels], minlength=num_classes)
    return hits / np.maximum(np.bincount(labels, minlength=num_classes), 1)


def choose_offsets(labels: np.ndarray, probabilities: np.ndarray, min_recall: float) -> np.ndarray:
    """Per-class logit offsets (mean zero) that bring every class's recall to ``min_recall`` with the best accuracy.

    Coordinate ascent: each sweep sets each class's offset in turn to the grid value with the smallest total recall
    shortfall below the floor, then the best accuracy, then the smallest offset. Deterministic.
    """
    logits = log_probabilities(probabilities)
    num_classes = probabilities.shape[1]

    def score(offsets: np.ndarray) -> tuple[float, float]:
        predictions = (logits + offsets).argmax(1)
        shortfall = np.maximum(0.0, min_recall - class_recall(labels, predictions, num_classes)).sum()
        return -round(float(shortfall), 9), float(np.mean(predictions == labels))

    offsets = np.zeros(num_classes)
    for _ in range(OFFSET_SWEEPS):
        for c in range(num_classes):
            def candidate(value: float, c: int = c) -> np.ndarray:
                return np.concatenate([offsets[:c], [value], offsets[c + 1:]])
            offsets[c] = max(OFFSET_GRID, key=lambda value: (*score(candidate(value)), -abs(value)))
    return offsets - offsets.mean()


def summary(labels: np.ndarray, predictions: np.ndarray, classes: list[str]) -> dict:
    m = metrics(labels, np.eye(len(classes))[predictions], classes)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro"]["f1"],
            "recall": {name: c["recall"] for name, c in m["per_class"].items()}}


def write_adjusted(model, card: ModelCard, shift: np.ndarray, out: Path, record: dict) -> None:
    """The model with ``shift`` added to its final Dense bias, and its card (no files: quantize.py adds them)."""
    layer = model.get_layer(LOGITS_LAYER)
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel, (bias + shift).astype(bias.dtype)])
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    adjusted = ModelCard.model_validate({**card.model_dump(), "files": {}})
    adjusted.training = {**card.training, "logit_adjustment": record}
    adjusted.write(training_card_path(out))


def described(record: dict) -> str:
    """A logit-adjustment record in a few words, for the message that refuses to adjust twice."""
    if "tau" in record:
        return f"tau {record['tau']}"
    return f"offsets for a recall floor of {record.get('min_recall')}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.tau is not None and args.rule != "prior":
        raise SystemExit("--tau: only the prior rule takes a tau (add --rule prior)")
    model, card = load_model_and_card(Path(args.model))
    if "logit_adjustment" in card.training:
        raise SystemExit(f"--model: {args.model} is already logit-adjusted "
                         f"({described(card.training['logit_adjustment'])}): adjust the unadjusted model")
    try:
        model.get_layer(LOGITS_LAYER)
    except ValueError:
        raise SystemExit(f"--model: {args.model} has no Dense layer {LOGITS_LAYER!r} before its softmax") from None
    try:
        data, features = load_with_features(args.data, Path(args.cache_dir), card)
    except DataError as exc:
        raise SystemExit(str(exc)) from exc
    classes = card.classes
    prior = class_prior(data.labels[data.splits == TRAIN], len(classes))
    rows = np.flatnonzero(data.splits == VALIDATION)
    if len(rows) == 0:
        raise SystemExit(f"{args.data}: no validation (PublicTest) faces to choose the offsets on")
    labels = data.labels[rows]
    probabilities = model.predict(float_model_inputs(data.images[rows], features[rows]), batch_size=512, verbose=0)
    before = summary(labels, probabilities.argmax(1), classes)
    if args.rule == "prior":
        chosen, curve = choose_tau(labels, probabilities, prior, classes, args.max_accuracy_cost)
        tau = chosen if args.tau is None else args.tau
        shift = -tau * np.log(prior)
        rule = {"tau": tau, "rule": f"prior: best macro F1 within {args.max_accuracy_cost} points of accuracy; "
                f"ship when macro F1 gains >= {args.min_f1_gain}"}
        chosen_by = {"tau": tau, "chosen_tau": chosen, "curve": curve}
    else:
        shift = choose_offsets(labels, probabilities, args.min_recall)
        rule = {"min_recall": args.min_recall,
                "offsets": {name: round(float(v), 4) for name, v in zip(classes, shift)},
                "rule": f"recall-floor: every class's recall >= {args.min_recall} (or as near as the grid gets), "
                        f"then the best accuracy; ship when it costs <= {args.max_accuracy_cost} points of accuracy "
                        "and brings a class up to the floor"}
        chosen_by = {"offsets": rule["offsets"]}
    after = summary(labels, (log_probabilities(probabilities) + shift).argmax(1), classes)
    gain = round(after["macro_f1"] - before["macro_f1"], 4)
    cost = round(100 * (before["accuracy"] - after["accuracy"]), 2)
    gains = (gain >= args.min_f1_gain if args.rule == "prior"
             else min(after["recall"].values()) >= args.min_recall > min(before["recall"].values()))
    record = {**rule, "prior": {name: round(float(p), 5) for name, p in zip(classes, prior)},
              "chosen_on": "validation (PublicTest)", "source": Path(args.model).name,
              "validation_before": before, "validation_after": after}
    write_adjusted(model, card, shift, Path(args.out), record)
    print(json.dumps({**chosen_by, "rule": args.rule, "validation_before": before, "validation_after": after,
                      "macro_f1_gain": gain, "accuracy_cost_points": cost,
                      "worth_shipping": gains and cost <= args.max_accuracy_cost, "out": args.out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
