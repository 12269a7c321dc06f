"""Helpers shared by the tests that train and convert real models: run a project script, slice FER-2013."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TRAIN_PER_CLASS, VALIDATION_PER_CLASS, TEST_PER_CLASS = 80, 10, 40


def run_script(*args: str | Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def small_fer(source: Path, target: Path) -> Path:
    """A class-balanced slice of FER-2013 in the project's npz format (train / validation / test), with its FER+
    votes when the source has them."""
    from edge_app.dataset import SPLIT_NAMES, load_dataset

    data = load_dataset(source)
    rng = np.random.default_rng(0)
    rows = []
    for split, per_class in (("train", TRAIN_PER_CLASS), ("validation", VALIDATION_PER_CLASS),
                             ("test", TEST_PER_CLASS)):
        for label in range(7):
            idx = np.flatnonzero((data.splits == SPLIT_NAMES[split]) & (data.labels == label))
            rows.append(rng.choice(idx, per_class, replace=False))
    rows = np.sort(np.concatenate(rows))
    votes = {} if data.ferplus_votes is None else {"ferplus_votes": data.ferplus_votes[rows]}
    np.savez_compressed(target, pixels=data.images[rows], emotion=data.labels[rows].astype(np.uint8),
                        usage=data.splits[rows], **votes)
    return target
