"""On-the-fly augmentation in tf.data (outside the model, so inference pays nothing for it).

The landmark features are centred, scaled and levelled by the eyes, so they do not
change under the random scale, rotation and shift applied to the image: image and
landmarks stay consistent by construction. A horizontal flip does change them: it
swaps left and right landmarks (``edge_app.pipeline.preprocess.mirror_index``) and negates x.

``camera_augment`` adds what a real camera does to a face that FER-2013's web photos rarely show
(exposure curves, defocus, low resolution, sensor noise, JPEG blocks); ``mixup`` blends pairs of
faces, their landmark features and their targets.
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


def _gaussian_blur(images: tf.Tensor, sigma: float = 1.0, radius: int = 2) -> tf.Tensor:
    """A separable Gaussian blur as sums of shifted copies (a 1-channel conv2d is ~20x slower on CPU)."""
    taps = [math.exp(-(i**2) / (2 * sigma**2)) for i in range(-radius, radius + 1)]
    taps = [t / sum(taps) for t in taps]
    padded = tf.pad(images, [[0, 0], [radius, radius], [0, 0], [0, 0]], mode="SYMMETRIC")
    images = tf.add_n([t * padded[:, i : i + CROP_SIZE] for i, t in enumerate(taps)])
    padded = tf.pad(images, [[0, 0], [0, 0], [radius, radius], [0, 0]], mode="SYMMETRIC")
    return tf.add_n([t * padded[:, :, i : i + CROP_SIZE] for i, t in enumerate(taps)])


def _some(batch: tf.Tensor, prob: float) -> tf.Tensor:
    """A (B, 1, 1, 1) mask choosing each image with probability ``prob``."""
    return tf.random.uniform((batch, 1, 1, 1)) < prob


def camera_augment(images: tf.Tensor, prob: float = 0.3) -> tf.Tensor:
    """A real camera's degradations, each on a random ``prob`` share of a (B, 48, 48, 1) batch in [0, 1].

    Gamma 0.6-1.6 (exposure), a blend towards a sigma-1 blur (defocus), down-scaling to 14-36 px and
    back (a small or distant face), Gaussian noise up to sigma 0.05 (sensor) and JPEG quality 15-75.
    """
    batch = tf.shape(images)[0]
    gamma = tf.exp(tf.random.uniform((batch, 1, 1, 1), math.log(0.6), math.log(1.6)))
    images = tf.where(_some(batch, prob), tf.pow(tf.maximum(images, 1e-4), gamma), images)
    blend = tf.random.uniform((batch, 1, 1, 1)) * tf.cast(_some(batch, prob), tf.float32)
    images = images + blend * (_gaussian_blur(images) - images)
    side = tf.random.uniform((), 14, 37, dtype=tf.int32)  # one size per batch, chosen images only
    small = tf.image.resize(images, tf.stack([side, side]), method="area", antialias=True)
    images = tf.where(_some(batch, prob), tf.image.resize(small, (CROP_SIZE, CROP_SIZE), method="bilinear"), images)
    noise = tf.random.normal(tf.shape(images)) * tf.random.uniform((batch, 1, 1, 1), 0.0, 0.05)
    images = tf.where(_some(batch, prob), images + noise, images)
    images = tf.clip_by_value(images, 0.0, 1.0)
    # One JPEG of the whole batch stacked into a column: 48 is a multiple of the 8-px block, so no
    # block spans two faces, and one encode per batch is cheap.
    column = tf.reshape(images, (-1, CROP_SIZE, 1))
    quality = tf.random.uniform((), 15, 76, dtype=tf.int32)
    jpeg = tf.reshape(tf.image.adjust_jpeg_quality(column, quality), tf.shape(images))
    return tf.where(_some(batch, prob), jpeg, images)


def mixup(
    images: tf.Tensor, features: tf.Tensor, targets: tf.Tensor, alpha: float
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Blend each example with another of the batch by a Beta(alpha, alpha) share (faces, features, targets)."""
    batch = tf.shape(images)[0]
    a = tf.random.gamma((batch,), alpha)
    share = a / (a + tf.random.gamma((batch,), alpha))
    share = tf.maximum(share, 1.0 - share)  # the first example stays the larger part
    other = tf.random.shuffle(tf.range(batch))

    def blend(x: tf.Tensor) -> tf.Tensor:
        s = tf.reshape(tf.cast(share, x.dtype), [-1] + [1] * (len(x.shape) - 1))
        return s * x + (1.0 - s) * tf.gather(x, other)

    return blend(images), blend(features), blend(targets)


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
    camera: bool = False,
    landmark_noise: float = 0.0,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Augment a batch: images (B, 48, 48, 1) float in [0, 1], landmark features (B, F).

    ``camera``: also ``camera_augment``. ``landmark_noise``: Gaussian jitter of that sigma (in
    inter-ocular distances) on each found face's landmark coordinates, so the model does not rely on
    detail that the device's Face Mesh, seeing the face at another resolution, does not reproduce.
    """
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
    if camera:
        images = camera_augment(images)
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
    if landmark_noise > 0:
        jitter = tf.random.normal(tf.shape(features)) * landmark_noise
        features += tf.concat([jitter[:, :-1], tf.zeros_like(jitter[:, -1:])], axis=1) * features[:, -1:]
    return images, features * keep
