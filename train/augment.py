"""On-the-fly augmentation in tf.data (outside the model, so inference pays nothing for it).

The landmark features are centred, scaled and levelled by the eyes, so they do not
change under the random scale, rotation and shift applied to the image: image and
landmarks stay consistent by construction. A horizontal flip does change them: it
swaps left and right landmarks (``edge_app.pipeline.preprocess.mirror_index``) and negates x.
"""

from __future__ import annotations

import math

import tensorflow as tf

from edge_app.pipeline.landmarks import NUM_LANDMARKS
from edge_app.pipeline.preprocess import CROP_SIZE, mirror_index


def _mirror_landmarks(features: tf.Tensor) -> tf.Tensor:
    points = tf.reshape(features[:, :-1], (-1, NUM_LANDMARKS, 2))
    points = tf.gather(points, tf.constant(mirror_index()), axis=1) * tf.constant([-1.0, 1.0])
    return tf.concat([tf.reshape(points, (-1, NUM_LANDMARKS * 2)), features[:, -1:]], axis=1)


def _affine(batch: int, max_rotate_deg: float, max_shift: float, scale_range: tuple[float, float]) -> tf.Tensor:
    """Per-image projective transforms (output -> input pixel) for ImageProjectiveTransformV3."""
    angle = tf.random.uniform((batch,), -1.0, 1.0) * (max_rotate_deg * math.pi / 180.0)
    scale = tf.random.uniform((batch,), *scale_range)
    shift = tf.random.uniform((batch, 2), -max_shift, max_shift) * CROP_SIZE
    c, s = tf.cos(angle) / scale, tf.sin(angle) / scale
    centre = (CROP_SIZE - 1) / 2.0
    tx = centre - c * centre + s * centre - shift[:, 0]
    ty = centre - s * centre - c * centre - shift[:, 1]
    zeros = tf.zeros((batch,))
    return tf.stack([c, -s, tx, s, c, ty, zeros, zeros], axis=1)


def augment_batch(
    images: tf.Tensor,
    features: tf.Tensor,
    *,
    max_rotate_deg: float = 12.0,
    max_shift: float = 0.08,
    scale_range: tuple[float, float] = (0.9, 1.12),
    brightness: float = 0.15,
    contrast: float = 0.3,
    erase_prob: float = 0.4,
    landmark_dropout: float = 0.15,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Augment a batch: images (B, 48, 48, 1) float in [0, 1], landmark features (B, F)."""
    batch = tf.shape(images)[0]
    flip = tf.random.uniform((batch,)) < 0.5
    images = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
    features = tf.where(flip[:, None], _mirror_landmarks(features), features)
    images = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=_affine(batch, max_rotate_deg, max_shift, scale_range),
        output_shape=[CROP_SIZE, CROP_SIZE], fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT",
    )
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    gain = tf.random.uniform((batch, 1, 1, 1), 1 - contrast, 1 + contrast)
    offset = tf.random.uniform((batch, 1, 1, 1), -brightness, brightness)
    images = tf.clip_by_value((images - mean) * gain + mean + offset, 0.0, 1.0)
    # Random erasing: one grey rectangle of 10-30% of the side on some faces.
    size = tf.cast(tf.random.uniform((batch, 2), 0.1, 0.3) * CROP_SIZE, tf.int32)
    corner = tf.cast(tf.random.uniform((batch, 2)) * tf.cast(CROP_SIZE - size, tf.float32), tf.int32)
    grid = tf.range(CROP_SIZE)
    rows = (grid[None, :] >= corner[:, :1]) & (grid[None, :] < corner[:, :1] + size[:, :1])
    cols = (grid[None, :] >= corner[:, 1:]) & (grid[None, :] < corner[:, 1:] + size[:, 1:])
    erase = rows[:, :, None] & cols[:, None, :] & (tf.random.uniform((batch, 1, 1)) < erase_prob)
    images = tf.where(erase[..., None], tf.random.uniform((batch, 1, 1, 1)), images)
    # Train the "no landmarks" path the device takes when Face Mesh finds none.
    keep = tf.cast(tf.random.uniform((batch, 1)) >= landmark_dropout, features.dtype)
    return images, features * keep
