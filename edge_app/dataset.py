"""FER-2013 loaders: the project's npz, Kaggle's fer2013.csv, or an image-folder copy.

All three become one in-memory ``FaceDataset`` with FER-2013 label coding (0-6, see
``edge_app.emotions.EMOTIONS``) and splits train (Training), validation (PublicTest)
and test (PrivateTest).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_app.emotions import EMOTIONS, fer_label_map
from edge_app.pipeline.capture import ImageError, read_image

log = logging.getLogger(__name__)

TRAIN, VALIDATION, TEST = 0, 1, 2
SPLIT_NAMES = {"train": TRAIN, "validation": VALIDATION, "test": TEST}
# FER+ vote columns that map onto the FER-2013 classes (contempt, unknown and NF are dropped).
FERPLUS_COLUMNS = {"neutral": 0, "happy": 1, "surprise": 2, "sad": 3, "angry": 4, "disgust": 5, "fear": 6}


# Kaggle's Usage column and the image-folder copy's split folder names (lower case).
CSV_USAGES = {"training": TRAIN, "publictest": VALIDATION, "privatetest": TEST}
SPLIT_FOLDERS = {"train": TRAIN, "training": TRAIN, "val": VALIDATION, "validation": VALIDATION,
                 "publictest": VALIDATION, "test": TEST, "privatetest": TEST}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
FACE_SIDE = 48
HOLDOUT_FRACTION, HOLDOUT_SEED = 0.1, 0
MAX_LOGGED_PROBLEMS = 20
FERPLUS_FILE = "fer2013new.csv"
FERPLUS_VOTE_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                        "unknown", "NF")


class DataError(ValueError):
    """A data file that cannot be used at all."""


@dataclass
class FaceDataset:
    images: np.ndarray  # (N, 48, 48) uint8
    labels: np.ndarray  # (N,) int64, FER-2013 coding
    splits: np.ndarray  # (N,) uint8: TRAIN, VALIDATION, TEST
    ferplus_votes: np.ndarray | None = None  # (N, 10) uint8, columns as in fer2013new.csv
    source: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def split(self, name: str) -> FaceDataset:
        return self.select(self.splits == SPLIT_NAMES[name])

    def select(self, mask: np.ndarray) -> FaceDataset:
        votes = None if self.ferplus_votes is None else self.ferplus_votes[mask]
        return FaceDataset(self.images[mask], self.labels[mask], self.splits[mask], votes, self.source)

    def with_classes(self, classes: tuple[str, ...]) -> FaceDataset:
        """Only the rows of ``classes``, relabelled 0..len(classes)-1 in that order."""
        mapping = fer_label_map(classes)
        mapped = mapping[self.labels]
        kept = self.select(mapped >= 0)
        kept.labels = mapped[mapped >= 0]
        return kept

    def ferplus_distribution(self, classes: tuple[str, ...]) -> np.ndarray | None:
        """FER+ votes as a probability distribution over ``classes`` (rows with no votes: None)."""
        if self.ferplus_votes is None:
            return None
        votes = self.ferplus_votes[:, [FERPLUS_COLUMNS[c] for c in classes]].astype(np.float32)
        return votes / np.maximum(votes.sum(1, keepdims=True), 1.0)

    def fingerprint(self) -> str:
        """sha256 of pixels, labels and splits: identifies the data a model or cache came from."""
        digest = hashlib.sha256()
        for array in (self.images, self.labels.astype(np.int64), self.splits.astype(np.uint8)):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()


def load_npz(path: Path) -> FaceDataset:
    """The project's npz format (``../shared/data/README.md``)."""
    try:
        with np.load(path) as data:
            missing = {"pixels", "emotion", "usage"} - set(data.files)
            if missing:
                raise DataError(f"{path}: npz lacks array(s) {sorted(missing)}; expected pixels, emotion, usage")
            images, labels, splits = data["pixels"], data["emotion"].astype(np.int64), data["usage"].astype(np.uint8)
            votes = data["ferplus_votes"] if "ferplus_votes" in data.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # EOF/BadZip: an empty or cut-short npz
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: not a readable npz file ({exc})") from exc
    if images.ndim != 3 or images.shape[1:] != (48, 48) or images.dtype != np.uint8:
        raise DataError(f"{path}: pixels has shape {images.shape} {images.dtype}, expected (N, 48, 48) uint8")
    if not (len(images) == len(labels) == len(splits)):
        raise DataError(f"{path}: pixels, emotion and usage differ in length")
    good = (labels >= 0) & (labels < len(EMOTIONS)) & (splits <= TEST)
    if not good.all():
        for row in np.flatnonzero(~good)[:20]:
            log.warning("%s row %d: label %d / usage %d out of range, skipped", path, row, labels[row], splits[row])
        log.warning("%s: %d malformed row(s) skipped", path, int((~good).sum()))
    if not good.any():
        raise DataError(f"{path}: no usable rows")
    dataset = FaceDataset(images, labels, splits, votes, source=str(path))
    return dataset if good.all() else dataset.select(good)


class _Skipped:
    """Counts malformed rows or files, logging the first few by name, then a total."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.count = 0

    def __call__(self, where: str, why: str) -> None:
        self.count += 1
        if self.count <= MAX_LOGGED_PROBLEMS:
            log.warning("%s: %s, skipped", where, why)

    def report(self, kind: str) -> None:
        if self.count:
            log.warning("%s: %d malformed %s(s) skipped", self.source, self.count, kind)


def load_csv(path: str | Path) -> FaceDataset:
    """Kaggle's ``fer2013.csv`` (columns ``emotion,pixels,Usage``; other columns are ignored).

    FER+ votes are attached when ``fer2013new.csv`` lies beside it (or in ``ferplus/`` beside it).
    """
    path = Path(path)
    skipped = _Skipped(path)
    images, labels, splits, rows = [], [], [], []
    try:
        with path.open(newline="", encoding="utf-8") as file:
            reader = csv.reader(file)
            header = [name.strip().lower() for name in next(reader, [])]
            missing = [name for name in ("emotion", "pixels", "usage") if name not in header]
            if missing:
                raise DataError(f"{path}: not a FER-2013 csv: header lacks {missing}; expected emotion,pixels,Usage")
            emotion_col, pixels_col, usage_col = (header.index(name) for name in ("emotion", "pixels", "usage"))
            for row_number, row in enumerate(reader):
                where = f"{path} row {row_number} (line {reader.line_num})"
                parsed = _csv_face(row, emotion_col, pixels_col, usage_col)
                if isinstance(parsed, str):
                    skipped(where, parsed)
                    continue
                images.append(parsed[0])
                labels.append(parsed[1])
                splits.append(parsed[2])
                rows.append(row_number)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read as a csv file ({exc})") from exc
    skipped.report("row")
    if not images:
        raise DataError(f"{path}: no usable rows")
    votes = _ferplus_votes(path, np.asarray(rows), row_number + 1)
    return FaceDataset(np.stack(images), np.asarray(labels, np.int64), np.asarray(splits, np.uint8), votes, str(path))


def _csv_face(row: list[str], emotion_col: int, pixels_col: int, usage_col: int) -> tuple | str:
    """(image, label, split) from one csv row, or why the row cannot be used."""
    if len(row) <= max(emotion_col, pixels_col, usage_col):
        return f"has {len(row)} column(s), expected at least {max(emotion_col, pixels_col, usage_col) + 1}"
    label, usage = row[emotion_col].strip(), row[usage_col].strip()
    if label not in {str(i) for i in range(len(EMOTIONS))}:
        return f"unknown emotion label {label!r}, expected 0-{len(EMOTIONS) - 1}"
    if usage.lower() not in CSV_USAGES:
        return f"unknown Usage {usage!r}, expected Training, PublicTest or PrivateTest"
    values = row[pixels_col].split()
    if len(values) != FACE_SIDE * FACE_SIDE:
        return f"has {len(values)} pixel values, expected {FACE_SIDE * FACE_SIDE}"
    try:
        pixels = np.asarray(values, dtype=np.int64)
    except ValueError:
        return "pixels are not all whole numbers"
    if pixels.min() < 0 or pixels.max() > 255:
        return "pixel values outside 0-255"
    return pixels.astype(np.uint8).reshape(FACE_SIDE, FACE_SIDE), int(label), CSV_USAGES[usage.lower()]


def _ferplus_votes(csv_path: Path, rows: np.ndarray, total_rows: int) -> np.ndarray | None:
    """FER+ vote counts for the kept ``rows`` of the csv, or None when no (matching) fer2013new.csv is there."""
    candidates = [csv_path.parent / FERPLUS_FILE, csv_path.parent / "ferplus" / FERPLUS_FILE]
    ferplus = next((c for c in candidates if c.is_file() and c.resolve() != csv_path.resolve()), None)
    if ferplus is None:
        return None
    try:
        with ferplus.open(newline="", encoding="utf-8") as file:
            reader = csv.reader(file)
            header = [name.strip() for name in next(reader, [])]
            columns = [header.index(name) for name in FERPLUS_VOTE_COLUMNS]
            votes = np.array([[int(row[c]) for c in columns] for row in reader], dtype=np.int64)
    except (OSError, UnicodeDecodeError, csv.Error, ValueError, IndexError) as exc:
        log.warning("%s: not a FER+ vote file (%s); continuing without FER+ votes", ferplus, exc)
        return None
    if len(votes) != total_rows or votes.min(initial=0) < 0 or votes.max(initial=0) > 255:
        log.warning("%s: %d vote rows for %d csv rows (or votes outside 0-255); continuing without FER+ votes",
                    ferplus, len(votes), total_rows)
        return None
    log.info("%s: FER+ votes attached", ferplus)
    return votes[rows].astype(np.uint8)


def load_image_folder(path: str | Path) -> FaceDataset:
    """An image-folder copy: ``train/<class>/*.png|jpg|jpeg``, ``test/<class>/...``, optionally ``val/<class>/...``.

    Split and class folder names are case-insensitive; a class folder is an emotion name or its FER-2013 label
    (0-6). Images become 48x48 grayscale. Without a validation folder, a stratified, seeded 10% of train is held out.
    """
    path = Path(path)
    skipped = _Skipped(path)
    images, labels, splits = [], [], []
    split_dirs = sorted(d for d in path.iterdir() if d.is_dir() and d.name.lower() in SPLIT_FOLDERS)
    if not split_dirs:
        raise DataError(f"{path}: no split folders; expected train/<class>/ and test/<class>/ (and optionally val/)")
    for split_dir in split_dirs:
        for class_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
            label = _folder_label(class_dir.name)
            if label is None:
                log.warning("%s: not an emotion class folder (expected one of %s or 0-6), skipped",
                            class_dir, ", ".join(EMOTIONS))
                continue
            for file in sorted(f for f in class_dir.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES):
                try:
                    image = cv2.cvtColor(read_image(file), cv2.COLOR_RGB2GRAY)
                except ImageError as exc:
                    skipped(str(file), str(exc).removeprefix(f"{file}: "))
                    continue
                if image.shape != (FACE_SIDE, FACE_SIDE):
                    image = cv2.resize(image, (FACE_SIDE, FACE_SIDE), interpolation=cv2.INTER_AREA)
                images.append(image)
                labels.append(label)
                splits.append(SPLIT_FOLDERS[split_dir.name.lower()])
    skipped.report("image")
    if not images:
        raise DataError(f"{path}: no usable images in {[d.name for d in split_dirs]}")
    dataset = FaceDataset(np.stack(images), np.asarray(labels, np.int64), np.asarray(splits, np.uint8),
                          source=str(path))
    if not (dataset.splits == VALIDATION).any():
        dataset.splits = _hold_out(dataset.labels, dataset.splits)
    log.info("%s: %d train, %d validation, %d test images", path,
             *(int((dataset.splits == split).sum()) for split in (TRAIN, VALIDATION, TEST)))
    return dataset


def _folder_label(name: str) -> int | None:
    name = name.strip().lower()
    if name in EMOTIONS:
        return EMOTIONS.index(name)
    return int(name) if name.isdigit() and int(name) < len(EMOTIONS) else None


def _hold_out(labels: np.ndarray, splits: np.ndarray) -> np.ndarray:
    """Move a stratified, seeded 10% of each class's training rows into validation."""
    rng = np.random.default_rng(HOLDOUT_SEED)
    splits = splits.copy()
    for label in range(len(EMOTIONS)):
        rows = np.flatnonzero((splits == TRAIN) & (labels == label))
        splits[rng.permutation(rows)[: int(round(HOLDOUT_FRACTION * len(rows)))]] = VALIDATION
    return splits


def load_dataset(path: str | Path) -> FaceDataset:
    """Load FER-2013 from an npz, a Kaggle csv or an image folder, by what ``path`` is."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        return load_image_folder(path)
    if path.suffix.lower() == ".npz":
        return load_npz(path)
    if path.suffix.lower() == ".csv":
        return load_csv(path)
    raise DataError(f"{path}: unknown data format; expected .npz, .csv or an image folder")
