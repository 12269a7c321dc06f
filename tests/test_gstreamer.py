"""GStreamer pipelines through PyGObject, on real pipelines: a real video with a face through decodebin, videotestsrc
with exact frame counts and colours, pipelines that cannot be built or played (one clear line), and pipelines that
fail mid-run or end while live (reopened). Skipped, saying what to install, where GStreamer is not installed."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from media_helpers import demo_face_bgr, write_video
from mqtt_helpers import subscriber

from edge_app.app import build_pipeline
from edge_app.config import ConfigError, SourceConfig, load_config
from edge_app.pipeline import gstreamer
from edge_app.pipeline.capture import ReconnectingSource, SourceError, open_source, resolve
from edge_app.pipeline.faces import FrameError

try:
    Gst = gstreamer.gst()
except ConfigError as exc:
    pytest.skip(str(exc), allow_module_level=True)

VIDEO_FRAMES = 6
FACE_BOX = (179, 72, 271, 175)  # the astronaut's face in the 512x512 demo photo, as the pipeline finds it


def needs_elements(*names: str) -> pytest.MarkDecorator:
    missing = [name for name in names if Gst.ElementFactory.find(name) is None]
    return pytest.mark.skipif(
        bool(missing),
        reason=f"GStreamer elements {missing} are not installed "
        "(apt install gstreamer1.0-plugins-base gstreamer1.0-plugins-good)",
    )


def source_config(uri: str, *settings: str) -> SourceConfig:
    return load_config(None, [f"source.uri={uri}", "source.fps=0", *settings], env={}).source


def read_frames(source: ReconnectingSource, count: int, seconds: float = 60.0) -> list[np.ndarray]:
    """Up to ``count`` frames, stopping early when the source ends (``seconds`` only guards against a hang)."""
    frames = []
    deadline = time.monotonic() + seconds
    while len(frames) < count and not source.ended and time.monotonic() < deadline:
        frame = source.read()
        if frame is not None:
            frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real MJPEG video (what USB cameras stream) of the demo face."""
    return write_video(tmp_path_factory.mktemp("gst") / "face.avi", [demo_face_bgr()] * VIDEO_FRAMES)


@pytest.mark.parametrize(
    ("uri", "kind"),
    [
        ("videotestsrc ! videoconvert ! appsink", "auto"),
        ("videotestsrc ! videoconvert ! appsink", "gstreamer"),
        ("videotestsrc ! videoconvert ! appsink", "stream"),
    ],
)
def test_a_pipeline_is_read_through_gstreamer(uri: str, kind: str) -> None:
    assert resolve(source_config(uri, f"source.kind={kind}")) == ("gstreamer", uri)


@needs_elements("avidemux", "jpegdec", "decodebin")
def test_faces_are_found_in_a_real_video_through_decodebin(video: Path) -> None:
    source = ReconnectingSource(
        source_config(f"filesrc location={video} ! decodebin ! videoconvert ! appsink", "source.loop=false")
    )
    frames = read_frames(source, VIDEO_FRAMES + 5)
    assert len(frames) == VIDEO_FRAMES and source.ended
    opencv = cv2.cvtColor(cv2.VideoCapture(str(video)).read()[1], cv2.COLOR_BGR2RGB)
    assert frames[0].shape == opencv.shape and np.abs(frames[0].astype(int) - opencv).mean() < 2  # RGB, not BGR
    _, pipeline = build_pipeline(load_config(None, [], env={}))
    for frame in frames:
        faces = pipeline.detect(frame)
        assert len(faces) == 1 and faces[0].landmarks is not None
        assert np.abs(faces[0].box - FACE_BOX).max() < 12, faces[0].box


@needs_elements("avidemux", "jpegdec", "decodebin")
def test_the_service_publishes_the_emotions_of_a_video_read_through_gstreamer(video: Path, mosquitto, clients) -> None:
    broker = mosquitto()
    sub = subscriber(clients, broker, ["emotion/testcam/#"])
    uri = f"filesrc location={video} ! decodebin ! videoconvert ! appsink"
    settings = [f"mqtt.port={broker.port}", "device.id=testcam", f"source.uri={uri}", "source.loop=false"]
    run = subprocess.run(
        [sys.executable, "-m", "edge_app", *(f"--set={s}" for s in settings), "run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    # Delivered to the broker before the service exited; wait for the broker to pass the last stats on.
    assert sub.wait_for(lambda: any(json.loads(p)["frames"] == VIDEO_FRAMES for p in sub.on("emotion/testcam/stats")))
    published = {}
    for topic, payload, _ in sub.messages:
        if payload.startswith(b"{"):
            published.setdefault(topic.rsplit("/", 1)[1], []).append(json.loads(payload))
    assert published["stats"][-1]["frames"] == VIDEO_FRAMES  # every frame of the file, then the service stopped
    windows = [window for window in published["emotions"] if window["frames"]]
    assert windows and all(w["faces"] == 1 and w["dominant"] == "happy" for w in windows), windows


@needs_elements("avidemux", "jpegdec", "decodebin")
def test_a_looping_video_seeks_back_to_its_start_without_a_reopen(video: Path) -> None:
    source = ReconnectingSource(source_config(f"filesrc location={video} ! decodebin ! videoconvert ! appsink"))
    frames = read_frames(source, 3 * VIDEO_FRAMES)
    assert len(frames) == 3 * VIDEO_FRAMES
    assert source.reopens == 0 and source.state == "ok"
    source.close()


@pytest.mark.parametrize("negotiated", ["RGB", "BGR", "I420"])
def test_frames_are_rgb_whatever_the_pipeline_gives_and_end_after_num_buffers(negotiated: str) -> None:
    # 33 px wide: GStreamer pads each 99-byte row to 100 bytes, which the frame must not show.
    uri = f"videotestsrc pattern=red num-buffers=4 ! video/x-raw,format={negotiated},width=33,height=20"
    uri += " ! videoconvert ! appsink" if negotiated == "I420" else " ! appsink"
    source = ReconnectingSource(source_config(uri, "source.loop=false"))
    frames = read_frames(source, 10)
    assert len(frames) == 4 and source.ended and source.reopens == 0
    for frame in frames:
        assert frame.shape == (20, 33, 3) and frame.dtype == np.uint8
        assert (frame[..., 0] > 200).all() and (frame[..., 1:] < 60).all()  # red in channel 0: RGB


def test_a_looping_pipeline_that_cannot_seek_is_built_again() -> None:
    source = ReconnectingSource(
        source_config(
            "videotestsrc num-buffers=2 ! videoconvert ! appsink",
            "source.reopen_initial_s=0.01",
            "source.reopen_max_s=0.01",
        )
    )
    assert len(read_frames(source, 7)) == 7
    assert source.reopens >= 3 and not source.ended


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("videotestsrc ! nosuchelement ! appsink", 'no element "nosuchelement"'),
        ("videotestsrc ! ! appsink", "syntax error"),
        ("videotestsrc ! videoconvert ! fakesink", "must end in appsink"),
    ],
)
def test_a_pipeline_that_cannot_be_built_is_one_config_error(uri: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        resolve(source_config(uri))
    assert "\n" not in str(error.value) and str(error.value).startswith("source.uri: ")


def test_the_service_refuses_a_broken_pipeline_in_one_line() -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_app",
            "run",
            "--set",
            "source.uri=videotestsrc ! nosuchelement ! appsink",
            "--set",
            "mqtt.enabled=false",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and 'no element "nosuchelement"' in lines[0], run.stderr


def test_a_pipeline_that_cannot_play_says_why_in_one_line(tmp_path: Path) -> None:
    uri = f"filesrc location={tmp_path / 'nowhere.avi'} ! decodebin ! videoconvert ! appsink"
    with pytest.raises(SourceError, match=r"cannot play \(Resource not found") as error:
        open_source(*resolve(source_config(uri)), source_config(uri))
    assert "\n" not in str(error.value)


def test_a_pipeline_that_cannot_give_rgb_says_to_add_videoconvert() -> None:
    uri = "videotestsrc ! video/x-raw,format=I420 ! appsink"
    source = ReconnectingSource(source_config(uri, "source.reopen_initial_s=5"))
    deadline = time.monotonic() + 60
    while source.state == "ok" and time.monotonic() < deadline:
        assert source.read() is None
    assert source.state.startswith("reopening: ") and "videoconvert" in source.state


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("videotestsrc ! identity error-after=3 ! videoconvert ! appsink", "Failed after iterations as requested"),
        ("videotestsrc is-live=true num-buffers=2 ! videoconvert ! appsink", "live pipeline ended"),
    ],
)
def test_a_pipeline_that_fails_mid_run_is_reopened_and_flows_again(uri: str, why: str, caplog) -> None:
    source = ReconnectingSource(
        source_config(uri, "source.loop=false", "source.reopen_initial_s=0.01", "source.reopen_max_s=0.01")
    )
    states, frames_after_reopen = [], 0
    deadline = time.monotonic() + 60
    with caplog.at_level(logging.WARNING, "edge_app.pipeline.capture"):
        while frames_after_reopen < 3 and time.monotonic() < deadline:
            try:
                frame = source.read()
            except FrameError:
                continue
            states.append(source.state)
            frames_after_reopen += frame is not None and source.reopens > 0
    assert frames_after_reopen == 3 and source.state == "ok" and not source.ended
    failures = [state for state in states if state.startswith("reopening: ")]
    assert failures and all(why in state for state in failures), failures
    assert any(why in record.getMessage() for record in caplog.records)
    source.close()
