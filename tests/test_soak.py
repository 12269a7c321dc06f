"""Load: `edge-emotion bench --soak 60` with four faces per frame publishing to a real mosquitto while a subscriber on
the same broker counts the windows: memory stays flat after warm-up, every window goes out on time, none is lost."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime

import numpy as np
import pytest
from mqtt_helpers import Subscriber

SOAK_S = 60
WINDOW_S = 2.0
FACES = 4
MAX_RSS_GROWTH_PCT = 5.0
# A window closes on the first frame after it is due: it may be late by one frame (four faces, a loaded machine).
ON_TIME_S = 0.5


@pytest.mark.slow
def test_soak_with_four_faces_keeps_memory_flat_and_delivers_every_window_on_time(mosquitto) -> None:
    broker = mosquitto()
    subscriber = Subscriber(broker, ["emotion/soakcam/emotions"])
    try:
        result = subprocess.run(
            [sys.executable, "-m", "edge_app", "--set", f"mqtt.port={broker.port}", "--set", "device.id=soakcam",
             "--set", f"aggregate.window_s={WINDOW_S}", "--set", "mqtt.discovery=false",
             "bench", "--soak", str(SOAK_S), "--faces", str(FACES), "--threads", "1"],
            capture_output=True, text=True, timeout=SOAK_S + 120,
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        # Every window was acknowledged by the broker before bench exited; the subscriber may still be receiving.
        subscriber.wait_for(lambda: len(subscriber.on("emotion/soakcam/emotions")) >= report["windows"], timeout=30)
    finally:
        subscriber.close()
    assert report["faces_per_frame"] == FACES and report["soak_s"] >= SOAK_S
    assert report["rss_growth_pct"] <= MAX_RSS_GROWTH_PCT, report["rss_mb"]
    assert report["mqtt_dropped"] == 0 and report["mqtt_unsent"] == 0
    windows = [json.loads(p) for p in subscriber.on("emotion/soakcam/emotions")]
    assert len(windows) == report["windows"] >= SOAK_S / WINDOW_S - 2  # the subscriber kept up: it got them all
    assert [w["seq"] for w in windows] == list(range(1, len(windows) + 1))
    assert all(w["faces"] == FACES and w["frames"] > 0 for w in windows)
    stamps = np.array([datetime.fromisoformat(w["ts"].replace("Z", "+00:00")).timestamp() for w in windows])
    gaps = np.diff(stamps)
    assert np.all(np.abs(gaps - WINDOW_S) < ON_TIME_S), gaps
    assert report["max_window_late_s"] < ON_TIME_S
    print(f"soak: {len(windows)} windows received of {report['windows']}, gaps {gaps.min():.3f}-{gaps.max():.3f} s, "
          f"rss {report['rss_mb']} growth {report['rss_growth_pct']}%, fps {report['fps']}")
