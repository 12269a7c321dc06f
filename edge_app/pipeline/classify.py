"""The emotion classifier: the int8 TFLite model (its float16 build on the GPU delegate, its Edge TPU build on the
Edge TPU), checked against its card, fed by input name."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge_app.config import AppConfig
from edge_app.model_card import (
    FACE_INPUT,
    LANDMARK_INPUT,
    ModelCard,
    ModelError,
    default_model_path,
    find_card,
    load_card,
    verify,
)
from edge_app.pipeline.preprocess import CROP_SIZE, LANDMARK_FEATURES, face_input, mirror_inputs
from edge_app.pipeline.runtime import ModelLoadError, TFLiteModel

log = logging.getLogger(__name__)


def edgetpu_candidates(model_path: Path) -> list[Path]:
    """Where the Edge TPU build of an int8 model may lie: ``<stem>_edgetpu.tflite``, or the name
    ``edgetpu_compiler`` gives ``<stem>_edgetpu_ready.tflite`` (``..._edgetpu_ready_edgetpu.tflite``)."""
    stem = model_path.with_suffix("")
    return [Path(f"{stem}_edgetpu.tflite"), Path(f"{stem}_edgetpu_ready_edgetpu.tflite")]


class EmotionClassifier:
    """Emotion probabilities for one face from its 48x48 crop and landmark features.

    The model file must match its card (sha256, classes, input shapes); the card also
    gives ``crop_spec``, the framing the crops must have. Models run with batch 1
    (Edge TPU models can do nothing else), so ``predict_batch`` loops. ``flip_average``
    averages each prediction with the mirrored face's (test-time augmentation, two calls).
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        card_path: str | Path | None = None,
        delegate: str = "cpu",
        num_threads: int = 2,
        expected_classes: Sequence[str] | None = None,
        flip_average: bool = False,
    ):
        self.model_path = Path(model_path) if model_path is not None else default_model_path()
        self.card_path = Path(card_path) if card_path is not None else find_card(self.model_path)
        self.card: ModelCard = load_card(self.card_path)
        self.expected_classes = expected_classes
        verify(self.card, self.model_path, expected_classes, card_dir=self.card_path.parent)
        path, model_delegate = self._choose_file(delegate)
        self.model = self._load(path, model_delegate, num_threads)
        if self.model.path != self.model_path and self.model.delegate_in_use == "cpu":  # the delegate did not load
            log.info("running %s on the CPU instead of %s (built for the %s)", self.model_path.name, path.name,
                     "Edge TPU" if model_delegate == "edgetpu" else "GPU delegate")
            self.model = self._load(self.model_path, "cpu", num_threads)
        self.model_path = self.model.path
        self.delegate_in_use = self.model.delegate_in_use
        self.classes: tuple[str, ...] = tuple(self.card.classes)
        self.crop_spec = self.card.crop_spec
        self._face = self.model.input_name(FACE_INPUT)
        self._landmarks = self.model.input_name(LANDMARK_INPUT)
        self._output = next(iter(self.model.outputs))
        self._warned_non_finite = False
        self.flip_average = flip_average
        self._last_ms = 0.0

    @classmethod
    def from_config(cls, config: AppConfig) -> EmotionClassifier:
        """The classifier that the ``model`` and ``runtime`` config sections describe."""
        return cls(
            config.model.path, config.model.card, delegate=config.runtime.delegate,
            num_threads=config.runtime.num_threads, expected_classes=config.model.classes,
            flip_average=config.model.flip_average,
        )

    def _choose_file(self, delegate: str) -> tuple[Path, str]:
        """The file and delegate to load: the card's float16 build for the GPU delegate (int8 kernels would run
        there, dequantized, for no gain), the Edge TPU build when asked for and listed in the card."""
        if delegate == "gpu":
            return self._float16_file(), "gpu"
        if delegate != "edgetpu":
            return self.model_path, delegate
        for candidate in edgetpu_candidates(self.model_path):
            if not candidate.is_file():
                continue
            if self.card.entry_for(self.card_path.parent, candidate) is None:
                log.warning("%s is not listed in %s: register it with `python convert/quantize.py "
                            "--register-edgetpu %s`; running %s on the CPU",
                            candidate, self.card_path.name, candidate, self.model_path.name)
                return self.model_path, "cpu"
            verify(self.card, candidate, self.expected_classes, card_dir=self.card_path.parent)
            return candidate, "edgetpu"
        log.warning("no Edge TPU model beside %s (expected %s, made by edgetpu_compiler); running it on the CPU",
                    self.model_path.name, edgetpu_candidates(self.model_path)[0].name)
        return self.model_path, "cpu"

    def _float16_file(self) -> Path:
        """The card's ``float16`` file when it is there (checked against the card), else the configured model."""
        entry = self.card.files.get("float16")
        if entry is None:
            return self.model_path
        candidate = self.card_path.parent / entry.file
        if not candidate.is_file():
            log.warning("%s lists %s for the GPU delegate, but it is not there; running %s on the GPU delegate",
                        self.card_path.name, entry.file, self.model_path.name)
            return self.model_path
        verify(self.card, candidate, self.expected_classes, card_dir=self.card_path.parent)
        return candidate

    def _load(self, path: Path, delegate: str, num_threads: int) -> TFLiteModel:
        try:
            model = TFLiteModel(path, delegate=delegate, num_threads=num_threads)
        except ModelLoadError as exc:
            if delegate == "edgetpu" and path != self.model_path:
                log.warning("%s cannot run here (%s); running %s on the CPU", path.name, exc, self.model_path.name)
                return self._load(self.model_path, "cpu", num_threads)
            raise ModelError(f"{path}: cannot load as a TFLite model ({exc})") from exc
        inputs = {}
        for name in (FACE_INPUT, LANDMARK_INPUT):
            try:
                inputs[name] = model.input_shape(model.input_name(name))
            except KeyError:  # another network (a detector, say) that the card was made to vouch for
                raise ModelError(f"{path}: the model has no input named like {name!r} (it has "
                                 f"{sorted(model.inputs)}): not the emotion model its card describes") from None
        verify(
            self.card, path, self.expected_classes, card_dir=self.card_path.parent, model_inputs=inputs,
            model_outputs=int(np.prod(next(iter(model.outputs.values()))["shape"][1:])),
        )
        return model

    @property
    def last_ms(self) -> float:
        """Milliseconds of inference the last ``predict`` took (both calls with ``flip_average``)."""
        return self._last_ms

    def predict(self, crop: np.ndarray, features: np.ndarray) -> np.ndarray:
        """Class probabilities (C,) for a (48, 48) uint8 crop and its (937,) landmark features.

        Non-finite features are replaced by the "no landmarks" input (zeros, flag 0), which the
        model was trained on: a NaN must never reach the int8 quantizer.
        """
        crop = np.asarray(crop)
        if crop.shape != (CROP_SIZE, CROP_SIZE) or crop.dtype != np.uint8:
            raise ValueError(f"crop: expected ({CROP_SIZE}, {CROP_SIZE}) uint8, got {crop.shape} {crop.dtype}")
        features = np.asarray(features, np.float32)
        if features.shape != (LANDMARK_FEATURES,):
            raise ValueError(f"features: expected ({LANDMARK_FEATURES},), got {features.shape}")
        if not np.all(np.isfinite(features)):
            if not self._warned_non_finite:
                log.warning("non-finite landmark features replaced by the 'no landmarks' input")
                self._warned_non_finite = True
            features = np.zeros(LANDMARK_FEATURES, np.float32)
        probabilities = self._run(crop, features)
        self._last_ms = self.model.last_ms
        if self.flip_average:
            probabilities = (probabilities + self._run(*mirror_inputs(crop, features))) / 2.0
            self._last_ms += self.model.last_ms
        return probabilities

    def _run(self, crop: np.ndarray, features: np.ndarray) -> np.ndarray:
        out = self.model({
            self._face: face_input(crop)[None],
            self._landmarks: features[None],
        })
        return out[self._output].reshape(-1)

    def predict_batch(self, crops: np.ndarray, features: np.ndarray) -> np.ndarray:
        """Probabilities (N, C) for N crops and their features, one batch-1 call each."""
        if len(crops) != len(features):
            raise ValueError(f"{len(crops)} crops but {len(features)} feature vectors")
        if len(crops) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        return np.stack([self.predict(c, f) for c, f in zip(crops, features)])
