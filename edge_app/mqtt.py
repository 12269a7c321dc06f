"""Publishing aggregated emotions over MQTT, in the style of Frigate and Home Assistant.

Topics: ``<prefix>/<device>/emotions`` (one message per window), ``<prefix>/<device>/stats`` and
``<prefix>/<device>/status`` (retained ``online``/``offline``, ``offline`` also being the last will), plus retained Home
Assistant discovery configs (edge_app/homeassistant.py) and the privacy switch: ``<prefix>/<device>/sensing/set`` takes
``ON``/``OFF``, ``<prefix>/<device>/sensing`` holds the retained state. While the broker is unreachable, emotion
messages wait in a bounded buffer and go out in order once it is back; a message counts as delivered only when the
broker acknowledged it.
"""

from __future__ import annotations

import logging
import re
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edge_app.aggregate import EmotionsMessage, StatsMessage
from edge_app.config import SYSTEM_CA
from edge_app.emotions import EMOTIONS
from edge_app.homeassistant import BIRTH_PAYLOAD, Device, birth_topic, discovery_messages
from edge_app.sensing import SensingSwitch

log = logging.getLogger(__name__)

NOT_AUTHORISED = "MQTT authentication failed: the broker refused mqtt.username/mqtt.password (not authorised)"
MAX_INFLIGHT = 20  # unacknowledged messages on the wire; the rest wait in the bounded buffer
AUTH_REASONS = {"Not authorized", "Bad user name or password"}
# An OpenSSL error as paho logs it: "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca (_ssl.c:2580)"
SSL_ERROR = re.compile(r"\[SSL: (?P<code>\w+)\] (?P<text>.*?)(?: \(_ssl\.c:\d+\))?$")
# Alerts a broker sends when it does not accept the client's certificate (or its lack of one)
CLIENT_CERT_ALERT = re.compile(r"ALERT_(\w*CERTIFICATE\w*|UNKNOWN_CA)$")


class MqttError(ValueError):
    """A publisher setting that cannot work (unreadable TLS file, device id unusable in a topic)."""


@dataclass
class Outgoing:
    """One message on its way; ``seq`` is set for emotion windows, ``generation`` is the connection it went out on."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    seq: int | None = None
    generation: int = 0


def tls_problem(code: str, text: str, where: str, ca: str) -> str:
    """One line that says which side's certificate failed: the broker's (our CA) or ours (the broker's CA)."""
    if code == "CERTIFICATE_VERIFY_FAILED":
        return f"TLS certificate verification failed: the broker {where} is not trusted by {ca} ({text})"
    if CLIENT_CERT_ALERT.search(code):
        return f"TLS client certificate refused by the broker {where} ({text}): check mqtt.cert_file and mqtt.key_file"
    return f"TLS handshake with {where} failed: {text}"


def package_version() -> str:
    try:
        return metadata.version("edge-emotion")
    except metadata.PackageNotFoundError:
        return "unknown"


class MqttPublisher:
    """Owns one paho client (network loop in its own thread) and one sender thread that keeps messages in order.

    Only the sender thread calls ``publish`` on the client, so order on the wire is the order of the buffer; after a
    reconnect, paho re-sends the unacknowledged messages first and the sender waits for their acknowledgements before
    sending anything newer. At most ``MAX_INFLIGHT`` messages await an acknowledgement, so a broker that stops
    answering without closing the connection cannot make memory grow past the bounded buffer.
    """

    def __init__(
        self,
        *,
        device: str,
        host: str = "localhost",
        port: int = 1883,
        prefix: str = "emotion",
        qos: int = 1,
        client_id: str | None = None,
        username: str | None = None,
        password: Any = None,
        tls: bool = False,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        tls_insecure: bool = False,
        keepalive: int = 30,
        buffer_size: int = 1000,
        reconnect_min_s: float = 1,
        reconnect_max_s: float = 60,
        discovery: bool = True,
        discovery_prefix: str = "homeassistant",
        classes: Sequence[str] = EMOTIONS,
        model: str = "edge-emotion",
        sw_version: str | None = None,
        switch: SensingSwitch | None = None,
    ) -> None:
        topic_parts = (("device.id", device), ("mqtt.prefix", prefix), ("mqtt.discovery_prefix", discovery_prefix))
        for name, value in topic_parts:
            if not value or any(c in value for c in "+#") or (name == "device.id" and "/" in value):
                raise MqttError(f"{name}: {value!r} cannot be used in an MQTT topic")
        self.device = device
        self.host = host
        self.port = port
        self.qos = qos
        self.classes = tuple(classes)
        self.discovery = discovery
        self.discovery_prefix = discovery_prefix
        self.model = model
        self.sw_version = sw_version or package_version()
        self.emotions_topic = f"{prefix}/{device}/emotions"
        self.stats_topic = f"{prefix}/{device}/stats"
        self.status_topic = f"{prefix}/{device}/status"
        self.sensing_topic = f"{prefix}/{device}/sensing"
        self.sensing_set_topic = f"{self.sensing_topic}/set"
        self.birth_topic = birth_topic(discovery_prefix)
        self.switch = switch
        self.connected = False
        self.dropped = 0
        self.last_error: str | None = None
        self._was_connected = False
        self._socket_error: str | None = None
        self._ca = "the system trust store" if ca_file in (None, SYSTEM_CA) else f"mqtt.ca_file {ca_file}"

        self._cond = threading.Condition()
        self._buffer: deque[Outgoing] = deque()
        self._buffer_size = buffer_size
        self._control: deque[Outgoing] = deque()
        self._inflight: dict[int, Outgoing] = {}
        self._acked_early: set[int] = set()
        self._generation = 0
        self._closing = False

        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"edge-emotion-{device}")
        self.client.will_set(self.status_topic, "offline", qos=1, retain=True)
        if username is not None:
            secret = password.get_secret_value() if hasattr(password, "get_secret_value") else password
            self.client.username_pw_set(username, secret)
        if tls:
            self._set_tls(ca_file, cert_file, key_file, tls_insecure)
        self.client.reconnect_delay_set(reconnect_min_s, reconnect_max_s)
        self.client.max_inflight_messages_set(MAX_INFLIGHT)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.on_log = self._on_log
        self.client.connect_async(host, port, keepalive)
        self.client.loop_start()
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-sender", daemon=True)
        self._sender.start()

    @classmethod
    def from_config(cls, section, device: str, classes: Sequence[str] = EMOTIONS, sw_version: str | None = None,
                    switch: SensingSwitch | None = None) -> MqttPublisher:
        """Build from the ``mqtt`` config section."""
        return cls(
            device=device, host=section.host, port=section.port, prefix=section.prefix, qos=section.qos,
            client_id=section.client_id, username=section.username, password=section.password, tls=section.tls,
            ca_file=section.ca_file, cert_file=section.cert_file, key_file=section.key_file,
            tls_insecure=section.tls_insecure, keepalive=section.keepalive, buffer_size=section.buffer_size,
            reconnect_min_s=section.reconnect_min_s, reconnect_max_s=section.reconnect_max_s,
            discovery=section.discovery, discovery_prefix=section.discovery_prefix, classes=classes,
            sw_version=sw_version, switch=switch,
        )

    @property
    def buffered(self) -> int:
        """Emotion messages not yet acknowledged by the broker (waiting or in flight)."""
        with self._cond:
            return len(self._buffer) + sum(1 for m in self._inflight.values() if m.seq is not None)

    def publish_emotions(self, message: EmotionsMessage) -> None:
        """Queue one window; when the buffer is full the oldest waiting window is dropped and counted."""
        outgoing = Outgoing(self.emotions_topic, message.model_dump_json().encode(), self.qos, False, message.seq)
        with self._cond:
            if len(self._buffer) >= self._buffer_size:
                self._buffer.popleft()
                self.dropped += 1
            self._buffer.append(outgoing)
            self._cond.notify_all()

    def publish_stats(self, message: StatsMessage) -> None:
        """Send stats now if connected; stale stats are not worth buffering."""
        if self.connected:
            with self._cond:
                self._control.append(Outgoing(self.stats_topic, message.model_dump_json().encode(), 0, False))
                self._cond.notify_all()

    def close(self, timeout: float = 5.0) -> None:
        """Publish the retained ``offline`` state, flush what can be flushed within ``timeout``, disconnect.

        While the broker is unreachable there is nothing to wait for: close returns at once and the broker sets
        ``offline`` from the last will. Stopping paho's thread is bounded too, since it may be stuck in a TLS
        handshake with a broker that stopped answering. A second call does nothing.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._closing:
                return
            self._control.append(Outgoing(self.status_topic, b"offline", 1, True))
            self._cond.notify_all()
            self._cond.wait_for(lambda: not (self._buffer or self._control or self._inflight) or self._unreachable(),
                                timeout=max(deadline - time.monotonic(), 0))
            unsent = len(self._buffer) + sum(1 for m in self._inflight.values() if m.seq is not None)
            unreachable = self._unreachable()
            self._closing = True
            self._cond.notify_all()
        if unsent:
            why = "the broker is unreachable" if unreachable else "the broker did not acknowledge them in time"
            log.warning("MQTT: %d emotion message(s) not delivered before shutdown (%s)", unsent, why)
        self._sender.join(timeout=max(deadline - time.monotonic(), 0.1))
        self.client.disconnect()
        stopper = threading.Thread(target=self.client.loop_stop, name="mqtt-stop", daemon=True)
        stopper.start()
        stopper.join(timeout=max(deadline - time.monotonic(), 0.5))

    def announcements(self) -> list[Outgoing]:
        """What every connection and Home Assistant's birth message re-send: discovery (or its removal) and the
        switch's state (or its removal when the switch does not exist), all retained."""
        device = Device(self.device, self.model, self.sw_version, self.discovery_prefix, self.emotions_topic,
                        self.status_topic, self.sensing_topic, self.sensing_set_topic)
        messages = discovery_messages(device, self.classes, self.switch is not None, self.discovery)
        messages.append((self.sensing_topic, self.switch.payload if self.switch is not None else b""))
        return [Outgoing(topic, payload, 1, True) for topic, payload in messages]

    def _set_tls(self, ca_file, cert_file, key_file, tls_insecure: bool) -> None:
        if ca_file == SYSTEM_CA:
            ca_file = None  # paho then verifies against the operating system's trust store
        for key, path in (("mqtt.ca_file", ca_file), ("mqtt.cert_file", cert_file), ("mqtt.key_file", key_file)):
            if path is not None and not Path(path).is_file():
                raise MqttError(f"{key}: file not found: {path}")
        try:
            self.client.tls_set(ca_certs=ca_file and str(ca_file), certfile=cert_file and str(cert_file),
                                keyfile=key_file and str(key_file))
        except (ssl.SSLError, OSError) as err:
            raise MqttError(f"mqtt TLS files could not be loaded: {err}") from err
        self.client.tls_insecure_set(tls_insecure)

    def _unreachable(self) -> bool:
        """Disconnected, and not merely still making the first attempt: a flush would wait for nothing."""
        return not self.connected and (self._was_connected or self.last_error is not None)

    def _report(self, error: str) -> None:
        if error != self.last_error:
            log.error("%s", error)
        with self._cond:
            self.last_error = error
            self._cond.notify_all()

    def _on_log(self, client, userdata, level, buf) -> None:
        """paho's own log at DEBUG; its socket errors are kept, as a TLS alert from the broker only shows there."""
        log.debug("paho: %s", buf)
        if level == paho.MQTT_LOG_ERR:
            self._socket_error = buf

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            text = NOT_AUTHORISED if str(reason) in AUTH_REASONS else f"MQTT broker refused the connection: {reason}"
            self._report(text)
            return
        log.info("MQTT connected to %s:%d", self.host, self.port)
        with self._cond:
            self.connected = True
            self._was_connected = True
            self.last_error = None
            self._generation += 1
            self._control.appendleft(Outgoing(self.status_topic, b"online", 1, True))
            self._control.extend(self.announcements())
            self._cond.notify_all()
        subscriptions = [(self.birth_topic, 1)] if self.discovery else []
        if self.switch is not None:
            subscriptions.append((self.sensing_set_topic, 1))
        if subscriptions:
            client.subscribe(subscriptions)

    def _on_connect_fail(self, client, userdata) -> None:
        error = sys.exc_info()[1]  # paho calls this from inside its ``except OSError`` block
        if isinstance(error, ssl.SSLError):
            text = getattr(error, "verify_message", None) or (error.strerror or str(error))
            self._report(tls_problem(error.reason or "", SSL_ERROR.sub(r"\g<text>", text),
                                     f"{self.host}:{self.port}", self._ca))
        elif error is not None:
            self._report(f"MQTT broker {self.host}:{self.port} is not reachable: {error}")

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        with self._cond:
            was_connected, self.connected = self.connected, False
            # paho re-sends only QoS 1/2 messages: unacknowledged QoS 0 windows go back to the front of the buffer
            lost = sorted((m for mid, m in self._inflight.items() if m.qos == 0), key=lambda m: m.seq or 0)
            self._inflight = {mid: m for mid, m in self._inflight.items() if m.qos > 0}
            self._buffer.extendleft(reversed([m for m in lost if m.seq is not None]))
            self._cond.notify_all()
        if was_connected and not self._closing:
            log.warning("MQTT connection to %s:%d lost (%s); buffering", self.host, self.port, reason)
        socket_error = SSL_ERROR.search(self._socket_error or "")
        if not was_connected and socket_error:  # refused after the handshake, before CONNACK (TLS 1.3 client auth)
            self._report(tls_problem(socket_error["code"], socket_error["text"], f"{self.host}:{self.port}", self._ca))
        self._socket_error = None

    def _on_message(self, client, userdata, message) -> None:
        """Home Assistant's birth message re-sends the announcements; the switch takes commands on its topic only."""
        if message.topic == self.birth_topic and message.payload == BIRTH_PAYLOAD and self.discovery:
            outgoing = self.announcements()
        elif message.topic == self.sensing_set_topic and self.switch is not None:
            applied = self.switch.command(message.payload, retained=bool(message.retain))
            outgoing = [Outgoing(self.sensing_topic, self.switch.payload, 1, True)] if applied else []
        else:
            return
        with self._cond:
            self._control.extend(outgoing)
            self._cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason, properties) -> None:
        with self._cond:
            if self._inflight.pop(mid, None) is None:
                self._acked_early.add(mid)
            self._cond.notify_all()

    def _ready(self) -> bool:
        """Something may be sent: connected, under ``MAX_INFLIGHT`` unacknowledged, none left from an old connection."""
        if not self.connected or len(self._inflight) >= MAX_INFLIGHT:
            return False
        if any(m.generation < self._generation for m in self._inflight.values()):
            return False
        return bool(self._control or self._buffer)

    def _send_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closing or self._ready(), timeout=1.0)
                if self._closing:
                    return
                if not self._ready():
                    continue
                queue = self._control if self._control else self._buffer
                outgoing = queue.popleft()
                outgoing.generation = self._generation
            info = self.client.publish(outgoing.topic, outgoing.payload, outgoing.qos, outgoing.retain)
            with self._cond:
                if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and outgoing.qos == 0:
                    if outgoing.seq is not None:
                        self._buffer.appendleft(outgoing)  # paho keeps no QoS 0 message: keep it ourselves
                elif info.mid not in self._acked_early:
                    self._inflight[info.mid] = outgoing
                self._acked_early.discard(info.mid)
                self._cond.notify_all()
