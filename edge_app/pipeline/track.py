"""Multi-face tracker: stable ids by box overlap and smoothed class probabilities per face.

A track keeps only its box, probabilities and times: never a crop or landmarks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_app.pipeline.geometry import iou_matrix


@dataclass
class Track:
    """One face followed over frames; ``smoothed`` is the exponential moving average of its class probabilities."""

    id: int
    box: np.ndarray  # x0, y0, x1, y1 in pixels
    smoothed: np.ndarray
    first_seen: float
    last_seen: float
    missed: int = 0

    @property
    def dominant(self) -> int:
        return int(np.argmax(self.smoothed))

    @property
    def confidence(self) -> float:
        return float(self.smoothed[self.dominant])

    @property
    def seconds_seen(self) -> float:
        return self.last_seen - self.first_seen


class Tracker:
    """Greedy IoU matching of this frame's faces to live tracks; ids grow and are never reused while running."""

    def __init__(self, iou_match: float = 0.3, max_missed_frames: int = 15, ema_alpha: float = 0.4) -> None:
        if not 0.0 < ema_alpha <= 1.0:
            raise ValueError(f"tracking.ema_alpha: expected a number in (0, 1], got {ema_alpha!r}")
        if not 0.0 <= iou_match <= 1.0:
            raise ValueError(f"tracking.iou_match: expected a number in [0, 1], got {iou_match!r}")
        if max_missed_frames < 0:
            raise ValueError(f"tracking.max_missed_frames: expected an integer >= 0, got {max_missed_frames!r}")
        self.iou_match = iou_match
        self.max_missed_frames = max_missed_frames
        self.ema_alpha = ema_alpha
        self.active: list[Track] = []  # live tracks, matched or missed for at most max_missed_frames
        self._next_id = 1

    @classmethod
    def from_config(cls, section) -> Tracker:
        """Build from the ``tracking`` config section."""
        return cls(section.iou_match, section.max_missed_frames, section.ema_alpha)

    def update(self, boxes: Sequence[np.ndarray] | np.ndarray, probabilities: Sequence[np.ndarray] | np.ndarray,
               now: float) -> list[Track]:
        """Match this frame's faces to tracks and return the tracks seen in this frame, in input order."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if len(boxes) != len(probabilities):
            raise ValueError(f"got {len(boxes)} boxes but {len(probabilities)} probability vectors")
        assigned: list[Track | None] = [None] * len(boxes)
        if self.active and len(boxes):
            overlap = iou_matrix(boxes, np.stack([t.box for t in self.active]))
            for flat in np.argsort(overlap, axis=None)[::-1]:
                face, track = np.unravel_index(flat, overlap.shape)
                if overlap[face, track] < self.iou_match or overlap[face, track] <= 0:
                    break
                if assigned[face] is None and not any(a is self.active[track] for a in assigned):
                    assigned[face] = self.active[track]
        for track in self.active:
            if not any(a is track for a in assigned):
                track.missed += 1
        self.active = [t for t in self.active if t.missed <= self.max_missed_frames]
        for i, track in enumerate(assigned):
            if track is None:
                assigned[i] = Track(self._next_id, boxes[i].copy(), probabilities[i].copy(), now, now)
                self._next_id += 1
                self.active.append(assigned[i])
            else:
                track.box = boxes[i].copy()
                track.smoothed = self.ema_alpha * probabilities[i] + (1.0 - self.ema_alpha) * track.smoothed
                track.last_seen = now
                track.missed = 0
        return list(assigned)
