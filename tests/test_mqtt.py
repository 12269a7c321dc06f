"""MqttPublisher against a real mosquitto broker: topics, retained state, last will, outages, buffering, auth."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_app.aggregate import EmotionsMessage, StatsMessage, WindowAggregator
from edge_app.config import MqttConfig
from edge_app.emotions import EMOTIONS
from edge_app.mqtt import MAX_INFLIGHT, NOT_AUTHORISED, MqttError, MqttPublisher

ROOT = Path(__file__).resolve().parents[1]
FAST = {"reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "keepalive": 5}


class Subscriber:
    """A plain paho subscriber that records every message; ``persistent`` keeps its session across broker restarts."""

    def __init__(self, broker, topics: list[str], persistent: bool = False) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-sub-{uuid.uuid4().hex[:8]}",
                                  clean_session=not persistent)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=5)
        self.client.loop_start()
        assert self._subscribed.wait(5), "test subscriber could not subscribe"

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.messages.append((message.topic, message.payload, bool(message.retain)))

    def on(self, topic: str) -> list[bytes]:
        with self._lock:
            return [payload for t, payload, _ in self.messages if t == topic]

    def wait_for(self, predicate, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return predicate()

    def seqs(self, topic: str) -> list[int]:
        return [json.loads(p)["seq"] for p in self.on(topic)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients():
    """Publishers and subscribers made by a test, closed at teardown even when it fails."""
    made: list = []
    yield made
    for client in reversed(made):
        client.close(**({"timeout": 1.0} if isinstance(client, MqttPublisher) else {}))


def publisher(clients, broker, **options) -> MqttPublisher:
    options = {"device": "testcam", "host": broker.host, "port": broker.port, **FAST, **options}
    made = MqttPublisher(**options)
    clients.append(made)
    return made


def subscriber(clients, broker, topics, persistent=False) -> Subscriber:
    made = Subscriber(broker, topics, persistent)
    clients.append(made)
    return made


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.05)
    return predicate()


def windows(count: int) -> list[EmotionsMessage]:
    aggregator = WindowAggregator(EMOTIONS, 1.0, "testcam", now=0.0)
    return [aggregator.flush(float(i + 1)) for i in range(count)]


def assert_complete_in_order(seqs: list[int], expected: list[int]) -> None:
    """Every expected seq arrived, first arrivals in increasing order (QoS 1 allows a re-sent duplicate)."""
    first = list(dict.fromkeys(seqs))
    assert first == expected, f"got {seqs}"


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
    assert sub.wait_for(lambda: sub.on("emotion/testcam/stats") and len(
        [t for t, _, _ in sub.messages if t.startswith("homeassistant/")]) == 1 + len(EMOTIONS))

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
        assert config["availability_topic"] == "emotion/testcam/status"
        assert config["device"]["identifiers"] and config["device"]["name"] and config["device"]["sw_version"]
        assert config["unique_id"].startswith("testcam_")
    assert happy["unit_of_measurement"] == "%"
    assert "value_json.emotions.happy" in happy["value_template"]
    assert "value_json.dominant" in dominant["value_template"]

    late = subscriber(clients, broker, ["emotion/testcam/status", "homeassistant/#"])
    assert late.wait_for(lambda: late.on("emotion/testcam/status") == [b"online"]
                         and len(late.messages) == 2 + len(EMOTIONS)), "status and discovery must be retained"
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
        "from edge_app.mqtt import MqttPublisher\n"
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


def test_broker_down_at_start_buffers_then_delivers_in_order(mosquitto, clients):
    broker = mosquitto()
    sub = subscriber(clients, broker, ["emotion/testcam/emotions"], persistent=True)
    broker.stop()
    pub = publisher(clients, broker, discovery=False)
    for message in windows(6):
        pub.publish_emotions(message)
    assert wait_until(lambda: pub.last_error is not None, timeout=5)
    assert "not reachable" in pub.last_error and str(broker.port) in pub.last_error
    assert not pub.connected and pub.buffered == 6 and pub.dropped == 0
    broker.start()
    assert wait_until(lambda: pub.connected and pub.buffered == 0), pub.last_error
    assert sub.wait_for(lambda: len(set(sub.seqs("emotion/testcam/emotions"))) == 6)
    assert_complete_in_order(sub.seqs("emotion/testcam/emotions"), list(range(1, 7)))


def test_broker_restarted_twice_mid_run_loses_nothing(mosquitto, clients):
    broker = mosquitto()
    sub = subscriber(clients, broker, ["emotion/testcam/emotions", "emotion/testcam/status"], persistent=True)
    pub = publisher(clients, broker, discovery=False)
    assert wait_until(lambda: pub.connected)
    messages = iter(windows(30))
    for _ in range(2):
        for _ in range(5):
            pub.publish_emotions(next(messages))
        broker.stop()
        assert wait_until(lambda: not pub.connected, timeout=5)
        for _ in range(5):
            pub.publish_emotions(next(messages))
        assert pub.buffered >= 5
        broker.start()
    for message in messages:
        pub.publish_emotions(message)
    assert wait_until(lambda: pub.connected and pub.buffered == 0, timeout=15), pub.last_error
    assert sub.wait_for(lambda: len(set(sub.seqs("emotion/testcam/emotions"))) == 30, timeout=15), \
        sub.seqs("emotion/testcam/emotions")
    assert_complete_in_order(sub.seqs("emotion/testcam/emotions"), list(range(1, 31)))
    assert sub.wait_for(lambda: sub.on("emotion/testcam/status")[-1] == b"online")
    assert pub.dropped == 0


def test_unacknowledged_messages_are_resent_before_newer_ones(mosquitto, clients):
    broker = mosquitto()
    sub = subscriber(clients, broker, ["emotion/testcam/emotions"])
    # the publisher reconnects later than the subscriber, so the subscriber is back before anything is re-sent
    pub = publisher(clients, broker, discovery=False, reconnect_min_s=1.0, reconnect_max_s=1.0)
    assert wait_until(lambda: pub.connected)
    messages = windows(8)
    broker.process.send_signal(signal.SIGSTOP)  # the broker stops reading: windows 1-5 stay unacknowledged
    try:
        for message in messages[:5]:
            pub.publish_emotions(message)
        assert wait_until(lambda: not pub._buffer, timeout=5), "windows 1-5 must be on the wire, unacknowledged"
        assert pub.buffered == 5
    finally:
        broker.process.send_signal(signal.SIGKILL)
        broker.process.wait(timeout=5)
    assert wait_until(lambda: not pub.connected, timeout=5)
    for message in messages[5:]:
        pub.publish_emotions(message)
    broker.start()
    assert sub.wait_for(lambda: len(set(sub.seqs("emotion/testcam/emotions"))) == 8, timeout=10), \
        sub.seqs("emotion/testcam/emotions")
    assert_complete_in_order(sub.seqs("emotion/testcam/emotions"), list(range(1, 9)))
    assert wait_until(lambda: pub.buffered == 0)


def test_a_broker_that_stops_answering_holds_at_most_max_inflight_and_the_buffer(mosquitto, clients):
    broker = mosquitto()
    sub = subscriber(clients, broker, ["emotion/testcam/emotions"])
    pub = publisher(clients, broker, discovery=False, buffer_size=3)
    first, *messages = windows(1 + MAX_INFLIGHT + 5)
    pub.publish_emotions(first)  # acknowledged after "online", so nothing is in flight once it is
    assert sub.wait_for(lambda: sub.seqs("emotion/testcam/emotions") == [1])
    assert wait_until(lambda: pub.buffered == 0 and not pub._inflight)
    broker.process.send_signal(signal.SIGSTOP)  # connection open, nothing acknowledged
    try:
        for message in messages[:MAX_INFLIGHT]:
            pub.publish_emotions(message)
            assert wait_until(lambda: not pub._buffer, timeout=5), f"window {message.seq} not sent"
        for message in messages[MAX_INFLIGHT:]:
            pub.publish_emotions(message)
        time.sleep(0.2)  # the sender must not take more off the buffer
        assert (len(pub._inflight), len(pub._buffer), pub.dropped) == (MAX_INFLIGHT, 3, 2)
        assert pub.buffered == MAX_INFLIGHT + 3
    finally:
        broker.process.send_signal(signal.SIGCONT)
    expected = [*range(1, MAX_INFLIGHT + 2), MAX_INFLIGHT + 4, MAX_INFLIGHT + 5, MAX_INFLIGHT + 6]
    assert sub.wait_for(lambda: len(set(sub.seqs("emotion/testcam/emotions"))) == len(expected)), \
        sub.seqs("emotion/testcam/emotions")
    assert_complete_in_order(sub.seqs("emotion/testcam/emotions"), expected)
    assert wait_until(lambda: pub.buffered == 0)


def test_full_buffer_drops_oldest_and_counts(mosquitto, clients):
    broker = mosquitto()
    sub = subscriber(clients, broker, ["emotion/testcam/emotions"], persistent=True)
    broker.stop()
    pub = publisher(clients, broker, discovery=False, buffer_size=3)
    for message in windows(5):
        pub.publish_emotions(message)
    assert (pub.buffered, pub.dropped) == (3, 2)
    broker.start()
    assert sub.wait_for(lambda: len(set(sub.seqs("emotion/testcam/emotions"))) == 3)
    assert_complete_in_order(sub.seqs("emotion/testcam/emotions"), [3, 4, 5])
    assert pub.dropped == 2


def test_password_file_refuses_a_wrong_password_with_a_clear_error(mosquitto, clients, tmp_path, caplog):
    passwords = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), "sensor", "right-secret"], check=True,
                   capture_output=True)
    broker = mosquitto(f"allow_anonymous false\npassword_file {passwords}")
    caplog.set_level(logging.DEBUG)
    section = MqttConfig(host=broker.host, port=broker.port, username="sensor", password="wrong-secret-123",
                         client_id="wrong", reconnect_min_s=0.1, reconnect_max_s=0.5)
    wrong = MqttPublisher.from_config(section, "testcam")  # the password arrives as a pydantic SecretStr
    clients.append(wrong)
    assert wait_until(lambda: wrong.last_error is not None, timeout=5)
    assert wrong.last_error == NOT_AUTHORISED and not wrong.connected
    time.sleep(0.5)  # several refused reconnects: the error is logged once, not once per attempt
    assert caplog.text.count(NOT_AUTHORISED) == 1
    right = publisher(clients, broker, username="sensor", password="right-secret", client_id="right")
    assert wait_until(lambda: right.connected), right.last_error
    assert "wrong-secret-123" not in caplog.text and "right-secret" not in caplog.text
    assert NOT_AUTHORISED in caplog.text


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA with a server certificate for 127.0.0.1, and a second unrelated CA."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    for ca in ("ca", "other_ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={ca}",
                "-keyout", f"{ca}.key", "-out", f"{ca}.crt")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
            "-out", "server.csr")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "1", "-extfile", "san.ext", "-out", "server.crt")
    return {name: directory / name for name in ("ca.crt", "other_ca.crt", "server.crt", "server.key")}


def test_tls_with_the_right_ca_connects_and_a_wrong_ca_is_refused_clearly(mosquitto, clients, tmp_path):
    certs = make_certificates(tmp_path)
    broker = mosquitto(f"cafile {certs['ca.crt']}\ncertfile {certs['server.crt']}\nkeyfile {certs['server.key']}")
    good = publisher(clients, broker, tls=True, ca_file=certs["ca.crt"], client_id="good")
    assert wait_until(lambda: good.connected), good.last_error
    bad = publisher(clients, broker, tls=True, ca_file=certs["other_ca.crt"], client_id="bad")
    assert wait_until(lambda: bad.last_error is not None, timeout=5)
    assert bad.last_error.startswith(f"TLS handshake with {broker.host}:{broker.port} failed: ")
    assert not bad.connected


def test_system_trust_store_is_accepted_and_a_missing_ca_file_is_named(tmp_path):
    settings = dict(device="cam", host="127.0.0.1", port=9, prefix="emotion", qos=1, client_id=None, username=None,
                    password=None, tls=True, cert_file=None, key_file=None, tls_insecure=False, keepalive=30,
                    buffer_size=4, reconnect_min_s=1, reconnect_max_s=2, discovery=False,
                    discovery_prefix="homeassistant")
    MqttPublisher(ca_file="system", **settings).close(timeout=0.5)
    with pytest.raises(MqttError, match="mqtt.ca_file: file not found: .*nope.pem"):
        MqttPublisher(ca_file=str(tmp_path / "nope.pem"), **settings)
