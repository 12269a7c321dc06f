"""train/train.py's targets (FER+ votes mixed with the FER label by ferplus_weight, the class-weight choices) and
train/evaluate.py's FER+ majority label."""

from __future__ import annotations

import numpy as np
import pytest

from edge_app.dataset import FERPLUS_COLUMNS, FaceDataset
from train.evaluate import ferplus_majority
from train.train import class_weights, parse_args, targets

CLASSES = ("happy", "sad")


def two_faces_with_votes() -> FaceDataset:
    """A happy face that 6 of 10 annotators called happy and 4 sad, and a sad face nobody voted on."""
    votes = np.zeros((2, 10), np.uint8)
    votes[0, FERPLUS_COLUMNS["happy"]], votes[0, FERPLUS_COLUMNS["sad"]] = 6, 4
    labels = np.array([0, 1])  # in CLASSES order, as FaceDataset.with_classes leaves them
    return FaceDataset(np.zeros((2, 48, 48), np.uint8), labels, np.zeros(2, np.uint8), votes)


def test_ferplus_weight_mixes_the_votes_with_the_label() -> None:
    faces = two_faces_with_votes()
    np.testing.assert_allclose(targets(faces, CLASSES, "fer"), [[1, 0], [0, 1]])
    np.testing.assert_allclose(targets(faces, CLASSES, "ferplus", 1.0), [[0.6, 0.4], [0, 1]])
    # Half label, half votes; the face without votes keeps its label.
    np.testing.assert_allclose(targets(faces, CLASSES, "ferplus", 0.5), [[0.8, 0.2], [0, 1]])


def test_square_root_class_weights_are_softer_than_inverse_ones() -> None:
    y = np.eye(2, dtype=np.float32)[[0] * 400 + [1] * 100]  # the second class four times rarer
    inverse, sqrt = class_weights(y, 1.0), class_weights(y, 0.5)
    assert inverse[1] / inverse[0] == pytest.approx(4.0) and sqrt[1] / sqrt[0] == pytest.approx(2.0)
    for weights in (inverse, sqrt):  # the mean weight per face stays 1, so the learning rate means the same
        assert (400 * weights[0] + 100 * weights[1]) / 500 == pytest.approx(1.0)
    assert parse_args(["--class-balance", "sqrt_weights"]).class_balance == "sqrt_weights"
    assert parse_args(["--set", "train.class_balance=sqrt_weights"]).class_balance == "sqrt_weights"


def test_the_ferplus_majority_label_needs_more_than_half_the_votes() -> None:
    votes = np.zeros((4, 10), np.uint8)
    votes[0, FERPLUS_COLUMNS["sad"]] = 6  # 6 of 10: sad
    votes[0, FERPLUS_COLUMNS["happy"]] = 4
    votes[1, FERPLUS_COLUMNS["happy"]], votes[1, FERPLUS_COLUMNS["sad"]] = 5, 5  # a tie: no majority
    votes[2, FERPLUS_COLUMNS["happy"]], votes[2, 7] = 4, 6  # most said contempt, not one of the classes
    faces = FaceDataset(np.zeros((4, 48, 48), np.uint8), np.zeros(4, np.int64), np.zeros(4, np.uint8), votes)
    labels, has = ferplus_majority(faces, np.arange(4), list(CLASSES))
    assert has.tolist() == [True, False, False, False] and labels[0] == CLASSES.index("sad")
    assert ferplus_majority(FaceDataset(faces.images, faces.labels, faces.splits), np.arange(4), list(CLASSES)) is None
