"""The Keras fusion model: a CNN over the 48x48 face and an MLP over the landmark features.

Every block is convolution -> batch normalisation -> ReLU (the order the Edge TPU
compiler fuses), with no op that falls back to float in a full-int8 build.
"""

from __future__ import annotations

import keras
from keras import layers

from edge_app.model_card import FACE_INPUT, LANDMARK_INPUT
from edge_app.pipeline.preprocess import CROP_SIZE, LANDMARK_FEATURES

OUTPUT = "probabilities"
BRANCHES = ("fusion", "cnn", "landmarks")


def _conv_block(x: keras.KerasTensor, filters: int, name: str, l2: float) -> keras.KerasTensor:
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False,
                      kernel_regularizer=keras.regularizers.L2(l2), name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def build_model(
    num_classes: int,
    *,
    branch: str = "fusion",
    widths: tuple[int, ...] = (32, 64, 128, 256),
    dropout: float = 0.4,
    l2: float = 1e-4,
    batch_size: int | None = None,
) -> keras.Model:
    """The classifier. ``branch``: ``fusion`` (both inputs), ``cnn`` (face only) or ``landmarks``.

    Both inputs are always present so every variant is fed the same way; a branch that is
    switched off simply ignores its input. ``batch_size=1`` builds the Edge TPU variant.
    """
    if branch not in BRANCHES:
        raise ValueError(f"branch: expected one of {BRANCHES}, got {branch!r}")
    face = keras.Input((CROP_SIZE, CROP_SIZE, 1), batch_size=batch_size, name=FACE_INPUT)
    landmarks = keras.Input((LANDMARK_FEATURES,), batch_size=batch_size, name=LANDMARK_INPUT)
    merged = []
    if branch in ("fusion", "cnn"):
        x = face
        for i, width in enumerate(widths):
            x = _conv_block(x, width, f"b{i}a", l2)
            if i > 0:
                x = _conv_block(x, width, f"b{i}b", l2)
            x = layers.MaxPooling2D(2, name=f"b{i}_pool")(x)
            x = layers.Dropout(0.1 * (i + 1) / len(widths), name=f"b{i}_drop")(x)
        x = layers.GlobalAveragePooling2D(name="gap")(x)
        merged.append(x)
    if branch in ("fusion", "landmarks"):
        y = landmarks
        for i, units in enumerate((256, 128)):
            y = layers.Dense(units, use_bias=False, kernel_regularizer=keras.regularizers.L2(l2),
                             name=f"lm{i}_dense")(y)
            y = layers.BatchNormalization(name=f"lm{i}_bn")(y)
            y = layers.ReLU(name=f"lm{i}_relu")(y)
            y = layers.Dropout(dropout / 2, name=f"lm{i}_drop")(y)
        merged.append(y)
    z = merged[0] if len(merged) == 1 else layers.Concatenate(name="fuse")(merged)
    z = layers.Dense(256, use_bias=False, kernel_regularizer=keras.regularizers.L2(l2), name="head_dense")(z)
    z = layers.BatchNormalization(name="head_bn")(z)
    z = layers.ReLU(name="head_relu")(z)
    z = layers.Dropout(dropout, name="head_drop")(z)
    logits = layers.Dense(num_classes, name="logits")(z)
    out = layers.Softmax(name=OUTPUT)(logits)
    return keras.Model({FACE_INPUT: face, LANDMARK_INPUT: landmarks}, out, name=f"fer_{branch}")
