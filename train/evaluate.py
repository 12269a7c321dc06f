"""Evaluate a trained model on the test split: ``python train/evaluate.py [--flags]``.

Writes under ``--out`` (default ``reports/``): ``evaluation.json`` with every figure, ``evaluation.md``,
``confusion_matrix.png``, ``training_curves.png`` (when the training history is found) and
``gradcam.png`` (a few test faces per class with the CNN branch's Grad-CAM). Figures are given with and
without test-time augmentation (averaging with the mirrored face), and on the test split without the faces
whose pixels also occur in the training split (FER-2013 repeats some images across splits). With
``--compare NAME=MODEL`` (repeatable) it also writes ``ablation.{json,md}``: every model on the same test
faces, beside the seed documents' published figures. When the data carries FER+ votes, the figures are also
given against the FER+ majority label (``ferplus_majority``): the cleaner labels other datasets resemble.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from edge_app.dataset import FERPLUS_COLUMNS, TEST, TRAIN, DataError, FaceDataset  # noqa: E402
from edge_app.model_card import FACE_INPUT, ModelError, float_model_inputs, load_card  # noqa: E402
from edge_app.pipeline.preprocess import landmark_features, mirror_inputs  # noqa: E402
from train.landmark_cache import DEFAULT_CACHE_DIR, load_with_features, recorded_path, training_card_path  # noqa: E402

log = logging.getLogger("evaluate")
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fer2013.npz"
# Published FER-2013 test accuracies quoted by the project's seed documents, for reference in the ablation.
SEED_DOCUMENT_FIGURES = (0.54, 0.604, 0.615, 0.622)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "models" / "fer_fusion.keras"),
                   help="Keras model; its card <stem>.card.json must lie beside it")
    p.add_argument("--data", default=os.environ.get("FER2013_PATH", str(DEFAULT_DATA)))
    p.add_argument("--out", default=str(ROOT / "reports"))
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR))
    p.add_argument("--history", default=None,
                   help="training history CSV (default: <stem>.history.csv or history.csv beside the model)")
    p.add_argument("--gradcam-per-class", type=int, default=4, help="faces per class in gradcam.png (0: none)")
    p.add_argument("--compare", action="append", default=[], metavar="NAME=MODEL",
                   help="another Keras model for the ablation table (repeatable)")
    p.add_argument("--limit", type=int, default=0, help="use only the first N test faces (quick runs)")
    return p.parse_args(argv)


def predict(model, faces: np.ndarray, features: np.ndarray) -> dict[str, np.ndarray]:
    """Probabilities as they are (``plain``), averaged with the mirrored face and landmarks (``tta``), and with
    every face given the "no landmarks" input (``no_landmarks``: what the device does when Face Mesh finds none)."""
    plain, tta = plain_and_flip_averaged(model, faces, features)
    no_landmarks = np.broadcast_to(landmark_features(None), features.shape)
    without = model.predict(float_model_inputs(faces, no_landmarks), batch_size=512, verbose=0)
    return {"plain": plain, "tta": tta, "no_landmarks": without}


def plain_and_flip_averaged(model, faces: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The model's probabilities, and the same averaged with the mirrored face and landmarks (flip TTA).
    Evaluation reports both; distillation (``train.py --teacher``) learns from the averaged ones."""
    plain = model.predict(float_model_inputs(faces, features), batch_size=512, verbose=0)
    mirrored = model.predict(float_model_inputs(*mirror_inputs(faces, features)), batch_size=512, verbose=0)
    return plain, (plain + mirrored) / 2


def leaked_rows(data: FaceDataset, rows: np.ndarray) -> np.ndarray:
    """Which of ``rows`` hold a face whose exact pixels also occur in the training split."""
    train_pixels = {data.images[i].tobytes() for i in np.flatnonzero(data.splits == TRAIN)}
    return np.array([data.images[i].tobytes() in train_pixels for i in rows], dtype=bool)


def metrics(labels: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, macro and weighted precision/recall/F1, per-class report and confusion matrix."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    predictions = probabilities.argmax(1)
    label_ids = list(range(len(classes)))
    report: dict = {"n": int(len(labels)), "accuracy": round(float(np.mean(predictions == labels)), 4)}
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(labels, predictions, labels=label_ids, average=average,
                                                     zero_division=0)
        report[average] = {"precision": round(float(p), 4), "recall": round(float(r), 4), "f1": round(float(f), 4)}
    p, r, f, support = precision_recall_fscore_support(labels, predictions, labels=label_ids, zero_division=0)
    report["per_class"] = {
        name: {"precision": round(float(p[i]), 4), "recall": round(float(r[i]), 4), "f1": round(float(f[i]), 4),
               "support": int(support[i])}
        for i, name in enumerate(classes)
    }
    report["confusion_matrix"] = confusion_matrix(labels, predictions, labels=label_ids).tolist()
    return report


def evaluate(model, data: FaceDataset, features: np.ndarray, rows: np.ndarray, leaked: np.ndarray,
             classes: list[str]) -> tuple[dict, dict[str, np.ndarray]]:
    """Every figure of one model on ``rows``: plain and with TTA, on all rows and without the leaked ones."""
    faces, feats, labels = data.images[rows], features[rows], data.labels[rows]
    probabilities = predict(model, faces, feats)
    result = {}
    for mode, probs in probabilities.items():
        result[mode] = metrics(labels, probs, classes)
        result[mode]["accuracy_without_train_duplicates"] = round(
            float(np.mean(probs[~leaked].argmax(1) == labels[~leaked])), 4)
    return result, probabilities


def ferplus_majority(data: FaceDataset, rows: np.ndarray, classes: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """Each row's FER+ majority label (index into ``classes``) and whether it has one; None without FER+ votes.

    A face has a majority label when one of ``classes`` got more than half of its annotators' votes (the
    contempt, unknown and not-a-face votes count in the total), the FER+ authors' majority rule.
    """
    if data.ferplus_votes is None:
        return None
    votes = data.ferplus_votes[rows].astype(np.int64)
    chosen = votes[:, [FERPLUS_COLUMNS[c] for c in classes]]
    return chosen.argmax(1), chosen.max(1) * 2 > votes.sum(1)


def ferplus_figures(data: FaceDataset, rows: np.ndarray, probabilities: dict[str, np.ndarray],
                    classes: list[str]) -> dict | None:
    """Plain and TTA figures against the FER+ majority labels of ``rows`` (those that have one)."""
    majority = ferplus_majority(data, rows, classes)
    if majority is None:
        return None
    labels, has = majority
    return {
        "rule": "a class with more than half of the FER+ annotators' votes; faces without one are left out",
        "n": int(has.sum()),
        "fer_label_agreement": round(float(np.mean(data.labels[rows][has] == labels[has])), 4),
        **{mode: metrics(labels[has], probabilities[mode][has], classes) for mode in ("plain", "tta")},
    }


def plot_confusion(matrix: list[list[int]], classes: list[str], path: Path, title: str) -> None:
    """Row-normalised confusion matrix (recall per true class) with the counts in each cell."""
    import matplotlib.pyplot as plt

    counts = np.asarray(matrix)
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{rates[i, j]:.2f}\n{counts[i, j]}", ha="center", va="center", fontsize=8,
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def find_history(model_path: Path, given: str | None) -> Path | None:
    """The Keras CSVLogger history of the model's training run, when it can be found."""
    candidates = [Path(given)] if given else [model_path.with_name(model_path.stem + ".history.csv"),
                                              model_path.with_name("history.csv")]
    return next((c for c in candidates if c.is_file()), None)


def plot_history(history: Path, path: Path) -> dict[str, float]:
    """Loss and accuracy per epoch for training and validation; returns the best validation epoch's figures."""
    import matplotlib.pyplot as plt

    with history.open() as f:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    if not rows or "val_accuracy" not in rows[0]:
        raise ValueError(f"{history}: no val_accuracy column (not a Keras CSVLogger file)")
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, [r[metric] for r in rows], label="training (augmented)")
        ax.plot(epochs, [r[f"val_{metric}"] for r in rows], label="validation (PublicTest)")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    best = max(rows, key=lambda r: r["val_accuracy"])
    return {"epochs": len(rows), "best_epoch": int(best["epoch"]) + 1,
            "best_validation_accuracy": round(best["val_accuracy"], 4)}


def gradcam_grid(model, data: FaceDataset, features: np.ndarray, rows: np.ndarray, probabilities: np.ndarray,
                 classes: list[str], per_class: int, path: Path) -> int:
    """A grid of test faces (the first ``per_class`` of each class) with the Grad-CAM of the predicted class."""
    import matplotlib.pyplot as plt

    from edge_app.commands.gradcam import GradCam

    gradcam = GradCam(model)
    picked = [r for c in range(len(classes)) for r in np.flatnonzero(data.labels[rows] == c)[:per_class]]
    fig, axes = plt.subplots(len(classes), per_class, figsize=(1.6 * per_class, 1.8 * len(classes)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, i in enumerate(picked):
        row = rows[i]
        face = data.images[row]
        predicted = int(probabilities[i].argmax())
        heat = gradcam(face, features[row], predicted)
        ax = axes[data.labels[row], k % per_class]
        ax.imshow(face, cmap="gray")
        ax.imshow(heat, cmap="jet", alpha=0.4, extent=(-0.5, face.shape[1] - 0.5, face.shape[0] - 0.5, -0.5))
        ax.set_title(f"{classes[data.labels[row]]}\n-> {classes[predicted]} {probabilities[i, predicted]:.2f}",
                     fontsize=7, color="green" if predicted == data.labels[row] else "red")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return len(picked)


def percent(value: float) -> str:
    return f"{100 * value:.2f}%"


def markdown(report: dict) -> str:
    plain, tta = report["results"]["plain"], report["results"]["tta"]
    lines = [
        f"# Evaluation: {report['model']} on the test split (PrivateTest, n = {plain['n']})",
        "",
        "| figure | plain | flip TTA |",
        "| --- | ---: | ---: |",
        f"| accuracy | {percent(plain['accuracy'])} | {percent(tta['accuracy'])} |",
        f"| accuracy without the {report['train_duplicates']} faces also in the training split "
        f"(n = {plain['n'] - report['train_duplicates']}) | {percent(plain['accuracy_without_train_duplicates'])} | "
        f"{percent(tta['accuracy_without_train_duplicates'])} |",
        f"| accuracy with every face given the \"no landmarks\" input | "
        f"{percent(report['results']['no_landmarks']['accuracy'])} | |",
    ]
    for average in ("macro", "weighted"):
        for metric in ("precision", "recall", "f1"):
            lines.append(f"| {average} {metric} | {plain[average][metric]:.4f} | {tta[average][metric]:.4f} |")
    ferplus = report.get("ferplus_majority")
    if ferplus:
        lines += [f"| accuracy against the FER+ majority label (n = {ferplus['n']}; the FER label agrees on "
                  f"{percent(ferplus['fer_label_agreement'])}) | {percent(ferplus['plain']['accuracy'])} | "
                  f"{percent(ferplus['tta']['accuracy'])} |",
                  f"| macro F1 against the FER+ majority label | {ferplus['plain']['macro']['f1']:.4f} | "
                  f"{ferplus['tta']['macro']['f1']:.4f} |"]
    header = "| class | precision | recall | F1 | support |"
    lines += ["", header + (" recall (FER+ majority) | support (FER+) |" if ferplus else ""),
              "| --- | ---: | ---: | ---: | ---: |" + (" ---: | ---: |" if ferplus else "")]
    for name, m in plain["per_class"].items():
        row = f"| {name} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |"
        if ferplus:
            other = ferplus["plain"]["per_class"][name]
            row += f" {other['recall']:.4f} | {other['support']} |"
        lines.append(row)
    if report.get("training"):
        t = report["training"]
        lines += ["", f"Training: {t['epochs']} epochs, best validation (PublicTest) accuracy "
                      f"{percent(t['best_validation_accuracy'])} at epoch {t['best_epoch']}."]
    if report.get("logit_adjustment"):
        adjustment = report["logit_adjustment"]
        shift = (", ".join(f"{name} {value:+.2f}" for name, value in adjustment["offsets"].items())
                 if "offsets" in adjustment else f"tau {adjustment['tau']} x log(prior)")
        lines += ["", f"Logit adjustment in the final bias (`convert/logit_adjust.py`, {adjustment['rule']}): {shift}."]
    lines += ["", "Figures: " + ", ".join(f"`{name}`" for name in report["files"]), ""]
    return "\n".join(lines)


def ablation_markdown(rows: list[dict]) -> str:
    lines = ["# Ablation on the test split (PrivateTest)", "",
             "| model | branch | class balance | training faces x epochs | accuracy | flip TTA | "
             "without train duplicates | macro F1 |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if "reference" in r:
            lines.append(f"| {r['name']} (published, for reference) | | | | {percent(r['reference'])} | | | |")
        else:
            lines.append(f"| {r['name']} | {r['branch']} | {r['class_balance']} | {r['train_images']} x {r['epochs']} "
                         f"| {percent(r['accuracy'])} | {percent(r['tta_accuracy'])} "
                         f"| {percent(r['accuracy_without_train_duplicates'])} | {r['macro_f1']:.4f} |")
    return "\n".join(lines) + "\n"


def load_model_and_card(path: Path):
    """The Keras model and its card; SystemExit naming the file when either cannot be used."""
    import keras

    card_path = training_card_path(path)
    if not path.is_file():
        raise SystemExit(f"{path}: no such model file (train one with train/train.py)")
    try:
        card = load_card(card_path)
    except ModelError as exc:
        raise SystemExit(f"{path}: {exc}") from exc
    try:
        model = keras.models.load_model(path, compile=False)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{path}: cannot load as a Keras model ({exc})") from exc
    return model, card


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    model_path, out = Path(args.model), Path(args.out)
    model, card = load_model_and_card(model_path)
    try:
        data, features = load_with_features(args.data, Path(args.cache_dir), card)
    except DataError as exc:
        raise SystemExit(str(exc)) from exc
    rows = np.flatnonzero(data.splits == TEST)[: args.limit or None]
    if len(rows) == 0:
        raise SystemExit(f"{args.data}: no test (PrivateTest) faces of classes {card.classes}")
    leaked = leaked_rows(data, rows)
    out.mkdir(parents=True, exist_ok=True)
    log.info("evaluating %s on %d test faces (%d also in the training split)", model_path, len(rows), leaked.sum())
    results, probabilities = evaluate(model, data, features, rows, leaked, card.classes)
    report = {
        "model": card.name, "source": recorded_path(model_path), "data": Path(args.data).name, "split": "test",
        "classes": card.classes, "recipe": card.training.get("recipe", {}),
        "train_duplicates": int(leaked.sum()), "results": results, "files": ["evaluation.json", "evaluation.md"],
    }
    if "logit_adjustment" in card.training:  # convert/logit_adjust.py: what the final bias carries
        adjustment = card.training["logit_adjustment"]
        report["logit_adjustment"] = {k: adjustment[k] for k in ("rule", "min_recall", "offsets", "tau")
                                      if k in adjustment}
    ferplus = ferplus_figures(data, rows, probabilities, card.classes)
    if ferplus is not None:
        report["ferplus_majority"] = ferplus
    else:
        log.warning("%s has no FER+ votes: no FER+ majority-label figures", args.data)
    plot_confusion(results["plain"]["confusion_matrix"], card.classes, out / "confusion_matrix.png",
                   f"{card.name}: test accuracy {percent(results['plain']['accuracy'])}")
    report["files"].append("confusion_matrix.png")
    history = find_history(model_path, args.history)
    if history is not None:
        report["training"] = plot_history(history, out / "training_curves.png")
        report["files"].append("training_curves.png")
    else:
        log.warning("no training history beside %s: training_curves.png not written (use --history)", model_path)
    if args.gradcam_per_class > 0 and FACE_INPUT in card.inputs and card.training.get("recipe", {}).get(
            "branch", "fusion") != "landmarks":
        gradcam_grid(model, data, features, rows, probabilities["plain"], card.classes, args.gradcam_per_class,
                     out / "gradcam.png")
        report["files"].append("gradcam.png")
    if args.compare:
        rows_table = [ablation_row(model_path.stem, card, results)]
        for spec in args.compare:
            name, _, path = spec.partition("=")
            if not path:
                raise SystemExit(f"--compare {spec!r}: expected NAME=MODEL")
            other, other_card = load_model_and_card(Path(path))
            if other_card.classes != card.classes:
                raise SystemExit(f"--compare {name}: classes {other_card.classes} differ from {card.classes}")
            other_results, _ = evaluate(other, data, features, rows, leaked, card.classes)
            rows_table.append(ablation_row(name, other_card, other_results))
        rows_table += [{"name": "seed documents", "reference": v} for v in SEED_DOCUMENT_FIGURES]
        (out / "ablation.json").write_text(json.dumps(rows_table, indent=2) + "\n")
        (out / "ablation.md").write_text(ablation_markdown(rows_table))
        report["files"] += ["ablation.json", "ablation.md"]
    (out / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "evaluation.md").write_text(markdown(report))
    print(json.dumps({**ablation_row(model_path.stem, card, results), "n": len(rows), "out": str(out)}))
    return 0


def ablation_row(name: str, card, results: dict) -> dict:
    recipe = card.training.get("recipe", {})
    return {
        "name": name, "branch": recipe.get("branch", "fusion"), "class_balance": recipe.get("class_balance", "none"),
        "train_images": card.training.get("train_images"), "epochs": recipe.get("epochs"),
        "accuracy": results["plain"]["accuracy"], "tta_accuracy": results["tta"]["accuracy"],
        "accuracy_without_train_duplicates": results["plain"]["accuracy_without_train_duplicates"],
        "macro_f1": results["plain"]["macro"]["f1"],
    }


if __name__ == "__main__":
    sys.exit(main())
