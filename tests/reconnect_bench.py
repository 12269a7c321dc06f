"""Benchmark (not a test): seconds from the broker's return to the first delivered window, over outages of 1-60 s.

One publisher with the shipped reconnect settings lives through every outage in turn, so each measurement comes after
all the earlier outages (the old doubling back-off made the delay grow with them). Each outage is its nominal length
plus a random part of one probe, so that the broker does not come back in step with the probes. "Delivered" is the
broker's PUBACK for the window buffered during the outage, timed from the moment mosquitto is started (its own
start-up included). A delivery that takes longer than ``LIMIT_S`` is recorded as null, so the 60 s case stays bounded.

    .venv/bin/python tests/reconnect_bench.py > reports/reconnect.json
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from conftest import MOSQUITTO, Broker
from mqtt_helpers import wait_until, windows

from edge_app.config import MqttConfig
from edge_app.mqtt import MqttPublisher

OUTAGES_S = {1: 5, 2: 5, 5: 3, 10: 3, 30: 1, 60: 1}  # outage length: repeats
LIMIT_S = 30.0


def delivered_after(publisher: MqttPublisher, since: float) -> float | None:
    """Seconds from ``since`` until nothing is left unacknowledged, or None past ``LIMIT_S``."""
    while time.monotonic() - since < LIMIT_S:
        if publisher.connected and publisher.buffered == 0:
            return round(time.monotonic() - since, 3)
        time.sleep(0.002)
    return None


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
        "limit_s": LIMIT_S, "summary": summary, "runs": runs,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
