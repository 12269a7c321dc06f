"""The emotion classes: one list, used by training, conversion and the device."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# FER-2013 label order: index i is label i of fer2013.csv.
EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

DESCRIPTIONS: dict[str, str] = {
    "angry": "Brows lowered and drawn together, lips pressed or bared.",
    "disgust": "Nose wrinkled, upper lip raised.",
    "fear": "Brows raised and drawn together, eyes wide, mouth stretched.",
    "happy": "Cheeks raised, lip corners pulled up: a smile.",
    "sad": "Inner brows raised, lip corners pulled down.",
    "surprise": "Brows raised, eyes wide open, jaw dropped.",
    "neutral": "A relaxed face with no strong expression.",
}


def resolve_classes(names: Sequence[str] | None) -> tuple[str, ...]:
    """Validate a class subset (case-insensitive) and return it in FER-2013 order.

    ``None`` or an empty list means all seven classes.
    """
    if not names:
        return EMOTIONS
    wanted = {n.strip().lower() for n in names}
    unknown = sorted(wanted - set(EMOTIONS))
    if unknown:
        raise ValueError(f"unknown emotion class(es) {unknown}; expected a subset of {list(EMOTIONS)}")
    if len(wanted) < 2:
        raise ValueError("a class subset needs at least two classes")
    return tuple(e for e in EMOTIONS if e in wanted)


def fer_label_map(classes: Sequence[str]) -> np.ndarray:
    """Array mapping a FER-2013 label (0-6) to its index in ``classes``, or -1 when left out."""
    mapping = np.full(len(EMOTIONS), -1, dtype=np.int64)
    for i, name in enumerate(classes):
        mapping[EMOTIONS.index(name)] = i
    return mapping
