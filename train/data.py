"""FER-2013 loaders: the project's npz, Kaggle's fer2013.csv, or an image-folder copy.

All three become one in-memory ``FaceDataset`` with FER-2013 label coding (0-6, see
``edge_app.emotions.EMOTIONS``) and splits train (Training), validation (PublicTest)
and test (PrivateTest).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_app.emotions import EMOTIONS, fer_label_map

log = logging.getLogger(__name__)

TRAIN, VALIDATION, TEST = 0, 1, 2
SPLIT_NAMES = {"train": TRAIN, "validation": VALIDATION, "test": TEST}
# FER+ vote columns that map onto the FER-2013 classes (contempt, unknown and NF are dropped).
FERPLUS_COLUMNS = {"neutral": 0, "happy": 1, "surprise": 2, "sad": 3, "angry": 4, "disgust": 5, "fear": 6}


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
    except (OSError, ValueError) as exc:
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
