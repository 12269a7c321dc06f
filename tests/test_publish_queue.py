"""The on-disk queue of unacknowledged windows (real files, a real mosquitto): a restart sends them first and seq
continues; a bad file is set aside in one line; the bound holds on disk too; the reconnect policy's waits."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from mqtt_helpers import assert_complete_in_order, publisher, subscriber, wait_until, windows

from edge_app.emotions import EMOTIONS
from edge_app.publish.aggregate import EmotionsMessage, WindowAggregator
from edge_app.publish.queue import QueueDirError, WindowQueue, queue_directory
from edge_app.publish.reconnect import STABLE_S, ReconnectPolicy

TOPIC = "emotion/testcam/emotions"


def stored_seqs(folder) -> list[int]:
    return sorted(int(p.stem) for p in folder.glob("*.json"))


def test_windows_kept_on_disk_are_sent_first_after_a_restart_and_seq_continues(mosquitto, clients, tmp_path):
    folder = tmp_path / "queue"
    broker = mosquitto()
    sub = subscriber(clients, broker, [TOPIC], persistent=True)
    broker.stop()
    first = publisher(clients, broker, discovery=False, queue=WindowQueue(folder))
    for message in windows(4):
        first.publish_emotions(message)
    first.close(timeout=0.2)  # the broker is away: the windows stay on disk
    assert stored_seqs(folder) == [1, 2, 3, 4]

    queue = WindowQueue(folder)
    assert queue.next_seq == 5
    broker.start()
    second = publisher(clients, broker, discovery=False, queue=queue)
    aggregator = WindowAggregator(EMOTIONS, 1.0, "testcam", now=0.0, first_seq=second.next_seq)
    for t in (1.0, 2.0):
        second.publish_emotions(aggregator.flush(t))
    assert sub.wait_for(lambda: len(set(sub.seqs(TOPIC))) == 6), sub.seqs(TOPIC)
    assert_complete_in_order(sub.seqs(TOPIC), [1, 2, 3, 4, 5, 6])
    assert wait_until(lambda: not stored_seqs(folder))  # acknowledged, so removed
    second.close()
    assert WindowQueue(folder).next_seq == 7  # kept in last_seq once the queue is empty


def test_qos_0_windows_leave_the_disk_once_written_to_the_broker(mosquitto, clients, tmp_path):
    folder = tmp_path / "queue"
    broker = mosquitto()
    sub = subscriber(clients, broker, [TOPIC])
    pub = publisher(clients, broker, discovery=False, qos=0, queue=WindowQueue(folder))
    assert wait_until(lambda: pub.connected)
    for message in windows(5):
        pub.publish_emotions(message)
    assert sub.wait_for(lambda: len(sub.seqs(TOPIC)) == 5), sub.seqs(TOPIC)
    assert sub.seqs(TOPIC) == [1, 2, 3, 4, 5]
    assert wait_until(lambda: pub.buffered == 0 and not stored_seqs(folder))


def test_a_broker_away_past_the_buffer_size_drops_the_oldest_on_disk_too_and_counts_them(mosquitto, clients,
                                                                                         tmp_path):
    folder = tmp_path / "queue"
    broker = mosquitto()
    sub = subscriber(clients, broker, [TOPIC], persistent=True)
    broker.stop()
    first = publisher(clients, broker, discovery=False, buffer_size=3, queue=WindowQueue(folder))
    for message in windows(8):
        first.publish_emotions(message)
    assert (first.buffered, first.dropped, stored_seqs(folder)) == (3, 5, [6, 7, 8])
    first.close(timeout=0.2)
    # a smaller buffer after the restart: the oldest kept window is dropped at start, and counted
    second = publisher(clients, broker, discovery=False, buffer_size=2, queue=WindowQueue(folder))
    assert (second.buffered, second.dropped, stored_seqs(folder)) == (2, 1, [7, 8])
    broker.start()
    assert sub.wait_for(lambda: len(set(sub.seqs(TOPIC))) == 2), sub.seqs(TOPIC)
    assert_complete_in_order(sub.seqs(TOPIC), [7, 8])
    assert wait_until(lambda: second.buffered == 0 and not stored_seqs(folder))


def test_a_corrupt_truncated_or_misnamed_file_is_set_aside_in_one_line_and_the_rest_is_loaded(tmp_path, caplog):
    folder = tmp_path / "queue"
    queue = WindowQueue(folder)
    for message in windows(5):
        queue.add(message.seq, message.model_dump_json().encode())
    whole = (folder / "0000000002.json").read_bytes()
    (folder / "0000000002.json").write_bytes(whole[: len(whole) // 2])  # truncated
    (folder / "0000000003.json").write_bytes(b"\x00\xff garbage")
    (folder / "0000000004.json").write_bytes((folder / "0000000005.json").read_bytes())  # holds seq 5
    (folder / ".0000000006.json.tmp").write_bytes(whole[:10])  # a write cut before its rename
    with caplog.at_level(logging.INFO, logger="edge_app.publish.queue"):
        reopened = WindowQueue(folder)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3 and all("set aside as" in e and "\n" not in e for e in errors), errors
    assert any("0000000002.json" in e and "EOF" in e for e in errors), errors
    assert [seq for seq, _ in reopened.take_loaded()] == [1, 5]
    assert sorted(p.name for p in folder.iterdir()) == [
        "0000000001.json", "0000000002.json.corrupt", "0000000003.json.corrupt", "0000000004.json.corrupt",
        "0000000005.json"]
    assert reopened.next_seq == 6


def test_an_unreadable_last_seq_is_set_aside_and_the_windows_still_give_the_next_seq(tmp_path, caplog):
    folder = tmp_path / "queue"
    queue = WindowQueue(folder)
    for message in windows(3):
        queue.add(message.seq, message.model_dump_json().encode())
    queue.remove(3)  # the newest: last_seq is written
    (folder / "last_seq").write_bytes(b"\x00\x00")
    with caplog.at_level(logging.ERROR, logger="edge_app.publish.queue"):
        assert WindowQueue(folder).next_seq == 3
    assert len(caplog.records) == 1 and "last_seq" in caplog.records[0].getMessage()
    assert (folder / "last_seq.corrupt").exists()


def test_only_window_payloads_and_the_last_seq_are_written(tmp_path):
    folder = tmp_path / "queue"
    queue = WindowQueue(folder)
    for message in windows(3):
        queue.add(message.seq, message.model_dump_json().encode())
    queue.remove(1)
    for path in folder.iterdir():
        if path.name == "last_seq":
            assert path.read_text().strip().isdigit()
        else:
            EmotionsMessage.model_validate_json(path.read_bytes())  # strict: nothing else fits in it
    assert oct(folder.stat().st_mode & 0o777) == "0o700"


def test_the_state_directory_wins_then_queue_dir_then_memory_only(tmp_path):
    assert queue_directory("/q", {"STATE_DIRECTORY": "/var/lib/edge-emotion/cam:/other"}) == (
        tmp_path.__class__("/var/lib/edge-emotion/cam"), "$STATE_DIRECTORY")
    assert queue_directory(str(tmp_path), {}) == (tmp_path, "mqtt.queue_dir")
    assert queue_directory(None, {}) == (None, "memory")
    memory = WindowQueue()
    memory.add(1, b"{}")
    assert memory.next_seq == 2 and memory.stored == 0


def test_an_unwritable_queue_dir_is_one_line_and_exit_2(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(QueueDirError, match=r"^mqtt\.queue_dir: cannot write the MQTT queue directory .*a-file/q"):
        WindowQueue(blocker / "q")
    result = subprocess.run([sys.executable, "-m", "edge_app", "--set", f"mqtt.queue_dir={blocker / 'q'}", "run"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: mqtt.queue_dir: cannot write"), result.stderr


def test_an_absent_broker_is_probed_often_and_the_back_off_is_for_refusals_and_flaps():
    policy = ReconnectPolicy(probe_s=0.5, min_s=1, max_s=8)
    probes = [policy.unreachable() for _ in range(50)]  # however long the outage
    assert all(0.25 <= p <= 0.5 for p in probes) and len(set(probes)) > 1  # spread: no lockstep after an outage
    assert [policy.refused() for _ in range(5)] == [1, 2, 4, 8, 8]
    assert policy.lost(connected_for=STABLE_S) == 0.0  # a connection that lasted: retry at once, back-off reset
    # a broker restarted every few seconds: each loss is retried at once, the attempt finds it away, probe again
    for _ in range(5):
        assert policy.lost(connected_for=1.0) == 0.0 and policy.unreachable() <= 0.5
    # dropped again right after reconnecting, with no outage between (a shared client id): a flap, back off
    assert [policy.lost(connected_for=0.1) for _ in range(4)] == [0.0, 1, 2, 4]
    assert policy.lost(connected_for=STABLE_S) == 0.0 and policy.refused() == 1


def test_the_publisher_reconnects_soon_after_each_outage_however_long_the_back_off(mosquitto, clients):
    broker = mosquitto()
    sub = subscriber(clients, broker, [TOPIC], persistent=True)
    # a 60 s back-off would hold every reconnection below past the 20 s allowed: only the probe can meet it
    pub = publisher(clients, broker, discovery=False, reconnect_probe_s=0.2, reconnect_min_s=60, reconnect_max_s=60)
    assert wait_until(lambda: pub.connected)
    messages = iter(windows(4))
    for _ in range(3):
        broker.stop()
        assert wait_until(lambda: not pub.connected, timeout=5)
        pub.publish_emotions(next(messages))
        assert wait_until(lambda: pub.last_error is not None and "not reachable" in pub.last_error, timeout=5)
        broker.start()
        assert wait_until(lambda: pub.connected and pub.buffered == 0, timeout=20), pub.last_error
    pub.publish_emotions(next(messages))
    assert sub.wait_for(lambda: len(set(sub.seqs(TOPIC))) == 4)
    assert_complete_in_order(sub.seqs(TOPIC), [1, 2, 3, 4])


def test_two_devices_sharing_a_client_id_are_flaps_and_back_off(mosquitto, clients):
    """The broker drops the older connection of a client id whenever the other device connects: no outage, so the
    retry-at-once after a loss must not apply each time, or the two would reconnect hundreds of times a second."""
    broker = mosquitto()
    settings = {"client_id": "shared", "discovery": False, "reconnect_probe_s": 1.0, "reconnect_min_s": 1.0,
                "reconnect_max_s": 60.0}
    first = publisher(clients, broker, **settings)
    second = publisher(clients, broker, **settings)
    assert wait_until(lambda: min(first._policy.failures, second._policy.failures) >= 3, timeout=40)
    connections = broker.log_path.read_text().count("as shared")
    assert connections <= 12, f"{connections} connections before the back-off reached 4 s"  # the policy: 9
