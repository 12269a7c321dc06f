"""Broker faults against a real mosquitto: down at start, restarts mid-run, a frozen broker, a full buffer, shutting
down during an outage. Nothing is lost that the buffer could hold; what it could not hold is counted."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from mqtt_helpers import (
    assert_complete_in_order,
    make_certificates,
    publisher,
    subscriber,
    wait_until,
    windows,
)

from edge_app.emotions import EMOTIONS
from edge_app.publish.aggregate import StatsMessage, WindowAggregator
from edge_app.publish.mqtt import MAX_INFLIGHT
from edge_app.publish.queue import WindowQueue


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


@pytest.mark.parametrize("mqtt5", [False, True], ids=["clean_session-false", "mqtt5-session-expiry"])
def test_broker_restarted_twice_mid_run_loses_nothing(mosquitto, clients, mqtt5):
    broker = mosquitto()
    sub = subscriber(clients, broker, ["emotion/testcam/emotions", "emotion/testcam/status"], persistent=True,
                     mqtt5=mqtt5)
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
    pub = publisher(clients, broker, discovery=False, reconnect_probe_s=1.0, reconnect_min_s=1.0, reconnect_max_s=1.0)
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
    assert wait_until(lambda: pub.buffered == 0)
    # the count reaches subscribers in the stats message, as the service sends it
    stats_sub = subscriber(clients, broker, ["emotion/testcam/stats"])
    aggregator = WindowAggregator(EMOTIONS, 1.0, "testcam", now=0.0)
    pub.publish_stats(aggregator.stats(1.0, buffered_messages=pub.buffered, dropped_messages=pub.dropped,
                                       delegate="cpu", source_state="streaming"))
    assert stats_sub.wait_for(lambda: stats_sub.on("emotion/testcam/stats"))
    stats = StatsMessage.model_validate_json(stats_sub.on("emotion/testcam/stats")[0])
    assert (stats.dropped_messages, stats.buffered_messages) == (2, 0)




def retained_status(clients, broker, topic: str = "emotion/testcam/status") -> bytes | None:
    """What a new subscriber is told the status is (the retained message), or None when nothing is retained."""
    late = subscriber(clients, broker, [topic])
    late.wait_for(lambda: late.on(topic), timeout=2)
    return (late.on(topic) or [None])[0]


def test_close_during_an_outage_tries_until_its_timeout_keeps_the_windows_and_leaves_offline(mosquitto, clients,
                                                                                             tmp_path):
    broker = mosquitto()
    pub = publisher(clients, broker, discovery=False, queue=WindowQueue(tmp_path / "queue"))
    assert wait_until(lambda: pub.connected)
    assert wait_until(lambda: retained_status(clients, broker) == b"online")
    broker.stop()
    assert wait_until(lambda: not pub.connected, timeout=5)
    for message in windows(3):
        pub.publish_emotions(message)
    started = time.monotonic()
    pub.close(timeout=1.0)
    assert time.monotonic() - started < 3.0
    assert sorted(p.name for p in (tmp_path / "queue").glob("*.json")) == [f"{seq:010d}.json" for seq in (1, 2, 3)]
    broker.start()
    assert retained_status(clients, broker) == b"offline"  # the last will: the connection was not closed cleanly


def test_close_connects_as_soon_as_the_broker_is_back_and_delivers_before_offline(mosquitto, clients, tmp_path):
    broker = mosquitto()
    sub = subscriber(clients, broker, ["emotion/testcam/emotions", "emotion/testcam/status"], persistent=True)
    broker.stop()
    # the 60 s back-off is for a broker that refuses us: an absent one is tried at once, then every probe
    pub = publisher(clients, broker, discovery=False, queue=WindowQueue(tmp_path / "queue"), reconnect_probe_s=0.5,
                    reconnect_min_s=60, reconnect_max_s=60)
    for message in windows(5):
        pub.publish_emotions(message)
    assert wait_until(lambda: pub.last_error is not None, timeout=5)
    closing = threading.Thread(target=pub.close, kwargs={"timeout": 30.0})
    closing.start()
    assert wait_until(lambda: pub._closing)
    broker.start()
    closing.join(timeout=40)
    assert not closing.is_alive()
    assert sub.wait_for(lambda: sub.on("emotion/testcam/status")[-1:] == [b"offline"], timeout=15), sub.messages
    assert_complete_in_order(sub.seqs("emotion/testcam/emotions"), [1, 2, 3, 4, 5])
    assert sub.messages[-1][:2] == ("emotion/testcam/status", b"offline")  # after the last window
    assert not list((tmp_path / "queue").glob("*.json"))  # acknowledged: nothing kept
    assert (tmp_path / "queue" / "last_seq").read_text() == "5\n"


def test_close_is_bounded_while_a_frozen_broker_holds_the_tls_handshake(mosquitto, clients, tmp_path):
    certs = make_certificates(tmp_path)
    broker = mosquitto(f"cafile {certs['ca.crt']}\ncertfile {certs['server.crt']}\nkeyfile {certs['server.key']}")
    broker.process.send_signal(signal.SIGSTOP)  # the kernel still accepts the TCP connection; no TLS answer comes
    try:
        pub = publisher(clients, broker, tls=True, ca_file=certs["ca.crt"])
        time.sleep(0.5)  # paho's thread is now inside the handshake (it waits up to its 5 s connect timeout)
        started = time.monotonic()
        pub.close(timeout=1.0)
        assert time.monotonic() - started < 2.0
        assert not pub.connected
    finally:
        broker.process.send_signal(signal.SIGCONT)


def service(broker, state, *extra: str) -> subprocess.Popen:
    """``edge-emotion run`` on the demo photo, as systemd starts it (its state directory in the environment)."""
    return subprocess.Popen(
        [sys.executable, "-m", "edge_app", "--set", f"mqtt.port={broker.port}", "--set", "device.id=testcam",
         "--set", "aggregate.window_s=0.5", *extra, "run"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "STATE_DIRECTORY": str(state)},
    )


def stop(process: subprocess.Popen, signum: int = signal.SIGTERM) -> tuple[int, str]:
    """Send ``signum``, wait for the exit; its return code and everything it logged."""
    try:
        process.send_signal(signum)
        returncode = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
    return returncode, process.stderr.read()


def logged_windows(stderr: str) -> list[int]:
    return [int(seq) for seq in re.findall(r"window (\d+): ", stderr)]


def stored_seqs(state) -> list[int]:
    return sorted(int(p.stem) for p in state.glob("*.json"))


def test_the_issue_scenario_two_short_outages_then_sigterm_delivers_every_window(mosquitto, clients, tmp_path):
    """Measured in the issue: with the broker stopped 3 s, back 4 s, stopped 2 s, back 7 s and then SIGTERM, the
    service never reconnected and 12 of 15 windows were lost. Default reconnect settings, as shipped."""
    broker = mosquitto()
    sub = subscriber(clients, broker, ["emotion/testcam/emotions", "emotion/testcam/status"], persistent=True)
    state = tmp_path / "state"
    process = service(broker, state)
    try:
        assert sub.wait_for(lambda: sub.seqs("emotion/testcam/emotions"), timeout=60)
        for down_s, up_s in ((3, 4), (2, 7)):  # the outages themselves; nothing below depends on their length
            broker.stop()
            time.sleep(down_s)
            broker.start()
            time.sleep(up_s)
    finally:
        returncode, stderr = stop(process)
    assert returncode == 0, stderr
    last = max(logged_windows(stderr))
    assert sub.wait_for(lambda: len(set(sub.seqs("emotion/testcam/emotions"))) == last, timeout=15), \
        (sub.seqs("emotion/testcam/emotions"), last)
    assert_complete_in_order(sub.seqs("emotion/testcam/emotions"), list(range(1, last + 1)))
    assert sub.wait_for(lambda: sub.on("emotion/testcam/status")[-1:] == [b"offline"])
    assert not stored_seqs(state) and (state / "last_seq").read_text() == f"{last}\n"
    connections = broker.log_path.read_text().count("as edge-emotion-testcam")
    assert connections >= 3, f"the service connected {connections} time(s): it did not come back after an outage"


def test_sigkill_with_windows_buffered_then_a_restart_delivers_every_window_and_seq_continues(
        mosquitto, clients, tmp_path):
    broker = mosquitto()
    sub = subscriber(clients, broker, ["emotion/testcam/emotions"], persistent=True)
    broker.stop()
    state = tmp_path / "state"
    first = service(broker, state)
    try:
        assert wait_until(lambda: len(stored_seqs(state)) >= 4, timeout=60)
    finally:
        stop(first, signal.SIGKILL)
    kept = stored_seqs(state)  # a write the kill cut short is a temporary file, never a window
    assert kept == list(range(1, len(kept) + 1))
    broker.start()
    second = service(broker, state)
    try:
        assert sub.wait_for(lambda: len(set(sub.seqs("emotion/testcam/emotions"))) >= len(kept) + 3, timeout=60)
    finally:
        returncode, stderr = stop(second)
    assert returncode == 0, stderr
    assert logged_windows(stderr)[0] == len(kept) + 1, stderr  # seq continues where the killed run stopped
    assert f"{len(kept)} window(s) from an earlier run" in stderr
    last = max(logged_windows(stderr))
    assert sub.wait_for(lambda: len(set(sub.seqs("emotion/testcam/emotions"))) == last, timeout=15)
    assert_complete_in_order(sub.seqs("emotion/testcam/emotions"), list(range(1, last + 1)))


def test_sigterm_during_an_outage_exits_0_within_flush_s_keeps_the_windows_on_disk_and_leaves_offline(
        mosquitto, clients, tmp_path):
    broker = mosquitto()
    status = subscriber(clients, broker, ["emotion/testcam/status"])
    state = tmp_path / "state"
    process = service(broker, state, "--set", "mqtt.reconnect_probe_s=0.2", "--set", "mqtt.flush_s=2")
    try:
        assert status.wait_for(lambda: status.on("emotion/testcam/status")[-1:] == [b"online"], timeout=60)
        status.close()
        clients.remove(status)
        broker.stop()
        assert wait_until(lambda: len(stored_seqs(state)) >= 2, timeout=60)  # windows pile up on disk
        started = time.monotonic()
    finally:
        returncode, stderr = stop(process)
    took = time.monotonic() - started
    assert returncode == 0, stderr
    assert took < 2 + 3.0, f"exit took {took:.1f} s with mqtt.flush_s=2"
    kept = [line for line in stderr.splitlines() if "not delivered before shutdown" in line]
    assert len(kept) == 1 and f"kept in {state}" in kept[0], stderr
    assert len(stored_seqs(state)) >= 2
    broker.start()
    assert retained_status(clients, broker) == b"offline"
