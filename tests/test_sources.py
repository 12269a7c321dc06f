"""Frame sources on real files: the demo photo, image folders with a corrupt file, video files (looping, truncated),
rotation and mirroring, the frame-rate cap, and a camera that is not there (reopened with backoff)."""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from media_helpers import write_video

from edge_app.config import ConfigError, SourceConfig, load_config
from edge_app.pipeline.capture import (
    PICAMERA2_MISSING,
    STREAM_TIMEOUT_S,
    ImageError,
    ReconnectingSource,
    demo_image,
    read_image,
    redact,
    resolve,
)
from edge_app.pipeline.faces import FrameError

VIDEO_FRAMES = 12


def source_config(uri: str, *settings: str) -> SourceConfig:
    return load_config(None, [f"source.uri={uri}", "source.fps=0", *settings], env={}).source


def read_all(source: ReconnectingSource, limit: int = 200, seconds: float = 10.0) -> tuple[list[np.ndarray], list[str]]:
    """Frames and FrameError messages until the source ends (or a limit)."""
    frames, errors = [], []
    deadline = time.monotonic() + seconds
    while not source.ended and len(frames) < limit and time.monotonic() < deadline:
        try:
            frame = source.read()
        except FrameError as exc:
            errors.append(str(exc))
            continue
        if frame is not None:
            frames.append(frame)
    return frames, errors


@pytest.fixture(scope="module")
def demo_rgb() -> np.ndarray:
    return read_image(demo_image())


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory, demo_rgb: np.ndarray) -> Path:
    """A real MJPEG video of the demo face, one frame darker each time (so frames can be told apart)."""
    path = tmp_path_factory.mktemp("video") / "faces.avi"
    return write_video(path, (cv2.cvtColor((demo_rgb * (1 - i / 40)).astype(np.uint8), cv2.COLOR_RGB2BGR)
                              for i in range(VIDEO_FRAMES)))


def test_demo_photo_is_the_bundled_astronaut_and_loops(demo_rgb: np.ndarray) -> None:
    assert demo_image().stat().st_size < 60_000
    assert demo_rgb.shape == (512, 512, 3) and demo_rgb.dtype == np.uint8
    source = ReconnectingSource(source_config("demo"))
    frames, errors = read_all(source, limit=5)
    assert len(frames) == 5 and not errors and source.state == "ok"
    assert all(np.array_equal(frame, demo_rgb) for frame in frames)


def test_image_folder_skips_and_counts_a_corrupt_file(tmp_path: Path, demo_rgb: np.ndarray, caplog) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(demo_rgb, cv2.COLOR_RGB2BGR))
    (tmp_path / "b.jpg").write_bytes(b"this is not a JPEG")
    cv2.imwrite(str(tmp_path / "c.jpg"), cv2.cvtColor(demo_rgb[::2, ::2], cv2.COLOR_RGB2BGR))
    (tmp_path / "notes.txt").write_text("ignored: not an image suffix")
    source = ReconnectingSource(source_config(str(tmp_path), "source.loop=false"))
    frames, errors = read_all(source)
    assert [f.shape for f in frames] == [(512, 512, 3), (256, 256, 3)]
    assert np.array_equal(frames[0], demo_rgb)  # PNG: lossless, and RGB (not BGR)
    assert len(errors) == 1 and "b.jpg" in errors[0]
    assert any("b.jpg" in record.getMessage() for record in caplog.records)
    assert source.state == "ended"


def test_image_folder_loops_and_warns_once_per_bad_file(tmp_path: Path, demo_rgb: np.ndarray, caplog) -> None:
    cv2.imwrite(str(tmp_path / "a.jpg"), cv2.cvtColor(demo_rgb, cv2.COLOR_RGB2BGR))
    (tmp_path / "b.jpg").write_bytes(b"")
    frames, errors = read_all(ReconnectingSource(source_config(str(tmp_path))), limit=3)
    assert len(frames) == 3 and len(errors) >= 2
    assert sum("b.jpg" in record.getMessage() for record in caplog.records) == 1


def test_video_plays_once_or_loops(video: Path) -> None:
    once = ReconnectingSource(source_config(str(video), "source.loop=false"))
    frames, _ = read_all(once)
    assert len(frames) == VIDEO_FRAMES and once.state == "ended"
    assert frames[0].mean() > frames[-1].mean()  # in order
    looping = ReconnectingSource(source_config(str(video)))
    frames, _ = read_all(looping, limit=VIDEO_FRAMES * 2 + 3)
    assert len(frames) == VIDEO_FRAMES * 2 + 3 and looping.state == "ok" and looping.reopens == 0
    assert abs(frames[VIDEO_FRAMES].mean() - frames[0].mean()) < 1.0  # back at the start


def test_truncated_video_ends_early_or_is_reopened(tmp_path: Path, video: Path, caplog) -> None:
    truncated = tmp_path / "truncated.avi"
    data = video.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    once = ReconnectingSource(source_config(str(truncated), "source.loop=false"))
    frames, _ = read_all(once)
    assert 0 < len(frames) < VIDEO_FRAMES and once.state == "ended"
    assert any("truncated" in record.getMessage() for record in caplog.records)

    looping = ReconnectingSource(source_config(str(truncated), "source.reopen_initial_s=0.1"))
    states = set()
    count = 0
    while count < VIDEO_FRAMES * 2:
        frame = looping.read()
        states.add(looping.state.split(":")[0])
        count += frame is not None
    assert states == {"ok", "reopening"} and looping.reopens >= 1


def test_rotation_and_mirroring(demo_rgb: np.ndarray) -> None:
    expected = {
        ("90", "false"): np.rot90(demo_rgb, k=-1),  # clockwise
        ("180", "false"): np.rot90(demo_rgb, k=2),
        ("270", "true"): np.rot90(demo_rgb, k=1)[:, ::-1],
        ("0", "true"): demo_rgb[:, ::-1],
    }
    for (rotate, mirror), want in expected.items():
        source = ReconnectingSource(source_config("demo", f"source.rotate={rotate}", f"source.mirror={mirror}"))
        frame = source.read()
        assert frame is not None and frame.flags["C_CONTIGUOUS"]
        assert np.array_equal(frame, want), (rotate, mirror)


def test_frame_rate_cap() -> None:
    source = ReconnectingSource(load_config(None, ["source.fps=20"], env={}).source)
    start = time.monotonic()
    for _ in range(11):
        assert source.read() is not None
    assert time.monotonic() - start >= 0.45  # 10 intervals of 50 ms


def test_missing_camera_is_reopened_with_backoff() -> None:
    source = ReconnectingSource(source_config("63", "source.reopen_initial_s=0.1", "source.reopen_max_s=0.4"))
    attempts = []
    start = time.monotonic()
    # Six attempts, however long each takes on this machine (a generous limit, only for a source that never retries).
    while len(attempts) < 6 and time.monotonic() - start < 30:
        before = source.reopens
        t0 = time.monotonic()
        assert source.read() is None
        assert time.monotonic() - t0 < 0.5  # never blocks the service loop for long
        if source.reopens > before:
            attempts.append(time.monotonic() - start)
    assert source.state.startswith("reopening: ") and "'63'" in source.state and not source.ended
    gaps = np.diff(attempts)
    # 0.1, 0.2, 0.4, 0.4, ... seconds apart (plus each failed open's own time): growing, then capped at reopen_max_s
    assert len(attempts) == 6, attempts
    assert gaps[0] < gaps[1] < gaps[2] and min(gaps) >= 0.1 and max(gaps) < 0.4 + 0.5, gaps


@pytest.mark.parametrize(("uri", "kind"), [
    ("demo", "demo"), ("0", "camera"), ("/dev/video5", "camera"), ("rtsp://cam.local/stream", "stream"),
    ("picamera2", "picamera2"),
])
def test_kind_is_inferred_from_the_uri(uri: str, kind: str) -> None:
    if kind == "picamera2":
        with pytest.raises(ConfigError, match=PICAMERA2_MISSING):
            resolve(source_config(uri))
        return
    assert resolve(source_config(uri))[0] == kind


def test_without_pygobject_a_pipeline_is_refused_in_one_line_saying_what_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_app.pipeline import gstreamer

    monkeypatch.setitem(sys.modules, "gi", None)  # what an interpreter without PyGObject sees (CI has it)
    gstreamer.gst.cache_clear()
    try:
        with pytest.raises(ConfigError, match="apt install python3-gi gir1.2-gstreamer-1.0") as error:
            resolve(source_config("nvarguscamerasrc ! nvvidconv ! videoconvert ! appsink"))
    finally:
        monkeypatch.undo()
        gstreamer.gst.cache_clear()
    assert "\n" not in str(error.value) and "--system-site-packages" in str(error.value)


def test_files_and_folders_are_inferred(tmp_path: Path, video: Path) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(demo_image().read_bytes())
    assert resolve(source_config(str(tmp_path)))[0] == "images"
    assert resolve(source_config(str(photo)))[0] == "images"
    assert resolve(source_config(str(video)))[0] == "video"
    with pytest.raises(ConfigError, match="source.uri: .*nowhere"):
        resolve(source_config(str(tmp_path / "nowhere.avi")))


def test_credentials_in_stream_urls_never_reach_names_or_state() -> None:
    assert redact("rtsp://admin:hunter2@10.0.0.5:554/live") == "rtsp://***@10.0.0.5:554/live"
    source = ReconnectingSource(source_config("rtsp://admin:hunter2@127.0.0.1:9/live", "source.reopen_initial_s=5"))
    assert source.read() is None
    assert "hunter2" not in source.name and "hunter2" not in source.state and "***@" in source.state


@pytest.mark.parametrize(("content", "message"), [
    (b"", "empty file"), (b"GIF89a not really", "not an image"), ("truncated-jpeg", "truncated"),
    ("truncated-png", "truncated"),
])
def test_read_image_names_the_bad_file(tmp_path: Path, demo_rgb: np.ndarray, content, message: str) -> None:
    path = tmp_path / "bad.img"
    if content == "truncated-jpeg":
        content = demo_image().read_bytes()[:20_000]
    elif content == "truncated-png":
        content = cv2.imencode(".png", demo_rgb)[1].tobytes()[:50_000]
    path.write_bytes(content)
    with pytest.raises(ImageError, match=f"{path}: .*{message}"):
        read_image(path)


def test_read_image_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="is a directory"):
        read_image(tmp_path)


def test_complete_images_with_data_after_the_picture_are_read(tmp_path: Path, demo_rgb: np.ndarray) -> None:
    """A camera's trailer or a motion photo's video after the JPEG's end marker is not a truncated image."""
    jpeg = demo_image().read_bytes()
    thumbnail = cv2.imencode(".jpg", demo_rgb[::8, ::8])[1].tobytes()
    exif = b"Exif\0\0" + thumbnail  # an APP1 segment holding a thumbnail, with its own end marker, as cameras write
    with_thumbnail = jpeg[:2] + b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif + jpeg[2:]
    for name, data in {"trailer.jpg": jpeg + bytes(range(256)) * 40, "thumbnail.jpg": with_thumbnail,
                       "trailer.png": cv2.imencode(".png", demo_rgb)[1].tobytes() + b"\0" * 5000}.items():
        (tmp_path / name).write_bytes(data)
        assert read_image(tmp_path / name).shape == (512, 512, 3), name
    (tmp_path / "cut.jpg").write_bytes(with_thumbnail[: len(with_thumbnail) - 3000])
    with pytest.raises(ImageError, match="truncated"):
        read_image(tmp_path / "cut.jpg")


def test_a_stream_that_stops_answering_is_given_up_and_reopened() -> None:
    """A server that accepts the connection and then says nothing: the read fails after STREAM_TIMEOUT_S."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True).start()
    source = ReconnectingSource(source_config(f"http://127.0.0.1:{server.getsockname()[1]}/live",
                                              "source.reopen_initial_s=30"))
    start = time.monotonic()
    assert source.read() is None
    assert time.monotonic() - start < STREAM_TIMEOUT_S + 3
    assert accepted and source.state.startswith("reopening: ") and source.reopens == 1
    server.close()
