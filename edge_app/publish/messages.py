"""The wire contract: the only payloads that leave the device, on ``<prefix>/<device>/emotions`` and ``.../stats``.

The models forbid extra fields and hold only numbers and labels, so no image, crop or landmark can be put into a
message: privacy by construction, not by care. ``aggregate`` fills them; ``mqtt`` sends them.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

Label = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
DeviceId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[^/+#\s]+$")]
Timestamp = Annotated[str, StringConstraints(pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
NonNegative = Annotated[float, Field(ge=0.0)]
LATENCY_STAGES = ("detect", "landmarks", "classify", "total")


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
