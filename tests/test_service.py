"""`edge-emotion run` end to end: the shipped model on the bundled demo photo, published to a real mosquitto."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt


def _collect(host: str, port: int, topics: list[tuple[str, int]]) -> tuple[list[tuple[str, bytes]], mqtt.Client]:
    received: list[tuple[str, bytes]] = []
    ready = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_connect = lambda c, *_: (c.subscribe(topics), ready.set())
    client.on_message = lambda _c, _u, msg: received.append((msg.topic, msg.payload))
    client.connect(host, port)
    client.loop_start()
    assert ready.wait(5)
    time.sleep(0.2)
    return received, client


def _run(port: int, *extra: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge_app", "--set", f"mqtt.port={port}", "--set", "device.id=testcam",
         "--set", "aggregate.window_s=1", *extra],
        capture_output=True, text=True, timeout=timeout,
    )


def test_demo_run_publishes_status_emotions_stats_and_discovery(mosquitto) -> None:
    broker = mosquitto()
    received, client = _collect(broker.host, broker.port, [("emotion/testcam/#", 1), ("homeassistant/#", 1)])
    result = _run(broker.port, "run", "--max-windows", "3")
    time.sleep(0.5)
    client.loop_stop()
    assert result.returncode == 0, result.stderr
    by_topic: dict[str, list[dict | str]] = {}
    for topic, payload in received:
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
                               "emotions", "dominant", "tracks"}
    stats = by_topic["emotion/testcam/stats"]
    assert stats and stats[-1]["delegate"] == "cpu" and stats[-1]["frames"] > 0
    assert any(topic.startswith("homeassistant/sensor/testcam/") for topic in by_topic)


def test_sigterm_publishes_the_last_window_and_exits_cleanly(mosquitto) -> None:
    broker = mosquitto()
    received, client = _collect(broker.host, broker.port, [("emotion/testcam/#", 1)])
    process = subprocess.Popen(
        [sys.executable, "-m", "edge_app", "--set", f"mqtt.port={broker.port}", "--set", "device.id=testcam",
         "--set", "aggregate.window_s=60", "run"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and ("emotion/testcam/status", b"online") not in received:
        time.sleep(0.2)
    time.sleep(2)  # some frames into the first window
    process.terminate()
    started = time.monotonic()
    assert process.wait(timeout=10) == 0
    assert time.monotonic() - started < 5
    time.sleep(0.5)
    client.loop_stop()
    windows = [json.loads(p) for t, p in received if t == "emotion/testcam/emotions"]
    assert len(windows) == 1 and windows[0]["frames"] > 0  # the partial window was not lost
    statuses = [p for t, p in received if t == "emotion/testcam/status"]
    assert statuses[-1] == b"offline"


def test_missing_model_is_one_clear_line_and_nothing_is_published(mosquitto, tmp_path) -> None:
    broker = mosquitto()
    received, client = _collect(broker.host, broker.port, [("emotion/#", 1)])
    result = _run(broker.port, "--set", f"model.path={tmp_path / 'nothing.tflite'}", "run", "--max-windows", "1")
    client.loop_stop()
    assert result.returncode == 2
    assert "nothing.tflite" in result.stderr and "Traceback" not in result.stderr
    assert received == []
