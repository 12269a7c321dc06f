"""One frame through the pipeline: faces found or followed, classified and tracked (``FrameProcessor``), and the
frame step every loop runs (``take_frame``): read, process, add to the window.

``run`` and ``bench`` both go through ``take_frame`` (``edge_app.app.Service.step``), so the benchmark times the
service's own work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edge_app.pipeline.classify import EmotionClassifier
from edge_app.pipeline.faces import Face, FacePipeline, FrameError, as_rgb8
from edge_app.pipeline.track import Track, Tracker
from edge_app.publish.aggregate import WindowAggregator

log = logging.getLogger(__name__)


@dataclass
class FrameResult:
    """What one frame gave: the faces (on-device only), their tracks (in the same order), and stage milliseconds.

    ``ms`` has ``detect`` (the face detector) on detection frames, ``landmarks`` (Face Mesh, crops and features,
    whether the faces were found or followed), ``classify``, ``track`` and ``total`` (of these), and from
    ``take_frame`` also ``read`` (the source's read and the colour conversion) and ``aggregate`` (adding the frame to
    the window). ``skipped_detections``: faces
    the detector found in this frame that were left out (under ``detection.min_face_px``, beyond ``max_faces``).
    """

    faces: list[Face]
    tracks: list[Track]
    ms: dict[str, float] = field(default_factory=dict)
    skipped_detections: int = 0
    frame_size: tuple[int, int] = (0, 0)  # width, height


class FrameProcessor:
    """Follow each face from its landmarks; every ``every_n_frames`` frames, or when a face was lost, also detect
    and add the new faces; classify every face; match them to tracks. Used by ``run`` and ``bench`` alike."""

    def __init__(self, pipeline: FacePipeline, classifier: EmotionClassifier, tracker: Tracker,
                 every_n_frames: int) -> None:
        self.pipeline = pipeline
        self.classifier = classifier
        self.tracker = tracker
        self.every_n_frames = every_n_frames
        self.frame_index = 0
        self._previous: list[Face] = []

    def __call__(self, rgb: np.ndarray, now: float) -> FrameResult:
        ms: dict[str, float] = {}
        t0 = time.perf_counter()
        faces, skipped = self._faces(rgb, ms)
        t1 = time.perf_counter()
        probabilities = [self.classifier.predict(face.crop, face.features) for face in faces]
        t2 = time.perf_counter()
        tracks = self.tracker.update([face.box for face in faces], probabilities, now)
        t3 = time.perf_counter()
        ms.update(classify=(t2 - t1) * 1000, track=(t3 - t2) * 1000, total=(t3 - t0) * 1000)
        self._previous = faces
        self.frame_index += 1
        return FrameResult(faces, tracks, ms, skipped, (int(rgb.shape[1]), int(rgb.shape[0])))

    def _faces(self, rgb: np.ndarray, ms: dict[str, float]) -> tuple[list[Face], int]:
        """This frame's faces and how many detections were left out (0 when the faces were only followed).

        Followed faces are kept on detection frames too: the detector only adds the faces it finds that no followed
        face covers, so a face it misses in one frame (a low score, motion blur) does not vanish from its track.
        """
        followed = [f for f in self.pipeline.follow(rgb, self._previous, ms) if f is not None] if self._previous else []
        if followed and len(followed) == len(self._previous) and self.frame_index % self.every_n_frames:
            return followed, 0
        return self.pipeline.detect_counting_skipped(rgb, ms, followed)


def take_frame(read: Callable[[], np.ndarray | None], processor: FrameProcessor,
               aggregator: WindowAggregator) -> FrameResult | None:
    """Read one frame and put what it gives into the window; None when there was no usable frame.

    ``read`` returns a frame in any layout ``as_rgb8`` accepts (the source's RGB frames pass unchanged) or None
    when there is none now (a source being reopened). A frame that cannot be an 8-bit image (empty, wrong shape or
    dtype) is counted in ``dropped_frames`` and skipped: one bad frame never stops the service.
    """
    started = time.perf_counter()
    try:
        frame = read()
        if frame is None:
            return None
        rgb = as_rgb8(frame)
    except FrameError as exc:
        log.debug("frame dropped: %s", exc)
        aggregator.add_dropped_frame()
        return None
    read_ms = (time.perf_counter() - started) * 1000
    now = time.monotonic()
    result = processor(rgb, now)
    aggregated = time.perf_counter()
    aggregator.add_frame(result.tracks, len(result.faces), now, result.ms, result.skipped_detections)
    result.ms.update(read=read_ms, aggregate=(time.perf_counter() - aggregated) * 1000)
    return result
