"""Helpers shared by the MQTT tests: a recording subscriber, publishers with fast reconnects, test certificates."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_app.emotions import EMOTIONS
from edge_app.publish.aggregate import EmotionsMessage, WindowAggregator
from edge_app.publish.mqtt import MqttPublisher

FAST = {"reconnect_probe_s": 0.1, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "keepalive": 5}


class Subscriber:
    """A plain paho subscriber that records every message.

    ``persistent`` keeps its session across broker restarts: MQTT 3.1.1 ``clean_session=False``, or with
    ``mqtt5`` ``clean_start=False`` and a session expiry interval. ``configure`` sets TLS or credentials.
    """

    def __init__(self, broker, topics: list[str], persistent: bool = False, mqtt5: bool = False,
                 configure: Callable[[paho.Client], object] | None = None) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        client_id = f"test-sub-{uuid.uuid4().hex[:8]}"
        if mqtt5:
            self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        else:
            self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent)
        if configure is not None:
            configure(self.client)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_message = self._on_message
        if mqtt5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 300 if persistent else 0
            self.client.connect(broker.host, broker.port, keepalive=5, clean_start=not persistent,
                                properties=properties)
        else:
            self.client.connect(broker.host, broker.port, keepalive=5)
        self.client.loop_start()
        assert self._subscribed.wait(30), "test subscriber could not subscribe"

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.messages.append((message.topic, message.payload, bool(message.retain)))

    def on(self, topic: str) -> list[bytes]:
        with self._lock:
            return [payload for t, payload, _ in self.messages if t == topic]

    def wait_for(self, predicate, timeout: float = 30.0) -> bool:
        return wait_until(predicate, timeout)

    def seqs(self, topic: str) -> list[int]:
        return [json.loads(p)["seq"] for p in self.on(topic)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def close_all(made: list) -> None:
    """Close what a test made, newest first; publishers get a short flush timeout."""
    for client in reversed(made):
        client.close(**({"timeout": 1.0} if isinstance(client, MqttPublisher) else {}))


def publisher(clients: list, broker, **options) -> MqttPublisher:
    options = {"device": "testcam", "host": broker.host, "port": broker.port, **FAST, **options}
    made = MqttPublisher(**options)
    clients.append(made)
    return made


def subscriber(clients: list, broker, topics: list[str], persistent: bool = False, **options) -> Subscriber:
    made = Subscriber(broker, topics, persistent, **options)
    clients.append(made)
    return made


def wait_until(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.05)
    return bool(predicate())


def windows(count: int) -> list[EmotionsMessage]:
    aggregator = WindowAggregator(EMOTIONS, 1.0, "testcam", now=0.0)
    return [aggregator.flush(float(i + 1)) for i in range(count)]


def assert_complete_in_order(seqs: list[int], expected: list[int]) -> None:
    """Every expected seq arrived, first arrivals in increasing order (QoS 1 allows a re-sent duplicate)."""
    first = list(dict.fromkeys(seqs))
    assert first == expected, f"got {seqs}"


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA signing a server certificate for 127.0.0.1 and a client certificate, and a second unrelated CA.

    P-256 keys: as good as RSA here and made in milliseconds rather than seconds.
    """
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    for ca in ("ca", "other_ca"):
        openssl("req", "-x509", *key, "-days", "1", "-subj", f"/CN={ca}",
                "-keyout", f"{ca}.key", "-out", f"{ca}.crt")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, subject, extra in (("server", "/CN=127.0.0.1", ("-extfile", "san.ext")), ("client", "/CN=sensor", ())):
        openssl("req", *key, "-subj", subject, "-keyout", f"{name}.key",
                "-out", f"{name}.csr")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "1", *extra, "-out", f"{name}.crt")
    names = ("ca.crt", "other_ca.crt", "server.crt", "server.key", "client.crt", "client.key")
    return {name: directory / name for name in names}
