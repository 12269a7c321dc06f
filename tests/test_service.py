"""`edge-emotion run` end to end: the shipped model on the bundled demo photo and on a video, published to a real
mosquitto; systemd notifications on a real socket; a missing camera; bad settings."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import skimage.data
from media_helpers import demo_face_bgr, write_video
from mqtt_helpers import subscriber

from edge_app.app import build_pipeline
from edge_app.config import load_config
from edge_app.pipeline.frames import FrameProcessor
from edge_app.pipeline.track import Tracker
from edge_app.publish import sdnotify


def _run(port: int, *extra: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge_app", "--set", f"mqtt.port={port}", "--set", "device.id=testcam",
         "--set", "aggregate.window_s=1", *extra],
        capture_output=True, text=True, timeout=timeout,
    )


def test_demo_run_publishes_status_emotions_stats_and_discovery(mosquitto, clients) -> None:
    broker = mosquitto()
    sub = subscriber(clients, broker, ["emotion/testcam/#", "homeassistant/#"])
    result = _run(broker.port, "run", "--max-windows", "3")
    assert result.returncode == 0, result.stderr
    # Delivered to the broker before the service exited; the broker passes them on in its own time.
    assert sub.wait_for(lambda: len(sub.on("emotion/testcam/emotions")) == 3
                        and sub.on("emotion/testcam/status")[-1:] == [b"offline"], timeout=30)
    by_topic: dict[str, list[dict | str]] = {}
    for topic, payload, _ in sub.messages:
        text = payload.decode()
        by_topic.setdefault(topic, []).append(json.loads(text) if text.startswith("{") else text)
    assert by_topic["emotion/testcam/status"][0] == "online"
    assert by_topic["emotion/testcam/status"][-1] == "offline"
    windows = by_topic["emotion/testcam/emotions"]
    assert [w["seq"] for w in windows] == [1, 2, 3]
    for window in windows:
        assert window["faces"] == 1 and window["dominant"] == "happy"  # the smiling astronaut
        assert abs(sum(window["emotions"].values()) - 1.0) < 0.01
        assert set(window) == {"seq", "ts", "device", "window_s", "frames", "fps", "faces", "tracks_seen",
                               "emotions", "dominant", "tracks", "sensing"}
        assert window["sensing"] is True
    stats = by_topic["emotion/testcam/stats"]
    assert stats and stats[-1]["delegate"] == "cpu" and stats[-1]["frames"] > 0
    assert any(topic.startswith("homeassistant/sensor/testcam/") for topic in by_topic)


def test_sigterm_publishes_the_last_window_and_exits_cleanly(mosquitto, clients, tmp_path) -> None:
    broker = mosquitto()
    sub = subscriber(clients, broker, ["emotion/testcam/#"])
    notify = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify))
        sock.settimeout(120)
        process = subprocess.Popen(
            [sys.executable, "-m", "edge_app", "--set", f"mqtt.port={broker.port}", "--set", "device.id=testcam",
             "--set", "aggregate.window_s=60", "run"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "NOTIFY_SOCKET": str(notify)},
        )
        # READY comes after the first frame went through the pipeline: the window holds frames, at any speed.
        assert sock.recv(4096).decode().startswith("READY=1")
    assert sub.wait_for(lambda: b"online" in sub.on("emotion/testcam/status"), timeout=60)
    process.terminate()
    started = time.monotonic()
    assert process.wait(timeout=10) == 0
    assert time.monotonic() - started < 5
    assert sub.wait_for(lambda: sub.on("emotion/testcam/emotions") and sub.on("emotion/testcam/status")[-1:] == [
        b"offline"], timeout=30)
    windows = [json.loads(p) for p in sub.on("emotion/testcam/emotions")]
    assert len(windows) == 1 and windows[0]["frames"] > 0  # the partial window was not lost
    statuses = sub.on("emotion/testcam/status")
    assert statuses[-1] == b"offline"


def test_missing_model_is_one_clear_line_and_nothing_is_published(mosquitto, clients, tmp_path) -> None:
    broker = mosquitto()
    sub = subscriber(clients, broker, ["emotion/#"])
    result = _run(broker.port, "--set", f"model.path={tmp_path / 'nothing.tflite'}", "run", "--max-windows", "1")
    assert result.returncode == 2
    assert "nothing.tflite" in result.stderr and "Traceback" not in result.stderr
    assert sub.messages == []


def _notifications(sock: socket.socket) -> list[str]:
    """Every sd_notify datagram waiting on ``sock``."""
    sock.setblocking(False)
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


def _listen(sock: socket.socket, messages: list[str], done: threading.Event) -> None:
    """Read notifications as systemd does, as they come (a unix datagram queue holds only a few)."""
    sock.settimeout(0.1)
    while not done.is_set():
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            continue


def test_systemd_notifications_ready_watchdog_status_stopping(tmp_path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        messages: list[str] = []
        done = threading.Event()
        listener = threading.Thread(target=_listen, args=(sock, messages, done))
        listener.start()
        env = {**os.environ, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"}
        try:
            result = subprocess.run(
                [sys.executable, "-m", "edge_app", "--set", "mqtt.enabled=false", "--set", "aggregate.window_s=1",
                 "run", "--max-windows", "2"], capture_output=True, text=True, timeout=90, env=env,
            )
        finally:
            done.set()
            listener.join()
        assert result.returncode == 0, result.stderr
    kinds = [m.splitlines()[0].split("=")[0] for m in messages]
    assert kinds[0] == "READY" and kinds[-1] == "STOPPING"
    assert kinds.count("WATCHDOG") >= 3  # every 0.2 s over ~2 s of frames
    statuses = [m for m in messages if m.startswith("STATUS=window")]
    assert len(statuses) == 2 and "dominant happy" in statuses[0] and "source ok" in statuses[0]


def test_sdnotify_abstract_socket_and_no_socket(monkeypatch) -> None:
    name = f"@edge-emotion-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name[1:])
        monkeypatch.setenv("NOTIFY_SOCKET", name)
        assert sdnotify.ready() and sdnotify.status("two\nlines")
        assert _notifications(sock) == ["READY=1", "STATUS=two lines"]
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert sdnotify.watchdog() is False  # outside systemd: nothing to do, and no error
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert sdnotify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert sdnotify.watchdog_interval() is None


def test_video_that_ends_publishes_its_last_window_and_exits_cleanly(mosquitto, clients, tmp_path) -> None:
    video = tmp_path / "faces.avi"
    write_video(video, [demo_face_bgr()] * 15)
    broker = mosquitto()
    sub = subscriber(clients, broker, ["emotion/testcam/#"])
    secret = "s3cret-Passw0rd"
    result = _run(broker.port, "--set", f"source.uri={video}", "--set", "source.loop=false", "--set", "source.fps=10",
                  "--set", "mqtt.username=edge", "--set", f"mqtt.password={secret}", "--log-level", "DEBUG", "run")
    assert result.returncode == 0, result.stderr
    assert sub.wait_for(lambda: sum(json.loads(p)["frames"] for p in sub.on("emotion/testcam/emotions")) == 15
                        and sub.on("emotion/testcam/status")[-1:] == [b"offline"], timeout=30)
    assert "has ended" in result.stderr and secret not in result.stderr + result.stdout
    windows = [json.loads(p) for p in sub.on("emotion/testcam/emotions")]
    assert sum(w["frames"] for w in windows) == 15  # every frame counted, the last partial window included
    assert [w["seq"] for w in windows] == list(range(1, len(windows) + 1))
    assert windows[0]["dominant"] == "happy"
    assert sub.on("emotion/testcam/status")[-1] == b"offline"
    for topic, payload, _ in sub.messages:  # privacy: small payloads with no arrays of numbers and no long strings
        assert len(payload) < 4000, topic
        _assert_no_picture_or_points(json.loads(payload) if payload.startswith(b"{") else payload.decode())


def _assert_no_picture_or_points(value: object) -> None:
    if isinstance(value, dict):
        for item in value.values():
            _assert_no_picture_or_points(item)
    elif isinstance(value, list):
        assert not any(isinstance(item, (int, float)) for item in value), value
        for item in value:
            _assert_no_picture_or_points(item)
    elif isinstance(value, str):
        assert len(value) < 200, value


def test_missing_camera_keeps_the_service_publishing_and_reopening(mosquitto, clients) -> None:
    broker = mosquitto()
    sub = subscriber(clients, broker, ["emotion/testcam/#"])
    result = _run(broker.port, "--set", "source.uri=63", "--set", "source.reopen_initial_s=0.2", "run",
                  "--max-windows", "2")
    assert result.returncode == 0, result.stderr
    assert sub.wait_for(lambda: len(sub.on("emotion/testcam/emotions")) == len(sub.on("emotion/testcam/stats")) == 2,
                        timeout=30)
    windows = [json.loads(p) for p in sub.on("emotion/testcam/emotions")]
    assert [w["seq"] for w in windows] == [1, 2] and all(w["faces"] == 0 and w["frames"] == 0 for w in windows)
    stats = [json.loads(p) for p in sub.on("emotion/testcam/stats")]
    assert stats and all(s["source_state"] == "reopening" for s in stats)
    assert "source '63': cannot open" in result.stderr


def test_a_source_uri_that_means_nothing_is_one_line_and_exit_2(mosquitto, clients, tmp_path) -> None:
    broker = mosquitto()
    sub = subscriber(clients, broker, ["emotion/#"])
    result = _run(broker.port, "--set", f"source.uri={tmp_path / 'missing.mp4'}", "run", "--max-windows", "1")
    assert result.returncode == 2 and "source.uri:" in result.stderr and "missing.mp4" in result.stderr
    assert "Traceback" not in result.stderr and sub.messages == []


def test_run_writes_nothing_to_disk(tmp_path) -> None:
    """Working directory, home and temp directory stay empty: no frames, crops, logs or caches are written."""
    places = {name: tmp_path / name for name in ("cwd", "home", "tmp")}
    for place in places.values():
        place.mkdir()
    env = {**os.environ, "HOME": str(places["home"]), "TMPDIR": str(places["tmp"]), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "edge_app", "--set", "mqtt.enabled=false", "--set", "aggregate.window_s=0.5", "run",
         "--max-windows", "2"], capture_output=True, text=True, timeout=90, env=env, cwd=places["cwd"],
    )
    assert result.returncode == 0, result.stderr
    assert {name: sorted(p.name for p in place.rglob("*")) for name, place in places.items()} == {
        "cwd": [], "home": [], "tmp": []}


def test_frame_processor_times_detection_and_landmarks_separately() -> None:
    """Detection frames report the detector and Face Mesh apart; frames in between only follow (landmarks)."""
    config = load_config(None, ["detection.every_n_frames=3", "runtime.num_threads=1"], env={})
    classifier, pipeline = build_pipeline(config)
    processor = FrameProcessor(pipeline, classifier, Tracker.from_config(config.tracking), every_n_frames=3)
    rgb = skimage.data.astronaut()
    results = [processor(rgb, now=float(i)) for i in range(4)]
    assert [sorted(r.ms) for r in results] == [
        ["classify", "detect", "landmarks", "total", "track"], ["classify", "landmarks", "total", "track"],
        ["classify", "landmarks", "total", "track"], ["classify", "detect", "landmarks", "total", "track"]]
    for result in results:
        assert len(result.faces) == 1 and [t.id for t in result.tracks] == [results[0].tracks[0].id]
        stages = sum(v for k, v in result.ms.items() if k != "total")
        assert all(v > 0 for v in result.ms.values()) and stages <= result.ms["total"] * 1.01 + 0.05
    # The detector runs on the whole frame, Face Mesh on one 192x192 crop: both are real, distinct measurements.
    assert results[0].ms["detect"] != results[0].ms["landmarks"]


def test_face_pipeline_adds_to_the_stage_times_it_is_given() -> None:
    config = load_config(None, ["runtime.num_threads=1"], env={})
    _, pipeline = build_pipeline(config)
    rgb = skimage.data.astronaut()
    ms: dict[str, float] = {}
    faces = pipeline.detect(rgb, ms)
    after_detect = dict(ms)
    followed = pipeline.follow(rgb, faces, ms)
    assert set(after_detect) == {"detect", "landmarks"} and ms["detect"] == after_detect["detect"]
    assert ms["landmarks"] > after_detect["landmarks"] and followed[0] is not None
    assert pipeline.detect(rgb) and pipeline.follow(rgb, faces)  # timing is optional


def test_sigint_while_a_stream_hangs_still_exits_0_within_5_s(mosquitto, clients) -> None:
    """The source is a server that accepts and never answers: the open blocks, SIGINT must still end it in time."""
    broker = mosquitto()
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True).start()
    sub = subscriber(clients, broker, ["emotion/testcam/#"])
    process = subprocess.Popen(
        [sys.executable, "-m", "edge_app", "--set", f"mqtt.port={broker.port}", "--set", "device.id=testcam",
         "--set", f"source.uri=http://127.0.0.1:{server.getsockname()[1]}/live", "run"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not accepted:
        time.sleep(0.05)
    assert accepted, "the service never connected to the stream"
    time.sleep(0.5)  # inside the stream's open
    process.send_signal(signal.SIGINT)
    started = time.monotonic()
    assert process.wait(timeout=10) == 0, process.stderr.read() if process.stderr else ""
    assert time.monotonic() - started < 5
    server.close()
    assert sub.wait_for(lambda: sub.on("emotion/testcam/emotions") and sub.on("emotion/testcam/status")[-1:] == [
        b"offline"], timeout=30)
    windows = [json.loads(p) for p in sub.on("emotion/testcam/emotions")]
    assert len(windows) == 1 and windows[0]["frames"] == 0 and windows[0]["faces"] == 0
    assert sub.on("emotion/testcam/status")[-1] == b"offline"
