"""Model inputs: crop framing, landmark normalisation, mirroring and frame conversion."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage import data

from edge_app.config import load_config
from edge_app.pipeline.faces import FacePipeline, FrameError, as_rgb8
from edge_app.pipeline.preprocess import (
    CROP_SIZE,
    LANDMARK_FEATURES,
    CropSpec,
    crop_face,
    crop_landmarks,
    eye_centres,
    landmark_features,
    mirror_features,
    mirror_index,
)

SPEC = CropSpec(size_iod=2.76, centre_below_eyes_iod=0.30)


@pytest.fixture(scope="module")
def astronaut_face():
    pipeline = FacePipeline.from_config(load_config(None, [], env={}), SPEC)
    rgb = data.astronaut()
    (face,) = pipeline.detect(rgb)
    return pipeline, rgb, face


def _similarity(points: np.ndarray, angle: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    xy = points[:, :2] @ np.array([[c, s], [-s, c]]) * scale + np.array(shift)
    return np.concatenate([xy, points[:, 2:]], axis=1)


@settings(max_examples=40, deadline=None)
@given(
    angle=st.floats(-0.6, 0.6),
    scale=st.floats(0.2, 5.0),
    shift=st.tuples(st.floats(-500, 500), st.floats(-500, 500)),
)
def test_landmark_features_ignore_position_scale_and_roll(astronaut_face, angle, scale, shift) -> None:
    _, _, face = astronaut_face
    moved = _similarity(face.landmarks, angle, scale, shift)
    np.testing.assert_allclose(landmark_features(moved), face.features, atol=1e-4)


def test_landmark_features_layout(astronaut_face) -> None:
    _, _, face = astronaut_face
    features = face.features
    assert features.shape == (LANDMARK_FEATURES,) and features.dtype == np.float32
    assert features[-1] == 1.0
    points = features[:-1].reshape(-1, 2)
    right, left = eye_centres(points)
    np.testing.assert_allclose(right, [-0.5, 0.0], atol=1e-5)  # centred on the eyes, IOD = 1, level
    np.testing.assert_allclose(left, [0.5, 0.0], atol=1e-5)


@pytest.mark.parametrize("bad", [None, np.full((468, 3), np.nan), np.full((468, 3), np.inf), np.zeros((468, 3))])
def test_missing_or_broken_landmarks_give_the_no_landmarks_input(bad) -> None:
    features = landmark_features(bad)
    assert np.all(features == 0) and np.all(np.isfinite(features))


def test_mirror_table_is_an_involution() -> None:
    index = mirror_index()
    assert sorted(index) == list(range(468))
    np.testing.assert_array_equal(index[index], np.arange(468))
    assert index[33] == 263 and index[133] == 362  # eye corners swap sides


def test_mirrored_features_match_the_flipped_photo(astronaut_face) -> None:
    pipeline, rgb, face = astronaut_face
    (flipped,) = pipeline.detect(np.ascontiguousarray(rgb[:, ::-1]))
    assert np.abs(mirror_features(face.features) - flipped.features).mean() < 0.02
    np.testing.assert_allclose(mirror_features(mirror_features(face.features)), face.features, atol=1e-6)
    assert np.all(mirror_features(np.zeros(LANDMARK_FEATURES)) == 0)


def test_crop_puts_the_eyes_where_the_spec_says(astronaut_face) -> None:
    _, rgb, face = astronaut_face
    assert face.crop.shape == (CROP_SIZE, CROP_SIZE) and face.crop.dtype == np.uint8
    inside = crop_landmarks(face.landmarks, SPEC)
    right, left = eye_centres(inside)
    eye_y = CROP_SIZE / 2 - SPEC.centre_below_eyes_iod * CROP_SIZE / SPEC.size_iod
    half_iod = CROP_SIZE / SPEC.size_iod / 2
    np.testing.assert_allclose(right, [CROP_SIZE / 2 - half_iod, eye_y], atol=1e-3)
    np.testing.assert_allclose(left, [CROP_SIZE / 2 + half_iod, eye_y], atol=1e-3)
    # The pipeline's crop is crop_face over the RGB frame, and the same face as cropping the frame's
    # luminance (how training crops grayscale data) up to rounding: grey after cutting out, not before.
    np.testing.assert_array_equal(crop_face(rgb, *eye_centres(face.landmarks), SPEC), face.crop)
    from_gray = crop_face(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), *eye_centres(face.landmarks), SPEC)
    assert np.abs(from_gray.astype(int) - face.crop).max() <= 1


def test_crop_of_a_face_at_the_frame_edge_is_full_size() -> None:
    gray = np.full((100, 100), 128, np.uint8)
    crop = crop_face(gray, np.array([0.0, 5.0]), np.array([30.0, 5.0]), SPEC)
    assert crop.shape == (CROP_SIZE, CROP_SIZE)


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros((10, 12), np.uint8),
        np.zeros((10, 12, 1), np.uint8),
        np.zeros((10, 12, 4), np.uint8),
        np.zeros((10, 12, 3), np.uint16),
        np.zeros((10, 12, 3), np.float32),
        np.zeros((1, 1, 3), np.uint8),
    ],
)
def test_frames_of_any_common_layout_become_rgb8(frame) -> None:
    rgb = as_rgb8(frame)
    assert rgb.shape == (*frame.shape[:2], 3) and rgb.dtype == np.uint8 and rgb.flags.c_contiguous


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (None, "frame is None"),
        (np.zeros((0, 10, 3), np.uint8), "shape"),
        (np.zeros((10, 10, 5), np.uint8), "5 channels"),
        (np.zeros((10, 10, 3), np.int64), "dtype int64"),
        (np.zeros(10, np.uint8), "shape"),
    ],
)
def test_unusable_frames_are_named(frame, message) -> None:
    with pytest.raises(FrameError, match=message):
        as_rgb8(frame)


def test_bgr_frames_are_converted() -> None:
    bgr = np.zeros((2, 2, 3), np.uint8)
    bgr[..., 0] = 255  # blue in OpenCV order
    assert as_rgb8(bgr, bgr=True)[0, 0].tolist() == [0, 0, 255]
