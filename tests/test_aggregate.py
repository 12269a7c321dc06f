"""Window aggregation and the strict payload schema that keeps images and landmarks off the wire."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pydantic import ValidationError

from edge_app.config import AggregateConfig
from edge_app.emotions import EMOTIONS
from edge_app.pipeline.track import Tracker
from edge_app.publish.aggregate import EmotionsMessage, StatsMessage, WindowAggregator

LEFT = np.array([10.0, 10.0, 110.0, 110.0])
RIGHT = np.array([300.0, 50.0, 400.0, 150.0])
HAPPY = np.array([0.0, 0.0, 0.0, 0.9, 0.0, 0.0, 0.1])
SAD = np.array([0.0, 0.0, 0.0, 0.0, 0.8, 0.0, 0.2])
LATENCY = {"detect": 2.0, "landmarks": 3.0, "classify": 1.0, "total": 7.0}


def test_an_empty_window_is_still_a_message():
    aggregator = WindowAggregator(EMOTIONS, 10.0, "cam1", now=0.0)
    message = aggregator.flush(10.0)
    assert (message.seq, message.faces, message.tracks_seen, message.frames, message.dominant) == (1, 0, 0, 0, None)
    assert message.emotions == dict.fromkeys(EMOTIONS, 0.0) and message.tracks == []
    assert message.ts.endswith("Z") and message.device == "cam1"


def test_seq_increases_and_due_follows_the_window():
    aggregator = WindowAggregator(EMOTIONS, 2.0, "cam1", now=100.0)
    assert not aggregator.due(101.9) and aggregator.due(102.0)
    seqs = [aggregator.flush(102.0 + 2 * i).seq for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    assert not aggregator.due(111.9) and aggregator.due(112.0)


def test_emotions_are_the_frame_weighted_mean_over_tracks():
    tracker = Tracker(iou_match=0.3, max_missed_frames=5, ema_alpha=1.0)
    aggregator = WindowAggregator(EMOTIONS, 1.0, "cam1", now=0.0)
    for frame in range(3):  # the happy face is in 3 frames, the sad one in 1
        boxes, probabilities = ([LEFT, RIGHT], [HAPPY, SAD]) if frame == 2 else ([LEFT], [HAPPY])
        now = 0.25 * (frame + 1)
        aggregator.add_frame(tracker.update(boxes, probabilities, now), len(boxes), now, LATENCY)
    aggregator.add_dropped_frame()
    message = aggregator.flush(1.0)
    assert (message.frames, message.faces, message.tracks_seen, message.fps) == (3, 2, 2, 3.0)
    assert message.emotions["happy"] == pytest.approx(0.9 * 3 / 4)
    assert message.emotions["sad"] == pytest.approx(0.8 / 4)
    assert message.emotions["neutral"] == pytest.approx((0.1 * 3 + 0.2) / 4)
    assert message.dominant == "happy"
    happy, sad = message.tracks
    assert (happy.id, happy.dominant, happy.confidence, happy.seconds_seen) == (1, "happy", 0.9, 0.5)
    assert (sad.id, sad.dominant, sad.seconds_seen) == (2, "sad", 0.0)
    assert set(happy.probabilities) == set(EMOTIONS)

    stats = aggregator.stats(1.5, buffered_messages=4, dropped_messages=1, delegate="cpu", source_state="streaming")
    assert (stats.frames, stats.dropped_frames, stats.fps, stats.uptime_s) == (3, 1, 3.0, 1.5)
    assert stats.latency_ms.model_dump() == LATENCY
    assert aggregator.flush(2.0).tracks_seen == 0, "a new window starts empty"


def test_probabilities_are_rounded_to_four_decimals():
    tracker = Tracker()
    aggregator = WindowAggregator(EMOTIONS, 1.0, "cam1", now=0.0)
    probabilities = np.full(7, 1 / 7)
    aggregator.add_frame(tracker.update([LEFT], [probabilities], 0.1), 1, 0.1)
    message = aggregator.flush(1.0)
    assert all(value == round(1 / 7, 4) for value in message.emotions.values())
    assert all(value == round(1 / 7, 4) for value in message.tracks[0].probabilities.values())


def valid_payload() -> dict:
    aggregator = WindowAggregator(EMOTIONS, 1.0, "cam1", now=0.0)
    aggregator.add_frame(Tracker().update([LEFT], [HAPPY], 0.1), 1, 0.1)
    return json.loads(aggregator.flush(1.0).model_dump_json())


@pytest.mark.parametrize("change", [
    lambda p: p.update(image=[[0, 1], [2, 3]]),
    lambda p: p["tracks"][0].update(landmarks=[[0.1, 0.2, 0.3]]),
    lambda p: p["tracks"][0].update(crop="aGVsbG8="),
    lambda p: p.update(fps=math.nan),
    lambda p: p["emotions"].update(happy=math.inf),
    lambda p: p.update(dominant="bored"),
    lambda p: p.update(ts="2026-01-01 10:00:00"),
    lambda p: p.update(device="a/b"),
    lambda p: p["emotions"].update(happy=[0.1, 0.2]),
])
def test_payload_schema_rejects_extra_fields_and_bad_values(change):
    payload = valid_payload()
    EmotionsMessage.model_validate(payload)
    change(payload)
    with pytest.raises(ValidationError):
        EmotionsMessage.model_validate(payload)


def test_stats_schema_rejects_extra_fields():
    aggregator = WindowAggregator(EMOTIONS, 1.0, "cam1", now=0.0)
    payload = aggregator.stats(1.0, buffered_messages=0, dropped_messages=0, delegate="cpu",
                               source_state="streaming").model_dump()
    payload["frame"] = "base64..."
    with pytest.raises(ValidationError):
        StatsMessage.model_validate(payload)


def test_windows_and_stats_say_whether_sensing_was_on():
    aggregator = WindowAggregator(EMOTIONS, 1.0, "cam1", now=0.0)
    assert aggregator.flush(1.0).sensing is True
    paused = aggregator.flush(2.0, sensing=False)
    assert (paused.sensing, paused.frames, paused.dominant) == (False, 0, None)
    stats = aggregator.stats(2.0, buffered_messages=0, dropped_messages=0, delegate="cpu", source_state="off",
                             sensing=False)
    assert stats.model_dump()["sensing"] is False
    with pytest.raises(ValidationError):
        EmotionsMessage.model_validate({**paused.model_dump(), "sensing": "a frame"})


def test_a_bad_window_length_is_an_error_naming_the_key():
    with pytest.raises(ValueError, match="aggregate.window_s"):
        WindowAggregator(EMOTIONS, 0.0, "cam1")


def test_a_serialised_window_has_exactly_the_schema_keys():
    payload = valid_payload()
    assert set(payload) == {"seq", "ts", "device", "window_s", "frames", "fps", "faces", "tracks_seen", "emotions",
                            "dominant", "tracks", "sensing"}
    assert set(payload["emotions"]) == set(EMOTIONS)
    (track,) = payload["tracks"]
    assert set(track) == {"id", "dominant", "confidence", "probabilities", "seconds_seen"}
    assert set(track["probabilities"]) == set(EMOTIONS)
    numbers = [*payload["emotions"].values(), *track["probabilities"].values(), track["confidence"]]
    assert all(isinstance(value, float) for value in numbers)


def test_window_length_comes_from_the_aggregate_section():
    aggregator = WindowAggregator.from_config(AggregateConfig(window_s=2.5), EMOTIONS, "cam1", now=0.0)
    assert not aggregator.due(2.4) and aggregator.due(2.5)
    assert aggregator.flush(2.5).window_s == 2.5
