"""Privacy of `edge-emotion run` over a real video, checked on everything it emits: every MQTT message on '#' of a
real mosquitto, every line it logs at DEBUG, and the files around it. No image data or landmarks may leave it; the
only files it may write are the MQTT queue's, in its state directory, holding window messages and the last seq."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import skimage.data
from media_helpers import write_video
from mqtt_helpers import Subscriber

from edge_app.emotions import EMOTIONS
from edge_app.publish.aggregate import EmotionsMessage, StatsMessage

FRAMES = 40
# Home Assistant discovery config keys the publisher may use.
DISCOVERY_KEYS = {"name", "unique_id", "object_id", "state_topic", "value_template", "unit_of_measurement", "icon",
                  "availability_topic", "payload_available", "payload_not_available", "device", "state_class",
                  "suggested_display_precision", "json_attributes_topic", "json_attributes_template", "expire_after",
                  "qos", "availability", "origin", "device_class", "options", "command_topic", "payload_on",
                  "payload_off", "state_on", "state_off", "optimistic", "retain"}
BASE64_LIKE = re.compile(r"[A-Za-z0-9+/=_-]{64,}")
# 8 or more numbers in a row, separated by commas, spaces, brackets or line breaks: a vector, pixels, or landmark
# coordinates, also as numpy prints them over several lines or summarised with '...'.
NUMBER_RUN = re.compile(r"(?:[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?:[,;\s\[\]()]|\.\.\.)+){8,}", re.IGNORECASE)


def moving_face_video(path: Path) -> None:
    """The astronaut photo drifting and turning a little, as a person in front of a camera: MJPG in AVI."""
    photo = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)

    def frame(i: int) -> np.ndarray:
        matrix = cv2.getRotationMatrix2D((256, 256), 4 * np.sin(i / 6), 1.0)
        matrix[:, 2] += (8 * np.sin(i / 5), 5 * np.cos(i / 7))
        return cv2.warpAffine(photo, matrix, (512, 512), borderMode=cv2.BORDER_REPLICATE)

    write_video(path, (frame(i) for i in range(FRAMES)), fps=20)


def listing(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))}


def assert_small_values(value: object, key: str = "") -> None:
    """No list longer than the number of classes (but the tracks), no number lists, no long or base64-like text."""
    if isinstance(value, dict):
        assert len(value) <= 16, key
        for name, item in value.items():
            assert_small_values(name, key)
            assert_small_values(item, f"{key}.{name}")
    elif isinstance(value, list):
        # (the enum sensor's options: the classes and "none")
        assert key.endswith("tracks") or len(value) <= len(EMOTIONS) + key.endswith("options"), key
        assert not any(isinstance(item, (int, float)) for item in value), key
        for item in value:
            assert_small_values(item, key)
    elif isinstance(value, str):
        assert len(value) < 200 and not BASE64_LIKE.search(value), (key, value)


def test_nothing_but_aggregates_leaves_a_run_over_a_real_video(mosquitto, tmp_path: Path) -> None:
    video = tmp_path / "input" / "faces.avi"
    video.parent.mkdir()
    moving_face_video(video)
    places = {name: tmp_path / name for name in ("cwd", "home", "tmp")}
    for place in places.values():
        place.mkdir()
        (place / "existing.txt").write_text("was here before")
    before = {name: listing(place) for name, place in places.items()} | {"input": listing(video.parent)}
    broker = mosquitto()
    subscriber = Subscriber(broker, ["#"])
    state = tmp_path / "state"  # systemd's StateDirectory=: the one writable place the unit gives
    env = {**os.environ, "HOME": str(places["home"]), "TMPDIR": str(places["tmp"]), "PYTHONDONTWRITEBYTECODE": "1",
           "STATE_DIRECTORY": str(state)}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "edge_app", "--set", f"mqtt.port={broker.port}", "--set", "device.id=testcam",
             "--set", "aggregate.window_s=0.5", "--set", f"source.uri={video}", "--set", "source.loop=false",
             "--set", "source.fps=20", "--set", "mqtt.discovery=true", "--log-level", "DEBUG", "run"],
            capture_output=True, text=True, timeout=120, env=env, cwd=places["cwd"],
        )
        subscriber.wait_for(lambda: sum(json.loads(p)["frames"] for p in subscriber.on("emotion/testcam/emotions"))
                            == FRAMES and subscriber.on("emotion/testcam/status")[-1:] == [b"offline"], timeout=30)
    finally:
        subscriber.close()
    assert result.returncode == 0, result.stderr
    after = {name: listing(place) for name, place in places.items()} | {"input": listing(video.parent)}
    assert after == before  # no frame, crop, log or cache written anywhere
    assert (state / "last_seq").is_file()
    for path in state.iterdir():  # every window was acknowledged: the queue holds the last seq, at most windows
        if path.name == "last_seq":
            assert path.read_text().strip().isdigit()
        else:
            EmotionsMessage.model_validate_json(path.read_bytes())

    messages = subscriber.messages
    topics = {topic for topic, _, _ in messages}
    assert {"emotion/testcam/status", "emotion/testcam/emotions", "emotion/testcam/stats"} <= topics
    windows = []
    for topic, payload, _ in messages:
        assert len(payload) < 4000, topic
        text = payload.decode("utf-8")
        if topic == "emotion/testcam/status":
            assert text in ("online", "offline")
            continue
        if topic == "emotion/testcam/sensing":  # the privacy switch's state
            assert text == "ON"
            continue
        value = json.loads(text)
        if topic == "emotion/testcam/emotions":
            windows.append(EmotionsMessage.model_validate(value))  # strict: an extra field would fail
        elif topic == "emotion/testcam/stats":
            StatsMessage.model_validate(value)
        else:
            assert topic.startswith(("homeassistant/sensor/testcam/", "homeassistant/switch/testcam/")), topic
            assert topic.endswith("/config"), topic
            assert set(value) <= DISCOVERY_KEYS, set(value) - DISCOVERY_KEYS
        assert_small_values(value)
    assert sum(w.frames for w in windows) == FRAMES and windows[0].dominant == "happy"

    output = (result.stderr + result.stdout).replace(str(tmp_path), "<tmp>")  # the video's path is not data
    assert not NUMBER_RUN.search(output)
    lines = output.splitlines()
    assert any(" DEBUG " in line for line in lines)  # the log really was at DEBUG
    for line in lines:
        assert not BASE64_LIKE.search(line), line
        assert len(line) < 600, line
