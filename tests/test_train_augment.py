"""train/augment.py: the training flip mirrors landmarks as the device does, and the camera, mixup and landmark
jitter augmentations do what the recipe relies on, on a real face (skimage's astronaut)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from skimage import data

from edge_app.app import build_pipeline
from edge_app.config import load_config
from edge_app.pipeline.preprocess import mirror_features
from train.augment import augment_batch, camera_augment, mixup

# Every augmentation but the flip switched off, so each output is its input or the input's mirror image.
FLIP_ONLY = dict(max_rotate_deg=0.0, max_shift=0.0, scale_range=(1.0, 1.0), brightness=0.0, contrast=0.0,
                 erase_prob=0.0, landmark_dropout=0.0)


@pytest.fixture(scope="module")
def face() -> tuple[np.ndarray, np.ndarray]:
    """The astronaut's 48x48 crop in [0, 1] and its landmark features, as the device computes them."""
    (found,) = build_pipeline(load_config(None, [], env={})).faces.detect(data.astronaut())
    return found.crop.astype(np.float32)[..., None] / 255.0, found.features


def batch_of(face: tuple[np.ndarray, np.ndarray], n: int) -> tuple[tf.Tensor, tf.Tensor]:
    crop, features = face
    return tf.constant(np.repeat(crop[None], n, 0)), tf.constant(np.repeat(features[None], n, 0))


def test_the_training_flip_mirrors_the_landmarks_as_the_device_does(face) -> None:
    tf.random.set_seed(0)
    images, features = batch_of(face, 32)
    out_images, out_features = augment_batch(images, features, **FLIP_ONLY)
    crop, plain = face
    flipped = np.all(np.isclose(out_images.numpy(), crop[:, ::-1], atol=1e-5), axis=(1, 2, 3))
    kept = np.all(np.isclose(out_images.numpy(), crop, atol=1e-5), axis=(1, 2, 3))
    assert flipped.any() and kept.any() and np.all(flipped | kept)
    # Where the image was flipped, the features are edge_app's mirror of the face's (the device's flip TTA).
    np.testing.assert_allclose(out_features.numpy()[flipped], np.repeat(mirror_features(plain)[None],
                                                                         flipped.sum(), 0), atol=1e-6)
    np.testing.assert_allclose(out_features.numpy()[kept & ~flipped], np.repeat(plain[None], kept.sum(), 0),
                               atol=1e-6)


def test_camera_augmentation_off_is_the_identity_and_on_keeps_the_face(face) -> None:
    tf.random.set_seed(1)
    images, _ = batch_of(face, 16)
    np.testing.assert_array_equal(camera_augment(images, prob=0.0).numpy(), images.numpy())
    out = camera_augment(images, prob=1.0).numpy()
    assert out.shape == images.shape and out.min() >= 0.0 and out.max() <= 1.0
    crop = face[0].ravel()
    for degraded in out:
        assert np.abs(degraded.ravel() - crop).mean() > 0.01  # changed: every degradation ran
        assert np.corrcoef(degraded.ravel(), crop)[0, 1] > 0.8  # but still the same face


def test_landmark_jitter_moves_found_landmarks_only(face) -> None:
    tf.random.set_seed(2)
    images, features = batch_of(face, 64)
    features = tf.concat([features[:32], tf.zeros_like(features[32:])], axis=0)  # half without landmarks
    no_jitter = dict(FLIP_ONLY, landmark_noise=0.0)
    _, plain = augment_batch(images, features, **no_jitter)
    tf.random.set_seed(2)
    _, jittered = augment_batch(images, features, **dict(FLIP_ONLY, landmark_noise=0.02))
    moved = (jittered - plain).numpy()
    assert np.all(jittered.numpy()[32:] == 0)  # the "no landmarks" input stays all zeros
    assert np.all(jittered.numpy()[:32, -1] == 1.0)  # the found flag is not jittered
    assert moved[:32, :-1].std() == pytest.approx(0.02, rel=0.1)


def test_mixup_blends_faces_landmarks_and_targets_alike() -> None:
    tf.random.set_seed(3)
    n = 7
    values = np.arange(n, dtype=np.float32) / n
    images = tf.constant(np.broadcast_to(values[:, None, None, None], (n, 48, 48, 1)).copy())
    features = tf.constant(np.broadcast_to(values[:, None], (n, 5)).copy())
    targets = tf.eye(n)
    mixed_images, mixed_features, mixed_targets = (t.numpy() for t in mixup(images, features, targets, alpha=0.4))
    np.testing.assert_allclose(mixed_targets.sum(1), 1.0, atol=1e-6)
    assert np.all(mixed_targets[np.arange(n), np.arange(n)] >= 0.5)  # each example stays the larger part
    # Each face and its landmark features are the same blend as its target says.
    np.testing.assert_allclose(mixed_images[:, 0, 0, 0], mixed_targets @ values, atol=1e-6)
    np.testing.assert_allclose(mixed_features[:, 0], mixed_targets @ values, atol=1e-6)
