"""The model card: what a model file is, what it expects, and the checksum that ties the two together.

``train/train.py`` writes the card beside the Keras model; ``convert/quantize.py`` adds
each converted file's sha256, size and measured accuracy. The device reads its
preprocessing parameters from the card and refuses a model file the card does not describe.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from edge_app.pipeline.mediapipe_assets import sha256_file
from edge_app.pipeline.preprocess import CROP_SIZE, LANDMARK_FEATURES, CropSpec, face_input
from edge_app.pipeline.runtime import ModelLoadError

FACE_INPUT = "face"
LANDMARK_INPUT = "landmarks"
# Input name -> shape without the batch dimension, as the device feeds it.
DEVICE_INPUTS: dict[str, tuple[int, ...]] = {
    FACE_INPUT: (CROP_SIZE, CROP_SIZE, 1),
    LANDMARK_INPUT: (LANDMARK_FEATURES,),
}
DEFAULT_MODEL_NAME = "fer_fusion_int8.tflite"


def float_model_inputs(faces: np.ndarray, features: np.ndarray) -> dict[str, np.ndarray]:
    """The float (Keras) model's feed, keyed by input name: uint8 faces (N, 48, 48) scaled to [0, 1] and
    landmark features (N, F). Training, evaluation, conversion and Grad-CAM all feed it through this one function.
    """
    return {FACE_INPUT: face_input(faces), LANDMARK_INPUT: features.astype(np.float32)}


class ModelError(ModelLoadError):
    """A model file or its card is missing, corrupt, or does not match the other or the configuration."""


class CardFile(BaseModel):
    """One model file named by the card; ``file`` is relative to the card's directory."""

    model_config = ConfigDict(extra="forbid")
    file: str
    sha256: str
    size_bytes: int
    accuracy: Optional[float] = None  # noqa: UP045 (pydantic evaluates it at run time; Python 3.9 lacks X | None)
    # Where ``accuracy`` was measured, or why there is none (the Edge TPU build cannot run on the converting machine).
    note: Optional[str] = None  # noqa: UP045


class InputSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    shape: list[int]


class OutputSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    shape: list[int]


class CropParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size_iod: float
    centre_below_eyes_iod: float


class Preprocessing(BaseModel):
    model_config = ConfigDict(extra="allow")
    crop: CropParams


class ModelCard(BaseModel):
    """The card as ``train/train.py`` writes it, plus ``files`` from ``convert/quantize.py``.

    Unknown top-level keys are kept, so a tool that rewrites the card loses nothing.
    """

    model_config = ConfigDict(extra="allow")
    name: str
    classes: list[str]
    inputs: dict[str, InputSpec]
    output: OutputSpec
    preprocessing: Preprocessing
    training: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    files: dict[str, CardFile] = {}

    @property
    def crop_spec(self) -> CropSpec:
        return CropSpec(**self.preprocessing.crop.model_dump())

    def entry_for(self, card_dir: Path, model_path: Path) -> tuple[str, CardFile] | None:
        """The (kind, entry) of ``files`` that names ``model_path``, or None."""
        target = Path(model_path).resolve()
        for kind, entry in self.files.items():
            if (card_dir / entry.file).resolve() == target:
                return kind, entry
        return None

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.model_dump(exclude_none=True), indent=2) + "\n")


def describe_file(path: Path, card_dir: Path, accuracy: float | None = None, note: str | None = None) -> CardFile:
    """A card entry for ``path`` (its name relative to the card's directory, sha256 and size)."""
    return CardFile(
        file=Path(path).resolve().relative_to(card_dir.resolve()).as_posix(),
        sha256=sha256_file(path),
        size_bytes=Path(path).stat().st_size,
        accuracy=accuracy,
        note=note,
    )


def default_model_path() -> Path:
    """The shipped int8 model: package data ``edge_app.models``, else the repository's ``models/``."""
    try:
        path = Path(str(resources.files("edge_app.models") / DEFAULT_MODEL_NAME))
        if path.is_file():
            return path
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parents[1] / "models" / DEFAULT_MODEL_NAME


def load_card(path: str | Path) -> ModelCard:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ModelError(f"model card {path}: cannot read ({exc.strerror or exc})") from exc
    except json.JSONDecodeError as exc:
        raise ModelError(f"model card {path}: not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    try:
        return ModelCard.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ModelError(f"model card {path}: {where}: {first['msg']}") from exc


def find_card(model_path: str | Path) -> Path:
    """The one ``*.card.json`` beside ``model_path`` whose ``files`` names it."""
    model_path = Path(model_path)
    cards = sorted(model_path.parent.glob("*.card.json"))
    matches = [c for c in cards if load_card(c).entry_for(c.parent, model_path) is not None]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ModelError(
            f"{model_path}: no model card in {model_path.parent} lists this file "
            f"(looked at {[c.name for c in cards] or 'no *.card.json'}); re-run convert/quantize.py"
        )
    raise ModelError(f"{model_path}: several model cards list this file: {[c.name for c in matches]}")


def verify(
    card: ModelCard,
    model_path: str | Path,
    expected_classes: Sequence[str] | None = None,
    *,
    card_dir: Path | None = None,
    model_inputs: Mapping[str, Sequence[int]] | None = None,
    model_outputs: int | None = None,
) -> str:
    """Check that ``model_path`` is the file the card describes and that both fit the device.

    ``card_dir`` is where the card's file names are relative to (default: the model's
    directory). ``model_inputs`` (input name -> shape of the loaded model) and
    ``model_outputs`` (number of output values) also check the loaded model against the card.
    Returns the file's kind (``int8``, ``float16``...); raises ``ModelError`` with one line.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ModelError(f"model file not found: {model_path}")
    found = card.entry_for(card_dir or model_path.parent, model_path)
    if found is None:
        raise ModelError(f"{model_path} is not listed in its model card ({card.name}): re-run convert/quantize.py")
    kind, entry = found
    actual = sha256_file(model_path)
    if actual != entry.sha256:
        raise ModelError(
            f"{model_path} does not match its card (sha256 {actual[:12]}..., card says {entry.sha256[:12]}...): "
            "re-run convert/quantize.py"
        )
    if expected_classes is not None and list(expected_classes) != card.classes:
        raise ModelError(
            f"{model_path}: model classes {card.classes} differ from model.classes {list(expected_classes)} "
            "in the config"
        )
    for name, shape in DEVICE_INPUTS.items():
        if name not in card.inputs:
            raise ModelError(f"{model_path}: card has no input {name!r} (it has {sorted(card.inputs)})")
        if tuple(card.inputs[name].shape[1:]) != shape:
            raise ModelError(f"{model_path}: card input {name!r} has shape {card.inputs[name].shape}, "
                             f"the device feeds {[1, *shape]}")
    if card.output.shape[-1] != len(card.classes):
        raise ModelError(
            f"{model_path}: card output has {card.output.shape[-1]} values for {len(card.classes)} classes"
        )
    for name, shape in (model_inputs or {}).items():
        if tuple(shape[1:]) != DEVICE_INPUTS[name]:
            raise ModelError(f"{model_path}: input {name!r} has shape {list(shape)}, the card says "
                             f"{card.inputs[name].shape}")
    if model_outputs is not None and model_outputs != len(card.classes):
        raise ModelError(
            f"{model_path}: model outputs {model_outputs} values, the card lists {len(card.classes)} classes"
        )
    return kind
