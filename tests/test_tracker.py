"""Tracker: stable ids by overlap, no id reuse, expiry after missed frames, exponential smoothing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edge_app.config import TrackingConfig
from edge_app.pipeline.geometry import iou_matrix
from edge_app.pipeline.track import Track, Tracker

LEFT = np.array([10.0, 10.0, 110.0, 110.0])
RIGHT = np.array([300.0, 50.0, 400.0, 150.0])
HAPPY = np.array([0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
SAD = np.array([0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0])


def test_iou_of_identical_disjoint_and_half_overlapping_boxes():
    shifted = LEFT + np.array([50.0, 0.0, 50.0, 0.0])
    overlap = iou_matrix(np.stack([LEFT]), np.stack([LEFT, RIGHT, shifted]))
    np.testing.assert_allclose(overlap, [[1.0, 0.0, 5000.0 / 15000.0]])


def test_ids_stay_with_moving_faces_and_follow_input_order():
    tracker = Tracker(iou_match=0.3, max_missed_frames=2, ema_alpha=0.5)
    first = tracker.update([LEFT, RIGHT], [HAPPY, SAD], now=0.0)
    assert [t.id for t in first] == [1, 2]
    step = np.array([5.0, 3.0, 5.0, 3.0])
    second = tracker.update([RIGHT + step, LEFT + step], [SAD, HAPPY], now=0.1)
    assert [t.id for t in second] == [2, 1]
    np.testing.assert_allclose(second[1].box, LEFT + step)
    assert second[1].seconds_seen == pytest.approx(0.1)


def test_a_lost_face_expires_after_max_missed_frames_and_its_id_is_never_reused():
    tracker = Tracker(iou_match=0.3, max_missed_frames=2, ema_alpha=0.5)
    tracker.update([LEFT], [HAPPY], now=0.0)
    tracker.update([], np.empty((0, 7)), now=0.1)
    tracker.update([], np.empty((0, 7)), now=0.2)
    assert [(t.id, t.missed) for t in tracker.active] == [(1, 2)]
    assert [t.id for t in tracker.update([LEFT], [HAPPY], now=0.3)] == [1], "still within max_missed_frames"
    for i in range(3):
        tracker.update([], np.empty((0, 7)), now=0.4 + i / 10)
    assert tracker.active == []
    assert [t.id for t in tracker.update([LEFT], [HAPPY], now=1.0)] == [2]


def test_boxes_below_the_overlap_threshold_start_a_new_track():
    tracker = Tracker(iou_match=0.5, max_missed_frames=5, ema_alpha=0.5)
    tracker.update([LEFT], [HAPPY], now=0.0)
    shifted = LEFT + np.array([50.0, 0.0, 50.0, 0.0])  # IoU 1/3
    assert [t.id for t in tracker.update([shifted], [HAPPY], now=0.1)] == [2]


def test_probabilities_are_smoothed_with_the_configured_alpha():
    tracker = Tracker(iou_match=0.3, max_missed_frames=5, ema_alpha=0.25)
    (track,) = tracker.update([LEFT], [HAPPY], now=0.0)
    np.testing.assert_allclose(track.smoothed, HAPPY)
    (track,) = tracker.update([LEFT], [SAD], now=0.1)
    np.testing.assert_allclose(track.smoothed, 0.75 * HAPPY + 0.25 * SAD)
    assert (track.dominant, track.confidence) == (3, pytest.approx(0.75))
    for i in range(10):
        (track,) = tracker.update([LEFT], [SAD], now=0.2 + i / 10)
    assert track.dominant == 4 and track.smoothed.sum() == pytest.approx(1.0)
    assert (track.first_seen, track.seconds_seen) == (0.0, pytest.approx(1.1))


def test_a_track_holds_no_image_or_landmarks():
    assert {f.name for f in dataclasses.fields(Track)} == {"id", "box", "smoothed", "first_seen", "last_seen", "missed"}


@pytest.mark.parametrize("options, key", [({"ema_alpha": 0.0}, "tracking.ema_alpha"),
                                          ({"iou_match": 1.5}, "tracking.iou_match"),
                                          ({"max_missed_frames": -1}, "tracking.max_missed_frames")])
def test_bad_settings_name_the_key(options, key):
    with pytest.raises(ValueError, match=key):
        Tracker(**options)


def test_mismatched_boxes_and_probabilities_are_an_error():
    with pytest.raises(ValueError, match="2 boxes but 1 probability"):
        Tracker().update([LEFT, RIGHT], [HAPPY], now=0.0)


def test_settings_come_from_the_tracking_section():
    tracker = Tracker.from_config(TrackingConfig(iou_match=0.6, max_missed_frames=3, ema_alpha=0.2))
    assert (tracker.iou_match, tracker.max_missed_frames, tracker.ema_alpha) == (0.6, 3, 0.2)
