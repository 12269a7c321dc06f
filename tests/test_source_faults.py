"""A source that goes bad while `edge-emotion run` reads it: the video file is corrupted in place mid-run, then put
back. Stats and systemd STATUS say the source is being reopened, empty windows keep coming, the watchdog keeps being
fed on schedule, the process does not exit, and frames flow again once the file is back. Real mosquitto, a real
notify socket, a real video."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from media_helpers import demo_face_bgr, write_video
from mqtt_helpers import Subscriber, wait_until

# WATCHDOG_USEC=2 s: the service pings every half of it, 1 s. The limit a gap must stay under is the watchdog's
# timeout itself (systemd restarts past it), which leaves a reopen attempt 1 s: 4x what one takes here under load.
WATCHDOG_S = 1.0


def _listen(sock: socket.socket, messages: list[tuple[float, str]], done: threading.Event) -> None:
    """Every sd_notify datagram with its arrival time, read as systemd reads them."""
    sock.settimeout(0.1)
    while not done.is_set():
        try:
            messages.append((time.monotonic(), sock.recv(4096).decode()))
        except TimeoutError:
            continue


def test_video_corrupted_mid_run_is_reopened_with_backoff_and_the_watchdog_stays_fed(mosquitto, tmp_path: Path) -> None:
    video = tmp_path / "faces.avi"
    face = demo_face_bgr()
    write_video(video, (np.roll(face, i, axis=1) for i in range(30)), fps=20)
    original = video.read_bytes()
    broker = mosquitto()
    subscriber = Subscriber(broker, ["emotion/testcam/#"])
    notify = tmp_path / "notify.sock"
    messages: list[tuple[float, str]] = []
    done = threading.Event()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify))
        listener = threading.Thread(target=_listen, args=(sock, messages, done))
        listener.start()
        process = subprocess.Popen(
            [sys.executable, "-m", "edge_app", "--set", f"mqtt.port={broker.port}", "--set", "device.id=testcam",
             "--set", "aggregate.window_s=1", "--set", f"source.uri={video}", "--set", "source.fps=20",
             "--set", "source.reopen_initial_s=0.2", "--set", "source.reopen_max_s=0.8", "run"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "NOTIFY_SOCKET": str(notify), "WATCHDOG_USEC": str(int(WATCHDOG_S * 2e6))},
        )
        try:
            def stats() -> list[dict]:
                return [json.loads(p) for p in subscriber.on("emotion/testcam/stats")]

            def windows() -> list[dict]:
                return [json.loads(p) for p in subscriber.on("emotion/testcam/emotions")]

            assert wait_until(lambda: any(w["faces"] == 1 for w in windows()), 60), process.stderr
            with video.open("r+b") as file:  # corrupted in place, as a failing card or disk would do it
                file.write(bytes(np.random.default_rng(0).integers(0, 256, len(original), np.uint8)))
            corrupted_at = time.monotonic()
            assert wait_until(lambda: any(s["source_state"] == "reopening" for s in stats()), 30)
            time.sleep(3)  # an outage of at least 3 s: several reopen attempts, backoff growing to reopen_max_s
            # ... and at least three windows published during it, however slow the machine
            assert wait_until(lambda: [s["source_state"] for s in stats()].count("reopening") >= 3, 30)
            assert process.poll() is None  # still running
            broken = len(windows())
            video.write_bytes(original)  # the file is back
            restored_at = time.monotonic()
            assert wait_until(lambda: any(w["faces"] == 1 for w in windows()[broken:]), 30)
            assert wait_until(lambda: stats()[-1]["source_state"] == "ok", 30)
        finally:
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=10)
            done.set()
            listener.join()
            subscriber.close()
    assert process.returncode == 0, stderr
    states = [s["source_state"] for s in stats()]
    first_reopening = states.index("reopening")
    assert "ok" in states[:first_reopening] and states[-1] == "ok" and states.count("reopening") >= 3
    seqs = [w["seq"] for w in windows()]
    assert seqs == list(range(1, len(seqs) + 1))  # a window every second throughout, none missing
    assert any(w["frames"] == 0 for w in windows())  # the empty windows of the outage were published too
    assert "(truncated or corrupt)" in stderr or "no frame could be decoded" in stderr
    assert "frames are flowing again" in stderr and "Traceback" not in stderr
    # The log names each new reason once, with the delay before the next attempt; the delay grows (backoff).
    delays = [float(line.rsplit("reopening in ", 1)[1].split()[0]) for line in stderr.splitlines()
              if "reopening in " in line]
    assert delays and delays[0] == 0.2
    pings = [t for t, m in messages if m == "WATCHDOG=1"]
    outage = [t for t in pings if corrupted_at <= t <= restored_at]
    assert len(outage) >= 2 and max(np.diff(outage)) < 2 * WATCHDOG_S  # fed on schedule while reopening
    assert any("source reopening" in m for _, m in messages if m.startswith("STATUS="))
