"""Benchmark (not a test): seconds from the broker's return to the first delivered window, over outages of 1-60 s.

One publisher with the shipped reconnect settings lives through every outage in turn, so each measurement comes after
all the earlier outages (the old doubling back-off made the delay grow with them). Each outage is its nominal length
plus a random part of one probe, so that the broker does not come back in step with the probes. "Delivered" is the
broker's PUBACK for the window buffered during the outage, timed from the moment mosquitto is started (its own
start-up included). A delivery that takes longer than ``LIMIT_S`` is recorded as null, so the 60 s case stays bounded.

Then ``stop``: ``edge-emotion run`` (the demo photo, shipped settings, a state directory) gets SIGTERM with windows
buffered and the broker away; once the broker stays away (exit after ``mqtt.flush_s``, windows kept on disk), once it
comes back 1 s into the flush (delivered, then ``offline``, then exit).

    .venv/bin/python tests/reconnect_bench.py > reports/reconnect.json
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from conftest import MOSQUITTO, Broker
from mqtt_helpers import Subscriber, wait_until, windows

from edge_app.config import MqttConfig
from edge_app.publish.mqtt import MqttPublisher

OUTAGES_S = {1: 5, 2: 5, 5: 3, 10: 3, 30: 1, 60: 1}  # outage length: repeats
LIMIT_S = 30.0


def delivered_after(publisher: MqttPublisher, since: float) -> float | None:
    """Seconds from ``since`` until nothing is left unacknowledged, or None past ``LIMIT_S``."""
    while time.monotonic() - since < LIMIT_S:
        if publisher.connected and publisher.buffered == 0:
            return round(time.monotonic() - since, 3)
        time.sleep(0.002)
    return None


def stop_figures(folder: Path, back_after_s: float | None) -> dict:
    """SIGTERM to the service with windows on disk and the broker away; it returns ``back_after_s`` later (or not)."""
    broker = Broker(Path(tempfile.mkdtemp(dir=folder)))
    broker.start()
    topics = ["emotion/bench/emotions", "emotion/bench/status"]
    sub = Subscriber(broker, topics, persistent=True)
    state = Path(tempfile.mkdtemp(dir=folder))
    process = subprocess.Popen(
        [sys.executable, "-m", "edge_app", "--set", f"mqtt.port={broker.port}", "--set", "device.id=bench",
         "--set", "aggregate.window_s=0.5", "run"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "STATE_DIRECTORY": str(state)})
    assert wait_until(lambda: sub.on(topics[1])[-1:] == [b"online"], timeout=120)
    broker.stop()
    assert wait_until(lambda: len(list(state.glob("*.json"))) >= 4, timeout=60)
    process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    if back_after_s is not None:
        time.sleep(back_after_s)
        broker.start()
    returncode = process.wait(timeout=60)
    took = time.monotonic() - sent
    kept = len(list(state.glob("*.json")))
    if back_after_s is None:
        broker.start()
    last = int((state / "last_seq").read_text()) if (state / "last_seq").exists() else None
    wait_until(lambda: sub.on(topics[1])[-1:] == [b"offline"], timeout=10)
    seqs = sorted(set(sub.seqs(topics[0])))
    sub.close()
    broker.stop()
    return {"broker_back_after_s": back_after_s, "exit_code": returncode, "exit_after_sigterm_s": round(took, 3),
            "windows_kept_on_disk": kept, "windows_received": len(seqs),
            "received_every_seq": None if back_after_s is None else seqs == list(range(1, (last or 0) + 1))}


def main() -> int:
    if MOSQUITTO is None:
        print("mosquitto is not installed", file=sys.stderr)
        return 1
    shipped = MqttConfig()
    rng = random.Random(16)
    with tempfile.TemporaryDirectory() as folder:
        broker = Broker(Path(folder))
        broker.start()
        publisher = MqttPublisher(device="bench", host=broker.host, port=broker.port, discovery=False,
                                  reconnect_probe_s=shipped.reconnect_probe_s, reconnect_min_s=shipped.reconnect_min_s,
                                  reconnect_max_s=shipped.reconnect_max_s)
        assert wait_until(lambda: publisher.connected, timeout=10)
        messages = iter(windows(sum(OUTAGES_S.values())))
        runs = []
        for nominal, repeats in OUTAGES_S.items():
            for _ in range(repeats):
                broker.stop()
                assert wait_until(lambda: not publisher.connected, timeout=10)
                publisher.publish_emotions(next(messages))
                outage = nominal + rng.uniform(0, shipped.reconnect_probe_s)
                time.sleep(outage)
                back = time.monotonic()
                broker.start()
                runs.append({"nominal_s": nominal, "outage_s": round(outage, 3),
                             "delay_s": delivered_after(publisher, back)})
                print(json.dumps(runs[-1]), file=sys.stderr)
        publisher.close(timeout=2)
        broker.stop()
        stops = [stop_figures(Path(folder), back) for back in (None, 1.0)]
        print(json.dumps(stops), file=sys.stderr)
    summary = {}
    for nominal in OUTAGES_S:
        delays = [r["delay_s"] for r in runs if r["nominal_s"] == nominal]
        done = [d for d in delays if d is not None]
        summary[f"{nominal}s"] = {"runs": len(delays), "undelivered": len(delays) - len(done),
                                  "median_s": statistics.median(done) if done else None,
                                  "max_s": max(done) if done else None}
    print(json.dumps({
        "measure": "seconds from mosquitto being started again to the PUBACK of the window buffered in the outage",
        "settings": {"reconnect_probe_s": shipped.reconnect_probe_s, "reconnect_min_s": shipped.reconnect_min_s,
                     "reconnect_max_s": shipped.reconnect_max_s},
        "limit_s": LIMIT_S, "summary": summary, "runs": runs, "stop": stops,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
