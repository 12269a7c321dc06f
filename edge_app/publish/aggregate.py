"""Per-window aggregation into the only payloads that leave the device.

The payload models forbid extra fields and hold only numbers and labels, so no image, crop or landmark can be put
into a message: privacy by construction, not by care.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Annotated, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from edge_app.pipeline.track import Track

Label = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
DeviceId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[^/+#\s]+$")]
Timestamp = Annotated[str, StringConstraints(pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
NonNegative = Annotated[float, Field(ge=0.0)]
LATENCY_STAGES = ("detect", "landmarks", "classify", "total")
DECIMALS = 4


class Payload(BaseModel):
    """Strict base: unknown fields are errors and every float must be finite."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class TrackSummary(Payload):
    id: Annotated[int, Field(ge=0)]
    dominant: Label
    confidence: Probability
    probabilities: dict[Label, Probability]
    seconds_seen: NonNegative


class EmotionsMessage(Payload):
    """One aggregation window, published on ``<prefix>/<device>/emotions``."""

    seq: Annotated[int, Field(ge=1)]
    ts: Timestamp
    device: DeviceId
    window_s: Annotated[float, Field(gt=0.0)]
    frames: Annotated[int, Field(ge=0)]
    fps: NonNegative
    faces: Annotated[int, Field(ge=0)]
    tracks_seen: Annotated[int, Field(ge=0)]
    emotions: dict[Label, Probability]
    dominant: Optional[Label]  # noqa: UP045 (pydantic evaluates it at run time; Python 3.9 lacks X | None)
    tracks: list[TrackSummary]
    # False when the privacy switch had sensing off as the window closed: the camera was closed, no frame read
    sensing: bool = True

    @model_validator(mode="after")
    def _labels_agree(self) -> EmotionsMessage:
        if self.dominant is not None and self.dominant not in self.emotions:
            raise ValueError(f"dominant {self.dominant!r} is not one of the emotion classes")
        for track in self.tracks:
            if track.probabilities.keys() != self.emotions.keys():
                raise ValueError(f"track {track.id} probabilities do not have the emotion classes")
        return self


class Latency(Payload):
    detect: NonNegative
    landmarks: NonNegative
    classify: NonNegative
    total: NonNegative


DelegateName = Literal["cpu", "edgetpu", "gpu"]


class Delegates(Payload):
    """Where each network runs (``runtime.delegate``, or ``cpu`` where it could not load or does not apply)."""

    detector: DelegateName
    landmarks: DelegateName
    classifier: DelegateName


class StatsMessage(Payload):
    """Health figures, published on ``<prefix>/<device>/stats``."""

    ts: Timestamp
    device: DeviceId
    fps: NonNegative
    latency_ms: Latency
    frames: Annotated[int, Field(ge=0)]
    dropped_frames: Annotated[int, Field(ge=0)]
    skipped_detections: Annotated[int, Field(ge=0)]
    buffered_messages: Annotated[int, Field(ge=0)]
    dropped_messages: Annotated[int, Field(ge=0)]
    delegate: DelegateName  # the classifier's, as before ``delegates``
    delegates: Delegates
    source_state: Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,32}$")]
    uptime_s: NonNegative
    sensing: bool = True  # the privacy switch: False while the camera is closed


def utc_timestamp(moment: datetime | None = None) -> str:
    """ISO 8601 UTC with milliseconds and a ``Z`` suffix, as Home Assistant and Frigate write it."""
    moment = moment or datetime.now(timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class _TrackWindow:
    """What the window keeps of one track: counts and probabilities only."""

    frames: int = 0
    probability_sum: np.ndarray | None = None
    last: Track | None = None


@dataclass
class _WindowFigures:
    frames: int = 0
    dropped_frames: int = 0
    elapsed_s: float = 0.0
    latency_sum: dict[str, float] = field(default_factory=lambda: dict.fromkeys(LATENCY_STAGES, 0.0))
    latency_count: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LATENCY_STAGES, 0))

    @property
    def fps(self) -> float:
        return self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def latency_ms(self) -> Latency:
        return Latency(**{s: round(self.latency_sum[s] / max(self.latency_count[s], 1), 3) for s in LATENCY_STAGES})


class WindowAggregator:
    """Collects tracker output frame by frame and turns every ``window_s`` seconds into one ``EmotionsMessage``.

    Times are monotonic seconds supplied by the caller; ``seq`` starts at ``first_seq`` (1, or where the publisher's
    queue says an earlier run stopped) and never repeats.
    """

    def __init__(self, classes: Sequence[str], window_s: float, device: str, now: float = 0.0,
                 first_seq: int = 1) -> None:
        if window_s <= 0 or not math.isfinite(window_s):
            raise ValueError(f"aggregate.window_s: expected a positive number of seconds, got {window_s!r}")
        self.classes = tuple(classes)
        self.window_s = float(window_s)
        self.device = device
        self.started = now
        self.frames_total = 0
        self.dropped_frames_total = 0
        self.skipped_detections_total = 0
        self._next_seq = first_seq
        self._window_start = now
        self._tracks: dict[int, _TrackWindow] = {}
        self._faces_now = 0
        self._current = _WindowFigures()
        self._last: _WindowFigures | None = None

    @classmethod
    def from_config(cls, section, classes: Sequence[str], device: str, now: float = 0.0,
                    first_seq: int = 1) -> WindowAggregator:
        """Build from the ``aggregate`` config section."""
        return cls(classes, section.window_s, device, now, first_seq)

    def add_frame(self, tracks: Sequence[Track], faces_now: int, now: float,
                  latencies: Mapping[str, float] | None = None, skipped_detections: int = 0) -> None:
        """Record one processed frame: the tracks alive in it, the per-stage milliseconds that were measured, and
        the faces the detector found but the pipeline left out (too small, or beyond the face limit)."""
        self._current.frames += 1
        self.frames_total += 1
        self.skipped_detections_total += int(skipped_detections)
        self._faces_now = int(faces_now)
        for stage, ms in (latencies or {}).items():
            if stage in self._current.latency_sum and math.isfinite(ms):
                self._current.latency_sum[stage] += float(ms)
                self._current.latency_count[stage] += 1
        for track in tracks:
            kept = self._tracks.setdefault(track.id, _TrackWindow())
            kept.frames += 1
            smoothed = np.asarray(track.smoothed, dtype=np.float64)
            kept.probability_sum = smoothed.copy() if kept.probability_sum is None else kept.probability_sum + smoothed
            kept.last = track

    def add_dropped_frame(self) -> None:
        """Count a frame that was read but not processed (unreadable, or skipped to keep up)."""
        self._current.dropped_frames += 1
        self.dropped_frames_total += 1

    def due(self, now: float) -> bool:
        return now - self._window_start >= self.window_s

    def flush(self, now: float, sensing: bool = True) -> EmotionsMessage:
        """Close the window (even an empty one, so subscribers see the device is alive) and start the next;
        ``sensing``: the privacy switch's state, published with it."""
        self._current.elapsed_s = max(now - self._window_start, 0.0)
        track_frames = sum(t.frames for t in self._tracks.values())
        if track_frames:
            mean = sum(t.probability_sum for t in self._tracks.values()) / track_frames
            emotions = self._rounded(mean)
            dominant = self.classes[int(np.argmax(mean))]
        else:
            emotions = dict.fromkeys(self.classes, 0.0)
            dominant = None
        message = EmotionsMessage(
            seq=self._next_seq,
            ts=utc_timestamp(),
            device=self.device,
            window_s=self.window_s,
            frames=self._current.frames,
            fps=round(self._current.fps, 2),
            faces=self._faces_now,
            tracks_seen=len(self._tracks),
            emotions=emotions,
            dominant=dominant,
            tracks=[self._summary(tid, kept.last) for tid, kept in sorted(self._tracks.items())],
            sensing=sensing,
        )
        self._next_seq += 1
        self._last = self._current
        self._current = _WindowFigures()
        self._tracks = {}
        self._faces_now = 0
        self._window_start = now
        return message

    def stats(self, now: float, *, buffered_messages: int, dropped_messages: int, delegate: str,
              source_state: str, delegates: Mapping[str, str] | None = None, sensing: bool = True) -> StatsMessage:
        """Health figures: fps and mean latencies of the last closed window, frame counters since start.

        ``delegates`` maps detector, landmarks and classifier to where each runs; None: all on ``delegate``.
        ``sensing``: the privacy switch's state."""
        window = self._last or self._current
        return StatsMessage(
            ts=utc_timestamp(),
            device=self.device,
            fps=round(window.fps, 2),
            latency_ms=window.latency_ms(),
            frames=self.frames_total,
            dropped_frames=self.dropped_frames_total,
            skipped_detections=self.skipped_detections_total,
            buffered_messages=buffered_messages,
            dropped_messages=dropped_messages,
            delegate=delegate,
            delegates=Delegates.model_validate(delegates or dict.fromkeys(Delegates.model_fields, delegate)),
            source_state=source_state,
            uptime_s=round(max(now - self.started, 0.0), 3),
            sensing=sensing,
        )

    def _rounded(self, probabilities: np.ndarray) -> dict[str, float]:
        return {c: min(max(round(float(p), DECIMALS), 0.0), 1.0) for c, p in zip(self.classes, probabilities)}

    def _summary(self, track_id: int, track: Track) -> TrackSummary:
        return TrackSummary(
            id=track_id,
            dominant=self.classes[track.dominant],
            confidence=min(max(round(track.confidence, DECIMALS), 0.0), 1.0),
            probabilities=self._rounded(track.smoothed),
            seconds_seen=round(track.seconds_seen, 3),
        )
