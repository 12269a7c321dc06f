"""Grad-CAM of the float Keras model's CNN branch: which pixels of the 48x48 face drove a class.

Used by ``train/evaluate.py`` (reports) and the local preview page. It needs TensorFlow, which a device install
does not have: TensorFlow is imported only when a ``GradCam`` is made, and ``available()`` says whether it can be.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_app.model_card import float_model_inputs


def available() -> bool:
    """Whether TensorFlow/Keras can be imported here (without importing them)."""
    return all(importlib.util.find_spec(name) is not None for name in ("tensorflow", "keras"))


def last_conv_layer(model: Any) -> str:
    """Name of the last layer with a spatial (4-D) output: the CNN branch's final feature map."""
    spatial = [layer.name for layer in model.layers if len(layer.output.shape) == 4
               and not layer.name.endswith(("_pool", "_drop"))]
    if not spatial:
        raise ValueError(f"model {model.name} has no convolutional feature map (a landmarks-only model?)")
    return spatial[-1]


class GradCam:
    """Grad-CAM maps for one Keras model; builds the gradient model once."""

    def __init__(self, model: Any) -> None:
        import keras

        if isinstance(model, (str, Path)):
            model = keras.models.load_model(model, compile=False)
        self.model = model
        self.layer = last_conv_layer(model)
        self._grad_model = keras.Model(model.inputs, [model.get_layer(self.layer).output, model.output])

    def __call__(self, face: np.ndarray, features: np.ndarray, class_index: int | None = None) -> np.ndarray:
        """A (48, 48) map in [0, 1] for ``class_index`` (default: the predicted class) of one uint8 face."""
        import tensorflow as tf

        inputs = {name: tf.constant(value) for name, value in float_model_inputs(face[None], features[None]).items()}
        with tf.GradientTape() as tape:
            feature_map, probabilities = self._grad_model(inputs, training=False)
            index = int(tf.argmax(probabilities[0])) if class_index is None else class_index
            score = tf.math.log(probabilities[:, index] + 1e-7)
        grads = tape.gradient(score, feature_map)[0]
        weights = tf.reduce_mean(grads, axis=(0, 1))
        cam = tf.nn.relu(tf.reduce_sum(feature_map[0] * weights, axis=-1)).numpy()
        cam = cam / cam.max() if cam.max() > 0 else cam
        return cv2.resize(cam.astype(np.float32), face.shape[::-1], interpolation=cv2.INTER_LINEAR).clip(0.0, 1.0)


def overlay(gray_face: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The face (grayscale uint8) with the map blended over it in the JET colour map, as a BGR uint8 image."""
    heat = cv2.applyColorMap((255 * cam).astype(np.uint8), cv2.COLORMAP_JET)
    base = cv2.cvtColor(gray_face, cv2.COLOR_GRAY2BGR)
    return cv2.addWeighted(heat, alpha, base, 1 - alpha, 0)
