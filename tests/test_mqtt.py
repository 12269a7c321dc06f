"""MqttPublisher against a real mosquitto broker: topics, payloads, retained state and the last will.

Broker faults are in test_mqtt_faults.py, authentication and TLS in test_mqtt_security.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mqtt_helpers import publisher, subscriber, wait_until

from edge_app.emotions import EMOTIONS
from edge_app.publish.aggregate import EmotionsMessage, StatsMessage, WindowAggregator

ROOT = Path(__file__).resolve().parents[1]


def test_topics_retained_status_discovery_and_payload_shapes(mosquitto, clients):
    broker = mosquitto()
    sub = subscriber(clients, broker, ["emotion/#", "homeassistant/#"])
    pub = publisher(clients, broker)
    assert wait_until(lambda: pub.connected), pub.last_error
    aggregator = WindowAggregator(EMOTIONS, 1.0, "testcam", now=0.0)
    pub.publish_emotions(aggregator.flush(1.0))
    assert sub.wait_for(lambda: sub.on("emotion/testcam/emotions"))
    pub.publish_stats(aggregator.stats(1.0, buffered_messages=pub.buffered, dropped_messages=pub.dropped,
                                       delegate="cpu", source_state="streaming"))
    # discovery: the dominant-emotion and faces sensors and one per class (tests/test_homeassistant.py has the rest)
    assert sub.wait_for(lambda: sub.on("emotion/testcam/stats") and len(
        [t for t, p, _ in sub.messages if t.startswith("homeassistant/") and p]) == 2 + len(EMOTIONS))

    assert sub.on("emotion/testcam/status")[-1] == b"online"
    emotions = EmotionsMessage.model_validate_json(sub.on("emotion/testcam/emotions")[0])
    assert (emotions.seq, emotions.faces, emotions.dominant) == (1, 0, None)
    assert set(emotions.emotions) == set(EMOTIONS)
    stats = StatsMessage.model_validate_json(sub.on("emotion/testcam/stats")[0])
    assert stats.delegate == "cpu"

    dominant = json.loads(sub.on("homeassistant/sensor/testcam/dominant_emotion/config")[0])
    happy = json.loads(sub.on("homeassistant/sensor/testcam/happy/config")[0])
    for config in (dominant, happy):
        assert config["state_topic"] == "emotion/testcam/emotions"
        assert config["availability"] == [{"topic": "emotion/testcam/status", "payload_available": "online",
                                           "payload_not_available": "offline"}]
        assert config["device"]["identifiers"] and config["device"]["name"] and config["device"]["sw_version"]
        assert config["unique_id"].startswith("testcam_")
    assert happy["unit_of_measurement"] == "%"
    assert "value_json.emotions.happy" in happy["value_template"]
    assert "value_json.dominant" in dominant["value_template"]

    late = subscriber(clients, broker, ["emotion/testcam/status", "homeassistant/#"])
    assert late.wait_for(lambda: late.on("emotion/testcam/status") == [b"online"]
                         and len(late.messages) == 3 + len(EMOTIONS)), "status and discovery must be retained"
    assert all(retain for _, _, retain in late.messages)

    pub.close(timeout=2.0)
    assert sub.wait_for(lambda: sub.on("emotion/testcam/status")[-1] == b"offline")
    assert not pub.buffered
    started = time.monotonic()
    pub.close(timeout=2.0)
    assert time.monotonic() - started < 0.5, "a second close returns at once"


def test_last_will_marks_offline_when_the_process_is_killed(mosquitto, clients):
    broker = mosquitto()
    sub = subscriber(clients, broker, ["emotion/killed/status"])
    script = (
        "import time\n"
        "from edge_app.publish.mqtt import MqttPublisher\n"
        f"p = MqttPublisher(device='killed', host='{broker.host}', port={broker.port}, discovery=False, keepalive=5)\n"
        "deadline = time.monotonic() + 10\n"
        "while not p.connected and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n"
        "print('connected' if p.connected else p.last_error, flush=True)\n"
        "time.sleep(30)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout.readline().strip() == "connected"
        assert sub.wait_for(lambda: sub.on("emotion/killed/status")[-1:] == [b"online"])
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=5)
    assert sub.wait_for(lambda: sub.on("emotion/killed/status")[-1] == b"offline", timeout=10)
