"""Publishing aggregated emotions over MQTT, in the style of Frigate and Home Assistant.

Topics: ``<prefix>/<device>/emotions`` (one message per window), ``<prefix>/<device>/stats`` and
``<prefix>/<device>/status`` (retained ``online``/``offline``, ``offline`` also being the last will), plus retained Home
Assistant discovery configs (``homeassistant``) and the privacy switch: ``<prefix>/<device>/sensing/set`` takes
``ON``/``OFF``, ``<prefix>/<device>/sensing`` holds the retained state. While the broker is unreachable, emotion
messages wait in a bounded buffer (and in the on-disk queue of ``queue``, across restarts) and go out in order
once it is back; a message counts as delivered only when the broker acknowledged it. When to reconnect is
``reconnect.ReconnectPolicy``'s decision.
"""

from __future__ import annotations

import logging
import ssl
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

from edge_app.config import SYSTEM_CA
from edge_app.emotions import EMOTIONS
from edge_app.publish.aggregate import EmotionsMessage, StatsMessage
from edge_app.publish.homeassistant import BIRTH_PAYLOAD, Device, birth_topic, discovery_messages
from edge_app.publish.mqtt_tls import SSL_ERROR, MqttError, configure_tls, tls_problem
from edge_app.publish.queue import WindowQueue, queue_directory
from edge_app.publish.reconnect import ReconnectPolicy
from edge_app.publish.sensing import SensingSwitch

log = logging.getLogger(__name__)

NOT_AUTHORISED = "MQTT authentication failed: the broker refused mqtt.username/mqtt.password (not authorised)"
MAX_INFLIGHT = 20  # unacknowledged messages on the wire; the rest wait in the bounded buffer
LOOP_S = 0.05  # the network thread's longest wait for socket events: how soon it sees a new message to send
AUTH_REASONS = {"Not authorized", "Bad user name or password"}


@dataclass
class Outgoing:
    """One message on its way; ``seq`` is set for emotion windows, ``generation`` is the connection it went out on."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    seq: int | None = None
    generation: int = 0


def package_version() -> str:
    try:
        return metadata.version("edge-emotion")
    except metadata.PackageNotFoundError:
        return "unknown"


class MqttPublisher:
    """Owns one paho client and the one thread that uses it: it connects when the reconnect policy says (at once when
    ``close`` asks for a last flush), runs paho's network loop and publishes, so order on the wire is the order of
    the buffer. After a reconnect, paho re-sends the unacknowledged messages first and nothing newer is sent before
    their acknowledgements. At most ``MAX_INFLIGHT`` messages await an acknowledgement, so a broker that stops
    answering without closing the connection cannot make memory grow past the bounded buffer. Every window is in
    ``queue`` (on disk when it has a directory) from ``publish_emotions`` until the broker acknowledged it.
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
        reconnect_probe_s: float = 1,
        reconnect_min_s: float = 1,
        reconnect_max_s: float = 60,
        queue: WindowQueue | None = None,
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
        self._generation = 0
        self._closing = False  # close() is flushing: connect at once, retry every probe
        self._stop = False  # the network thread disconnects and ends
        self._hurry = False  # cut the wait before the next connection attempt short
        self._policy = ReconnectPolicy(reconnect_probe_s, reconnect_min_s, reconnect_max_s)
        self._retry_in: float | None = None  # the wait on_disconnect chose for the next attempt
        self._connected_at = 0.0
        self._refused = False
        self.queue = queue or WindowQueue()
        self._load_queue()

        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"edge-emotion-{device}")
        self.client.will_set(self.status_topic, "offline", qos=1, retain=True)
        if username is not None:
            secret = password.get_secret_value() if hasattr(password, "get_secret_value") else password
            self.client.username_pw_set(username, secret)
        if tls:
            configure_tls(self.client, ca_file, cert_file, key_file, tls_insecure)
        self.client.max_inflight_messages_set(MAX_INFLIGHT)
        # With an (empty) external-loop hook paho never writes from the calling thread: every socket write happens
        # in loop(), in the network thread, so publish() is as safe from any thread as with paho's own loop_start.
        self.client.on_socket_register_write = lambda *_: None
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.on_log = self._on_log
        self.client.connect_async(host, port, keepalive)  # only sets the address: the network thread connects
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, section, device: str, classes: Sequence[str] = EMOTIONS, sw_version: str | None = None,
                    keep_on_disk: bool = True, switch: SensingSwitch | None = None) -> MqttPublisher:
        """Build from the ``mqtt`` config section; ``keep_on_disk=False`` (a benchmark) leaves the queue folder,
        which belongs to the service, alone. ``switch``: the privacy switch, commanded over MQTT."""
        folder, origin = queue_directory(section.queue_dir) if keep_on_disk else (None, "memory")
        return cls(
            device=device, host=section.host, port=section.port, prefix=section.prefix, qos=section.qos,
            client_id=section.client_id, username=section.username, password=section.password, tls=section.tls,
            ca_file=section.ca_file, cert_file=section.cert_file, key_file=section.key_file,
            tls_insecure=section.tls_insecure, keepalive=section.keepalive, buffer_size=section.buffer_size,
            reconnect_probe_s=section.reconnect_probe_s, reconnect_min_s=section.reconnect_min_s,
            reconnect_max_s=section.reconnect_max_s, queue=WindowQueue(folder, origin),
            discovery=section.discovery, discovery_prefix=section.discovery_prefix, classes=classes,
            sw_version=sw_version, switch=switch,
        )

    @property
    def next_seq(self) -> int:
        """The ``seq`` of the next window: it continues from the queue's earlier runs, never reused."""
        return self.queue.next_seq

    @property
    def buffered(self) -> int:
        """Emotion messages not yet acknowledged by the broker (waiting or in flight)."""
        with self._cond:
            return self._unsent()

    def publish_emotions(self, message: EmotionsMessage) -> None:
        """Queue one window (on disk first); when the buffer is full the oldest waiting one is dropped and counted."""
        outgoing = Outgoing(self.emotions_topic, message.model_dump_json().encode(), self.qos, False, message.seq)
        self.queue.add(message.seq, outgoing.payload)
        self._append(outgoing)

    def _append(self, outgoing: Outgoing) -> None:
        with self._cond:
            dropped = self._buffer.popleft() if len(self._buffer) >= self._buffer_size else None
            self.dropped += dropped is not None
            self._buffer.append(outgoing)
            self._cond.notify_all()
        if dropped is not None and dropped.seq is not None:
            self.queue.remove(dropped.seq)

    def _load_queue(self) -> None:
        """Windows an earlier run left unacknowledged go first, in ``seq`` order (the oldest dropped past the size)."""
        for seq, payload in self.queue.take_loaded():
            self._append(Outgoing(self.emotions_topic, payload, self.qos, False, seq))
        if self.dropped:
            log.warning("MQTT queue: %d window(s) from an earlier run dropped (mqtt.buffer_size is %d)",
                        self.dropped, self._buffer_size)

    def publish_stats(self, message: StatsMessage) -> None:
        """Send stats now if connected; stale stats are not worth buffering."""
        if self.connected:
            with self._cond:
                self._control.append(Outgoing(self.stats_topic, message.model_dump_json().encode(), 0, False))
                self._cond.notify_all()

    def close(self, timeout: float = 5.0) -> None:
        """Deliver the buffered windows within ``timeout`` (connecting at once, and again every probe, while the
        broker is away), then publish the retained ``offline`` state and disconnect.

        What is still unacknowledged then stays in the queue's directory for the next start. With nothing buffered
        and no connection there is nothing to wait for: close returns at once and the broker sets ``offline`` from
        the last will. Bounded also while paho is stuck in a TLS handshake with a broker that stopped answering.
        A second call does nothing.
        """
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(deadline - time.monotonic(), 0.0)

        with self._cond:
            if self._closing:
                return
            self._closing, self._hurry = True, True
            self._cond.notify_all()
            self._cond.wait_for(lambda: not self._unsent(), timeout=left())
            unsent, unreachable = self._unsent(), self._unreachable()
            if self.connected:
                self._control.append(Outgoing(self.status_topic, b"offline", 1, True))
                self._cond.notify_all()
                self._cond.wait_for(lambda: not (self._control or self._inflight) or not self.connected,
                                    timeout=max(left(), 0.5))
            self._stop = True
            self._cond.notify_all()
        if unsent:
            why = "the broker is unreachable" if unreachable else "the broker did not acknowledge them in time"
            kept = f"kept in {self.queue.directory}" if self.queue.directory else "lost: no mqtt.queue_dir"
            log.warning("MQTT: %d emotion message(s) not delivered before shutdown (%s); %s", unsent, why, kept)
        self._thread.join(timeout=max(left(), 0.2))

    def announcements(self) -> list[Outgoing]:
        """What every connection and Home Assistant's birth message re-send: discovery (or its removal) and the
        switch's state (or its removal when the switch does not exist), all retained."""
        device = Device(self.device, self.model, self.sw_version, self.discovery_prefix, self.emotions_topic,
                        self.status_topic, self.sensing_topic, self.sensing_set_topic)
        messages = discovery_messages(device, self.classes, self.switch is not None, self.discovery)
        messages.append((self.sensing_topic, self.switch.payload if self.switch is not None else b""))
        return [Outgoing(topic, payload, 1, True) for topic, payload in messages]

    def _unreachable(self) -> bool:
        """Disconnected, and not merely still making the first attempt: why windows were not delivered at close."""
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
            self._refused = True
            self._report(text)
            return
        log.info("MQTT connected to %s:%d", self.host, self.port)
        with self._cond:
            self.connected = True
            self._connected_at = time.monotonic()
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

    def _connect_failed(self, error: OSError) -> float:
        """Report a connection attempt that failed before MQTT; the wait before the next one."""
        if isinstance(error, ssl.SSLError):
            text = getattr(error, "verify_message", None) or (error.strerror or str(error))
            self._report(tls_problem(error.reason or "", SSL_ERROR.sub(r"\g<text>", text),
                                     f"{self.host}:{self.port}", self._ca))
            return self._policy.refused()
        self._report(f"MQTT broker {self.host}:{self.port} is not reachable: {error}")
        return self._policy.unreachable()

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        with self._cond:
            was_connected, self.connected = self.connected, False
            # paho re-sends only QoS 1/2 messages: unacknowledged QoS 0 windows go back to the front of the buffer
            lost = sorted((m for mid, m in self._inflight.items() if m.qos == 0), key=lambda m: m.seq or 0)
            self._inflight = {mid: m for mid, m in self._inflight.items() if m.qos > 0}
            self._buffer.extendleft(reversed([m for m in lost if m.seq is not None]))
            self._cond.notify_all()
        if was_connected and not self._stop:
            log.warning("MQTT connection to %s:%d lost (%s); buffering", self.host, self.port, reason)
        socket_error = SSL_ERROR.search(self._socket_error or "")
        if not was_connected and socket_error:  # refused after the handshake, before CONNACK (TLS 1.3 client auth)
            self._report(tls_problem(socket_error["code"], socket_error["text"], f"{self.host}:{self.port}", self._ca))
        if was_connected:
            self._retry_in = self._policy.lost(time.monotonic() - self._connected_at)
        elif socket_error or self._refused:
            self._retry_in = self._policy.refused()
        else:  # closed before the broker answered: a broker going down or not up yet
            self._retry_in = self._policy.unreachable()
        self._socket_error, self._refused = None, False

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
        """Called in ``loop()``, so always after ``_send_ready`` registered ``mid``: paho writes nothing in publish."""
        with self._cond:
            outgoing = self._inflight.pop(mid, None)
            self._cond.notify_all()
        if outgoing is not None and outgoing.seq is not None:
            self.queue.remove(outgoing.seq)

    def _ready(self) -> bool:
        """Something may be sent: connected, under ``MAX_INFLIGHT`` unacknowledged, none left from an old connection."""
        if not self.connected or len(self._inflight) >= MAX_INFLIGHT:
            return False
        if any(m.generation < self._generation for m in self._inflight.values()):
            return False
        return bool(self._control or self._buffer)

    def _unsent(self) -> int:
        """Emotion windows not yet acknowledged (the caller holds ``_cond``)."""
        return len(self._buffer) + sum(1 for m in self._inflight.values() if m.seq is not None)

    def _run(self) -> None:
        """The network thread: connect on the policy's schedule, then serve the connection until it ends."""
        wait = 0.0
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stop or self._hurry, timeout=wait)
                if self._stop:
                    return
                self._hurry = False
            try:
                self.client.reconnect()
            except OSError as error:  # refused, timed out, no route, TLS: before any MQTT packet
                wait = self._connect_failed(error)
            else:
                self._retry_in = None
                while self._serve():
                    pass
                # on_disconnect chose the wait; a loop error paho reports no disconnect for counts as unreachable
                wait = self._policy.unreachable() if self._retry_in is None else self._retry_in
            if self._closing:
                wait = min(wait, self._policy.probe_s)  # flushing at shutdown: keep trying while there is time

    def _serve(self) -> bool:
        """Send what is ready and run one round of paho's loop; False once the connection is over."""
        self._send_ready()
        if self._stop:
            self.client.disconnect()
            for _ in range(20):  # let the DISCONNECT go out; paho closes the socket once it has
                if self.client.loop(timeout=LOOP_S) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
            return False
        return self.client.loop(timeout=LOOP_S) == MQTTErrorCode.MQTT_ERR_SUCCESS

    def _send_ready(self) -> None:
        while True:
            with self._cond:
                if not self._ready():
                    return
                queue = self._control if self._control else self._buffer
                outgoing = queue.popleft()
                outgoing.generation = self._generation
            info = self.client.publish(outgoing.topic, outgoing.payload, outgoing.qos, outgoing.retain)
            with self._cond:
                if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and outgoing.qos == 0:
                    if outgoing.seq is not None:
                        self._buffer.appendleft(outgoing)  # paho keeps no QoS 0 message: keep it ourselves
                else:
                    self._inflight[info.mid] = outgoing
                self._cond.notify_all()
