"""Bad frames through the frame step `edge-emotion run` uses (edge_app.pipeline.frames.take_frame: conversion,
FrameProcessor with the shipped models, the window aggregator): each is processed or skipped and counted, never a
crash, and whatever reaches the emotion model is finite (checked by recording the real model's inputs)."""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np
import pytest
import skimage.data

from edge_app.app import build_pipeline
from edge_app.config import load_config
from edge_app.pipeline.classify import EmotionClassifier
from edge_app.pipeline.faces import Face
from edge_app.pipeline.frames import FrameProcessor, take_frame
from edge_app.pipeline.preprocess import CROP_SIZE, LANDMARK_FEATURES
from edge_app.pipeline.track import Tracker
from edge_app.publish.aggregate import WindowAggregator

ASTRONAUT = skimage.data.astronaut()
FACE_BOX = (179, 72, 271, 175)  # the astronaut's face in the 512x512 photo, as the pipeline finds it
MAX_FACES = 10
MIN_FACE_PX = 40


def face_tile(margin: float, side: int) -> np.ndarray:
    """The astronaut's face with ``margin`` face widths either side of its centre, as a side x side RGB tile."""
    x0, y0, x1, y1 = FACE_BOX
    half = margin * (x1 - x0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    crop = ASTRONAUT[int(cy - half):int(cy + half), int(cx - half):int(cx + half)]
    return cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)


def grid(tile: np.ndarray, cols: int, rows: int) -> np.ndarray:
    """``tile`` repeated cols x rows times: a crowd of real faces."""
    return np.ascontiguousarray(np.tile(tile, (rows, cols, 1)))


def eight_k() -> np.ndarray:
    """A 7680x4320 frame with the face photo in its middle (the face ~1800 px wide)."""
    frame = np.zeros((4320, 7680, 3), np.uint8)
    frame[:, 1680:6000] = face_tile(1.25, 4320)
    return frame


# name -> (frame factory, expected: "none" (no frame), "dropped", or the number of faces)
CASES: dict[str, tuple[Callable[[], np.ndarray | None], str | int]] = {
    "None": (lambda: None, "none"),
    "empty 0x0": (lambda: np.zeros((0, 0, 3), np.uint8), "dropped"),
    "no columns 480x0": (lambda: np.zeros((480, 0), np.uint8), "dropped"),
    "5 channels": (lambda: np.zeros((48, 48, 5), np.uint8), "dropped"),
    "int32": (lambda: ASTRONAUT.astype(np.int32), "dropped"),
    "1x1": (lambda: np.full((1, 1, 3), 200, np.uint8), 0),
    "grayscale 2-D": (lambda: cv2.cvtColor(ASTRONAUT, cv2.COLOR_RGB2GRAY), 1),
    "4 channels (alpha)": (lambda: cv2.cvtColor(ASTRONAUT, cv2.COLOR_RGB2RGBA), 1),
    "16-bit": (lambda: ASTRONAUT.astype(np.uint16) * 257, 1),
    "float with NaN": (lambda: np.where(ASTRONAUT > 250, np.nan, ASTRONAUT / 255.0), 1),
    "8K 7680x4320": (eight_k, 1),
    "all black": (lambda: np.zeros((480, 640, 3), np.uint8), 0),
    "no face (coffee)": (skimage.data.coffee, 0),
    "16 faces, max_faces 10": (lambda: grid(face_tile(0.75, 160), 4, 4), MAX_FACES),
    "tiny faces below min_face_px": (lambda: grid(face_tile(0.6, 40), 4, 4), 0),
    "face cut through its middle by the left edge": (lambda: np.ascontiguousarray(ASTRONAUT[:, 225:]), 1),
    "face cut at the eyes by the top edge": (lambda: np.ascontiguousarray(ASTRONAUT[110:]), 1),
    "face cut by the bottom edge": (lambda: np.ascontiguousarray(ASTRONAUT[:140]), 1),
    "face in the corner, three quarters cut": (lambda: np.ascontiguousarray(ASTRONAUT[120:, 230:]), 0),
}
# Faces the detector finds in one detection frame that are left out, and counted in stats.
SKIPPED_DETECTIONS = {"16 faces, max_faces 10": 16 - MAX_FACES, "tiny faces below min_face_px": 16}


class RecordingModel:
    """The real TFLite model, with a copy of every input it is given: what the classifier really feeds it."""

    def __init__(self, model) -> None:
        self.model = model
        self.feeds: list[dict[str, np.ndarray]] = []

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.feeds.append({name: np.array(value) for name, value in feeds.items()})
        return self.model(feeds)


@pytest.fixture(scope="module")
def models() -> tuple[EmotionClassifier, object]:
    config = load_config(None, ["runtime.num_threads=1", f"detection.max_faces={MAX_FACES}",
                                f"detection.min_face_px={MIN_FACE_PX}"], env={})
    return build_pipeline(config)


@pytest.fixture
def recorder(models) -> RecordingModel:
    classifier, _ = models
    real = classifier.model
    classifier.model = RecordingModel(real)
    yield classifier.model
    classifier.model = real


@pytest.mark.parametrize("case", CASES)
def test_bad_frames_are_processed_or_skipped_and_counted(models, recorder: RecordingModel, case: str) -> None:
    classifier, pipeline = models
    make, expected = CASES[case]
    frame = make()
    processor = FrameProcessor(pipeline, classifier, Tracker(), every_n_frames=5)
    aggregator = WindowAggregator(classifier.classes, 1.0, "testcam", now=0.0)
    # Two frames: the first runs the detector, the second follows the faces from their landmarks.
    results = [take_frame(lambda: frame, processor, aggregator) for _ in range(2)]
    if expected == "none":
        assert results == [None, None] and aggregator.frames_total == aggregator.dropped_frames_total == 0
    elif expected == "dropped":
        assert results == [None, None] and aggregator.frames_total == 0 and aggregator.dropped_frames_total == 2
    else:
        assert aggregator.frames_total == 2 and aggregator.dropped_frames_total == 0
        assert [len(r.faces) for r in results] == [expected, expected], case
        assert results[0].skipped_detections == SKIPPED_DETECTIONS.get(case, 0), case
        for result in results:
            assert len(result.tracks) == len(result.faces)
            for face in result.faces:
                assert face.crop.shape == (CROP_SIZE, CROP_SIZE) and face.crop.dtype == np.uint8
                assert face.features.shape == (LANDMARK_FEATURES,) and np.isfinite(face.features).all()
    assert len(recorder.feeds) == sum(len(r.faces) for r in results if r is not None)
    for feed in recorder.feeds:
        assert all(np.isfinite(value).all() for value in feed.values()), case
    message = aggregator.flush(2.0)  # the window still closes into a valid payload
    stats = aggregator.stats(2.0, buffered_messages=0, dropped_messages=0, delegate="cpu", source_state="ok")
    assert stats.dropped_frames == aggregator.dropped_frames_total and stats.frames == aggregator.frames_total
    assert stats.skipped_detections == sum(r.skipped_detections for r in results if r is not None)
    if isinstance(expected, int) and expected:
        assert message.faces == expected and len(message.tracks) == expected
        # A whole smiling face reads as happy; a cut one may not (the bottom cut loses the smile).
        assert message.dominant == "happy" or "cut" in case
    else:
        assert message.faces == 0 and message.dominant is None


def test_tiny_faces_are_found_but_left_out_by_min_face_px() -> None:
    """The tiny-face case above sees no face because of min_face_px, not because the detector misses them."""
    config = load_config(None, ["runtime.num_threads=1", "detection.min_face_px=1", "detection.max_faces=20"], env={})
    _, pipeline = build_pipeline(config)
    faces = pipeline.detect(CASES["tiny faces below min_face_px"][0]())
    assert len(faces) == 16 and all(face.width < MIN_FACE_PX for face in faces)


def test_non_finite_landmark_features_never_reach_the_model(models, recorder: RecordingModel) -> None:
    """A face whose features hold NaN or infinities is fed as "no landmarks" (zeros, flag 0), which the model was
    trained on, and the model's answer stays a probability distribution."""
    classifier, pipeline = models
    face: Face = pipeline.detect(ASTRONAUT)[0]
    for poison in (np.nan, np.inf, -np.inf):
        features = face.features.copy()
        features[::7] = poison
        probabilities = classifier.predict(face.crop, features)
        assert np.isfinite(probabilities).all() and math.isclose(float(probabilities.sum()), 1.0, abs_tol=0.02)
    landmark_inputs = [feed[classifier._landmarks] for feed in recorder.feeds]
    assert len(landmark_inputs) == 3
    for value in landmark_inputs:
        assert np.isfinite(value).all() and not value.any()
    classifier.predict(face.crop, face.features)  # a sound face still gets its real landmarks
    assert recorder.feeds[-1][classifier._landmarks].any()
