"""Train the fusion model on FER-2013: ``python train/train.py [--flags]``.

Checkpoints every epoch in ``--out`` (``last.keras`` with optimizer state, ``best.keras``
by validation accuracy); ``--resume`` continues from ``last.keras``. The output
``model.keras`` + ``model.card.json`` pair is what ``evaluate.py`` and ``quantize.py`` take.
``--init-from MODEL --teacher MODEL [MODEL ...]`` fine-tunes a trained model on targets mixed with a
teacher's flip-averaged predictions (self-distillation, an optional second stage);
``--average-with-init`` then saves the mean of its best weights and the first stage's.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from edge_app.config import ConfigError, load_config  # noqa: E402
from edge_app.dataset import FaceDataset, load_dataset  # noqa: E402
from edge_app.emotions import fer_label_map, resolve_classes  # noqa: E402
from edge_app.model_card import FACE_INPUT, LANDMARK_INPUT, float_model_inputs, load_card  # noqa: E402
from edge_app.pipeline.mediapipe_assets import sha256_file  # noqa: E402
from edge_app.pipeline.preprocess import CROP_SIZE, LANDMARK_FEATURES  # noqa: E402
from train.augment import augment_batch, mixup  # noqa: E402
from train.evaluate import load_model_and_card, plain_and_flip_averaged  # noqa: E402
from train.landmark_cache import (  # noqa: E402
    features_from_landmarks,
    fit_crop_spec,
    load_or_compute,
    training_card_path,
)
from train.model import BRANCHES, build_model  # noqa: E402

log = logging.getLogger("train")
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fer2013.npz"
CLASS_BALANCE = ("none", "weights", "sqrt_weights", "sampling")
BALANCE_POWER = {"weights": 1.0, "sqrt_weights": 0.5}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags; their defaults come from the ``train:`` section of config.yaml (``--config``, ``--set``)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    pre.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    known, _ = pre.parse_known_args(argv)
    try:
        settings = load_config(known.config, known.set).train
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], parents=[pre], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--data", default=settings.data or os.environ.get("FER2013_PATH", str(DEFAULT_DATA)))
    p.add_argument("--out", default=str(ROOT / "runs" / "fusion"))
    p.add_argument("--branch", choices=BRANCHES, default="fusion")
    p.add_argument("--classes", nargs="*", default=settings.classes, help="class subset, e.g. happy sad neutral")
    p.add_argument("--epochs", type=int, default=settings.epochs)
    p.add_argument("--batch-size", type=int, default=settings.batch_size)
    p.add_argument("--lr", type=float, default=settings.lr)
    p.add_argument("--weight-decay", type=float, default=settings.weight_decay)
    p.add_argument("--warmup-epochs", type=float, default=settings.warmup_epochs)
    p.add_argument("--label-smoothing", type=float, default=settings.label_smoothing)
    p.add_argument("--labels", choices=("fer", "ferplus"), default=settings.labels)
    p.add_argument("--ferplus-weight", type=float, default=settings.ferplus_weight,
                   help="with --labels ferplus: share of the FER+ vote distribution, the rest the FER label")
    p.add_argument("--class-balance", choices=CLASS_BALANCE, default=settings.class_balance)
    p.add_argument("--camera-augment", action=argparse.BooleanOptionalAction, default=settings.camera_augment,
                   help="also gamma, blur, down-up-scaling, noise and JPEG artefacts (train.augment.camera_augment)")
    p.add_argument("--mixup-alpha", type=float, default=settings.mixup_alpha,
                   help="mixup with a Beta(alpha, alpha) share; 0: off")
    p.add_argument("--landmark-noise", type=float, default=settings.landmark_noise,
                   help="Gaussian jitter of the landmark features, in inter-ocular distances; 0: off")
    p.add_argument("--widths", type=int, nargs="+", default=settings.widths)
    p.add_argument("--dropout", type=float, default=settings.dropout)
    p.add_argument("--patience", type=int, default=settings.patience)
    p.add_argument("--init-from", default=settings.init_from, metavar="MODEL",
                   help="start from this trained Keras model's weights (its card beside it) instead of new ones")
    p.add_argument("--teacher", nargs="+", metavar="MODEL",
                   default=[settings.teacher] if isinstance(settings.teacher, str) else settings.teacher,
                   help="distil: mix the targets with these trained models' flip-averaged predictions, averaged")
    p.add_argument("--distill-weight", type=float, default=settings.distill_weight,
                   help="share of the teacher's predictions in the targets (with --teacher)")
    p.add_argument("--average-with-init", action=argparse.BooleanOptionalAction, default=settings.average_with_init,
                   help="save the mean of the best epoch's weights and the --init-from model's (a weight soup)")
    p.add_argument("--subset", type=int, default=0, help="use only this many training images (quick runs)")
    p.add_argument("--seed", type=int, default=settings.seed)
    p.add_argument("--cache-dir", default=str(ROOT / "cache"))
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    if args.average_with_init and not args.init_from:
        p.error("--average-with-init needs --init-from (the model whose weights are averaged in)")
    if args.ferplus_weight != 1.0 and args.labels != "ferplus":
        p.error("--ferplus-weight needs --labels ferplus (it is the FER+ votes' share of the targets)")
    return args


def targets(dataset: FaceDataset, classes: tuple[str, ...], labels: str, ferplus_weight: float = 1.0) -> np.ndarray:
    """One-hot FER labels, or with ``ferplus`` the mix ``(1 - w) * label + w * FER+ votes`` where there are votes.

    The ten annotators' votes say which faces are ambiguous; keeping part of the FER label keeps the
    classes FER+ annotators rarely chose (disgust) from fading out of the targets.
    """
    onehot = np.eye(len(classes), dtype=np.float32)[dataset.labels]
    if labels == "ferplus":
        dist = dataset.ferplus_distribution(classes)
        if dist is None:
            raise SystemExit("--labels ferplus: this data has no FER+ votes")
        has_votes = dist.sum(1) > 0
        onehot[has_votes] = (1.0 - ferplus_weight) * onehot[has_votes] + ferplus_weight * dist[has_votes]
    return onehot


def trained_model(flag: str, path: Path, classes: tuple[str, ...]) -> keras.Model:
    """The trained Keras model that ``flag`` names; SystemExit when it cannot be used or has other classes."""
    model, card = load_model_and_card(path)
    if tuple(card.classes) != classes:
        raise SystemExit(f"{flag} {path}: its classes {card.classes} are not {list(classes)}")
    return model


def distillation_targets(
    teacher_paths: list[Path], faces: np.ndarray, features: np.ndarray, targets: np.ndarray,
    classes: tuple[str, ...], weight: float,
) -> np.ndarray:
    """``targets`` mixed with the teachers' mean flip-averaged probabilities on the un-augmented training faces.

    The soft targets carry what the teachers learned about which expressions look alike, and their test-time
    augmentation, so a student of the same size learns in one pass what the teacher needs two passes for; several
    teachers (other seeds or recipes) make an ensemble teacher, the usual lever for small models.
    """
    soft = np.zeros_like(targets)
    for path in teacher_paths:
        teacher = trained_model("--teacher", path, classes)
        log.info("distilling from %s (weight %.2f, one of %d teachers)", path, weight, len(teacher_paths))
        soft += plain_and_flip_averaged(teacher, faces, features)[1] / len(teacher_paths)
    return ((1.0 - weight) * targets + weight * soft).astype(np.float32)


def initial_model(args: argparse.Namespace, classes: tuple[str, ...]) -> keras.Model:
    """A new model, or the ``--init-from`` model (the first stage of a two-stage recipe)."""
    if not args.init_from:
        return build_model(len(classes), branch=args.branch, widths=tuple(args.widths), dropout=args.dropout)
    return trained_model("--init-from", Path(args.init_from), classes)


def first_stage(path: Path) -> dict:
    """The card's record of the ``--init-from`` model: file, sha256 and its own training time."""
    training = load_card(training_card_path(path)).training
    # A card written before train.py added up resumed sittings has only the one sitting it knew of.
    seconds = training.get("train_seconds", training.get("train_seconds_this_run"))
    return {"file": path.name, "sha256": sha256_file(path), "train_seconds": seconds}


def averaged_with(model: keras.Model, other: keras.Model) -> keras.Model:
    """``model`` with every weight (batch-norm statistics too) the mean of its own and ``other``'s.

    Both lie in one basin when one was fine-tuned from the other, so their mean is a model of its own
    that is usually better than either (a "weight soup"), for no cost on the device.
    """
    model.set_weights([(a + b) / 2 for a, b in zip(model.get_weights(), other.get_weights(), strict=True)])
    return model


def train_dataset(inputs: dict[str, np.ndarray], y: np.ndarray, args: argparse.Namespace) -> tf.data.Dataset:
    def augment(x: dict[str, tf.Tensor], t: tf.Tensor) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        face, lm = augment_batch(x[FACE_INPUT], x[LANDMARK_INPUT], camera=args.camera_augment,
                                 landmark_noise=args.landmark_noise)
        if args.mixup_alpha > 0:
            face, lm, t = mixup(face, lm, t, args.mixup_alpha)
        return {FACE_INPUT: face, LANDMARK_INPUT: lm}, t

    if args.class_balance == "sampling":
        labels = y.argmax(1)
        per_class = [
            tf.data.Dataset.from_tensor_slices(({k: v[labels == c] for k, v in inputs.items()}, y[labels == c]))
            .shuffle(4096, seed=args.seed + c).repeat()
            for c in range(y.shape[1]) if (labels == c).any()
        ]
        ds = tf.data.Dataset.sample_from_datasets(per_class, seed=args.seed)
    else:
        ds = tf.data.Dataset.from_tensor_slices((inputs, y)).shuffle(len(y), seed=args.seed).repeat()
    return ds.batch(args.batch_size, drop_remainder=True).map(augment, num_parallel_calls=2).prefetch(2)


def class_weights(y: np.ndarray, power: float = 1.0) -> dict[int, float]:
    """Loss weights proportional to ``frequency ** -power`` (1: inverse, 0.5: inverse square root), mean 1 per face.

    The full inverse weights cost accuracy (61.3% against 65.9% on PublicTest); the square root
    moves part of the way towards the rare classes.
    """
    counts = np.maximum(y.sum(0), 1.0)
    scale = len(y) / float(np.sum(counts ** (1.0 - power)))
    return {i: float(scale * c**-power) for i, c in enumerate(counts)}


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """Early stopping on validation accuracy that continues a resumed run's best value and patience count.

    Keras resets both when ``fit`` starts, so without this a resumed sitting would wait ``patience``
    epochs afresh and compare against no best at all.
    """

    def __init__(self, patience: int, best: float | None, wait: int):
        super().__init__(monitor="val_accuracy", mode="max", patience=patience)
        self.resumed = (best, wait)

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)
        self.best, self.wait = self.resumed


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` to a temporary file beside ``path``, then rename it over ``path``: a run killed part-way
    (a session that ends) leaves the previous complete file, never a cut-short one."""
    partial = path.with_name(f"{path.stem}.partial{path.suffix}")
    write(partial)
    os.replace(partial, path)


class EpochState(keras.callbacks.Callback):
    """After each epoch: ``last.keras`` (with the optimizer state), ``best.keras`` when the epoch is the best so
    far on validation accuracy, and ``state.json`` (epoch, training seconds, best value, epochs since it).

    ``--resume`` continues all of them, so the card's ``train_seconds`` is the whole recipe's time even when
    it ran in several sittings (None when an earlier sitting did not record it), ``best.keras`` is only
    replaced by a better epoch, and patience counts the epochs since the best of every sitting. Every file is
    replaced atomically, and ``state.json`` last, so it never names an epoch the checkpoints lack.
    """

    def __init__(self, out: Path, seconds_before: float | None, early: ResumableEarlyStopping):
        super().__init__()
        self.out = out
        self.seconds_before = seconds_before
        self.seconds = seconds_before  # at the end of the last epoch
        self.started = time.time()
        self.early = early  # runs before this callback: its best and wait include this epoch

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.seconds_before is not None:
            self.seconds = round(self.seconds_before + time.time() - self.started, 1)
        replace_atomically(self.out / "last.keras", self.model.save)
        if self.early.wait == 0:  # this epoch set a new best
            replace_atomically(self.out / "best.keras", self.model.save)
        state = {"epoch": epoch + 1, "train_seconds": self.seconds, "best_val_accuracy": float(self.early.best),
                 "epochs_since_best": int(self.early.wait)}
        replace_atomically(self.out / "state.json", lambda path: path.write_text(json.dumps(state)))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    keras.utils.set_random_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpu = bool(tf.config.list_physical_devices("GPU"))
    if gpu:
        keras.mixed_precision.set_global_policy("mixed_float16")
    classes = resolve_classes(args.classes)
    full = load_dataset(args.data)
    landmarks = load_or_compute(full, Path(args.cache_dir))
    found_train = landmarks[full.splits == 0]
    crop_spec, crop_fit = fit_crop_spec(found_train)
    features = features_from_landmarks(landmarks)
    data = full.with_classes(classes)
    features = features[fer_label_map(classes)[full.labels] >= 0]
    train_mask, val_mask = data.splits == 0, data.splits == 1
    train_idx = np.flatnonzero(train_mask)
    if args.subset:
        rng = np.random.default_rng(args.seed)
        train_idx = np.sort(rng.choice(train_idx, min(args.subset, len(train_idx)), replace=False))
    train_set, val_set = data.select(np.isin(np.arange(len(data)), train_idx)), data.select(val_mask)
    x_train = float_model_inputs(train_set.images, features[train_idx])
    x_val = float_model_inputs(val_set.images, features[val_mask])
    y_train = targets(train_set, classes, args.labels, args.ferplus_weight)
    if args.teacher:
        y_train = distillation_targets([Path(t) for t in args.teacher], train_set.images, features[train_idx],
                                       y_train, classes, args.distill_weight)
    y_val = np.eye(len(classes), dtype=np.float32)[val_set.labels]
    steps = max(1, len(y_train) // args.batch_size)

    last, best, state = out / "last.keras", out / "best.keras", out / "state.json"
    initial_epoch, seconds_before, best_before, epochs_since_best = 0, 0.0, None, 0
    if args.resume and last.is_file() and state.is_file():
        model = keras.models.load_model(last)
        saved = json.loads(state.read_text())
        initial_epoch, seconds_before = saved["epoch"], saved.get("train_seconds")
        best_before, epochs_since_best = saved.get("best_val_accuracy"), saved.get("epochs_since_best", 0)
        log.info("resuming from %s at epoch %d (best validation accuracy so far %s, %d epoch(s) ago)",
                 last, initial_epoch, best_before, epochs_since_best)
        if seconds_before is None:
            log.warning("%s has no train_seconds: the card's total training time will be unknown", state)
        if best_before is None:
            log.warning("%s has no best_val_accuracy: the first epoch now replaces best.keras", state)
    else:
        model = initial_model(args, classes)
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=args.lr / 100, decay_steps=steps * max(1, args.epochs - int(args.warmup_epochs)),
            warmup_target=args.lr, warmup_steps=int(steps * args.warmup_epochs), alpha=0.01,
        )
        model.compile(
            optimizer=keras.optimizers.AdamW(learning_rate=schedule, weight_decay=args.weight_decay),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=args.label_smoothing),
            metrics=["accuracy"],
        )
    early = ResumableEarlyStopping(args.patience, best_before, epochs_since_best)
    epoch_state = EpochState(out, seconds_before, early)
    callbacks = [
        keras.callbacks.CSVLogger(out / "history.csv", append=initial_epoch > 0),
        early,
        epoch_state,  # after early: it saves by early's verdict on this epoch
    ]
    started = time.time()
    model.fit(
        train_dataset(x_train, y_train, args),
        steps_per_epoch=steps,
        epochs=args.epochs,
        initial_epoch=initial_epoch,
        validation_data=(x_val, y_val),
        class_weight=class_weights(y_train, BALANCE_POWER[args.class_balance]) if args.class_balance in BALANCE_POWER
        else None,
        callbacks=callbacks,
        verbose=1 if sys.stdout.isatty() else 2,
    )
    train_seconds = time.time() - started
    model = keras.models.load_model(best, compile=False)  # weights only: no optimizer state in the shipped file
    if args.average_with_init:
        model = averaged_with(model, trained_model("--init-from", Path(args.init_from), classes))
    val_accuracy = float(np.mean(model.predict(x_val, batch_size=512, verbose=0).argmax(1) == val_set.labels))
    model.save(out / "model.keras")
    card = {
        "name": f"fer_{args.branch}",
        "classes": list(classes),
        "inputs": {
            FACE_INPUT: {
                "shape": [1, CROP_SIZE, CROP_SIZE, 1], "range": [0.0, 1.0], "description": "48x48 grayscale face / 255"
            },
            LANDMARK_INPUT: {
                "shape": [1, LANDMARK_FEATURES], "description": "edge_app.pipeline.preprocess.landmark_features"
            },
        },
        "output": {"name": "probabilities", "shape": [1, len(classes)]},
        "preprocessing": {
            "crop": crop_spec.to_dict(), "crop_fit": crop_fit, "landmark_features": "eye-centred-iod-level-v1"
        },
        "training": {
            "data_sha256": full.fingerprint(),
            "data_source": Path(full.source).name,
            "recipe": {
                k: v for k, v in vars(args).items() if k not in ("data", "out", "cache_dir", "resume", "config", "set")
            },
            "gpu": gpu,
            "train_images": int(len(y_train)),
            "train_seconds_this_run": round(train_seconds, 1),
            "train_seconds": epoch_state.seconds,  # all sittings of a resumed run
            "init_from": first_stage(Path(args.init_from)) if args.init_from else None,
        },
        "metrics": {"validation_accuracy": round(val_accuracy, 4)},
    }
    (out / "model.card.json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps({"validation_accuracy": val_accuracy, "train_seconds": round(train_seconds, 1)}))


if __name__ == "__main__":
    main()
