"""Detections are merged with the faces Face Mesh follows (MediaPipe's association), on a real video.

The astronaut is darkened in some frames: the detector's score then falls under ``detection.min_score`` (set
between the two scores) while Face Mesh still follows the face from its landmarks. A face the detector misses must
keep its track; a detection of a face already followed must not become a second face; a new face is added.
"""

from __future__ import annotations

import numpy as np
from media_helpers import write_video
from skimage import data

from edge_app.app import build_pipeline
from edge_app.config import load_config
from edge_app.pipeline.capture import ReconnectingSource
from edge_app.pipeline.frames import FrameProcessor
from edge_app.pipeline.track import Tracker

# The 256x256 around the astronaut's face: two side by side are one 512x256 frame, the face as large as in the photo.
ASTRONAUT_BGR = np.ascontiguousarray(data.astronaut()[:256, 97:353, ::-1])
DARK = 0.3  # the detector's score on the darkened face: ~0.88 against ~0.92 (measured through this MJPEG video)
MIN_SCORE = 0.9
DARK_BGR = (ASTRONAUT_BGR * DARK).astype(np.uint8)


def _frame(left: np.ndarray, right: np.ndarray | None = None) -> np.ndarray:
    return np.concatenate([left, np.zeros_like(left) if right is None else right], axis=1)


def _run(video, every_n_frames: int) -> list[list[int]]:
    config = load_config(None, [f"source.uri={video}", "source.loop=false", f"detection.min_score={MIN_SCORE}",
                                f"detection.every_n_frames={every_n_frames}", "runtime.num_threads=1"], env={})
    classifier, pipeline = build_pipeline(config)
    processor = FrameProcessor(pipeline, classifier, Tracker.from_config(config.tracking), every_n_frames)
    source = ReconnectingSource(config.source)
    track_ids = []
    try:
        while not source.ended:
            frame = source.read()
            if frame is not None:
                track_ids.append([t.id for t in processor(frame, float(len(track_ids))).tracks])
    finally:
        source.close()
    return track_ids


def test_the_scores_straddle_min_score_through_the_video(tmp_path) -> None:
    """The premise of the tests below: the detector misses the dark face at MIN_SCORE, Face Mesh does not."""
    video = write_video(tmp_path / "premise.avi", [_frame(ASTRONAUT_BGR), _frame(DARK_BGR)])
    config = load_config(None, [f"source.uri={video}", "source.loop=false", "detection.min_score=0.5"], env={})
    _, pipeline = build_pipeline(config)
    source = ReconnectingSource(config.source)
    bright, dark = source.read(), source.read()
    source.close()
    (face,) = pipeline.detect(bright)
    assert max(d.score for d in pipeline.detector(bright)) > MIN_SCORE
    assert all(d.score < MIN_SCORE for d in pipeline.detector(dark))
    (followed,) = pipeline.follow(dark, [face])
    assert followed is not None and followed.landmarks is not None


def test_a_face_the_detector_misses_keeps_its_track_and_is_not_doubled(tmp_path) -> None:
    frames = [_frame(ASTRONAUT_BGR)] + [_frame(DARK_BGR)] * 6 + [_frame(ASTRONAUT_BGR)] * 4
    ids = _run(write_video(tmp_path / "dark.avi", frames), every_n_frames=2)
    # Detection frames 2, 4, 6 see no face above MIN_SCORE; 8 and 10 see the followed face again.
    assert ids == [[1]] * len(frames)


def test_a_new_face_is_added_beside_the_followed_one(tmp_path) -> None:
    frames = [_frame(ASTRONAUT_BGR)] * 2 + [_frame(DARK_BGR, ASTRONAUT_BGR)] * 4
    ids = _run(write_video(tmp_path / "second.avi", frames), every_n_frames=2)
    # Frame 2 is a detection frame: the new face is added, the dark one the detector misses stays track 1.
    assert ids == [[1], [1]] + [[1, 2]] * 4


def test_two_followed_faces_that_converge_on_one_face_become_one(tmp_path) -> None:
    """Two tracks drifting onto the same face would otherwise both follow it for ever, never re-detected apart."""
    config = load_config(None, ["runtime.num_threads=1"], env={})
    _, pipeline = build_pipeline(config)
    frame = _frame(ASTRONAUT_BGR)[:, :, ::-1].copy()
    (face,) = pipeline.detect(frame)
    first, second = pipeline.follow(frame, [face, face])
    assert first is not None and second is None
