"""`edge-emotion bench` on the generated 640x480 frame with the bundled demo face, and with a video."""

from __future__ import annotations

import json
import subprocess
import sys

from media_helpers import demo_face_bgr, write_video


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_app", *args], capture_output=True, text=True, timeout=timeout)


def test_bench_prints_one_json_with_stages_and_memory() -> None:
    """The default input: one real face (the demo photo) in a 640x480 frame, JPEG-decoded every frame."""
    result = _cli("bench", "--frames", "120", "--warmup", "5", "--threads", "1")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["frames"] == 120 and report["faces_per_frame"] == 1.0 and report["threads"] == 1
    assert report["frame_size"] == [640, 480] and report["input"] == "demo face x1"
    assert report["delegate"] == "cpu" and report["fps"] > 0 and report["cpu_ms_per_frame"] > 0
    latency = report["latency_ms"]
    for stage in ("read", "detect", "landmarks", "classify", "track_aggregate", "publish", "total"):
        assert set(latency[stage]) == {"median", "p95", "mean", "n"}, stage
        assert 0 < latency[stage]["median"] <= latency[stage]["p95"], stage
    # Detection every 5th frame, landmarks (found or followed) on every frame; a window closes every 30 frames, on a
    # machine of any speed.
    assert latency["detect"]["n"] == 24 and latency["landmarks"]["n"] == latency["classify"]["n"] == 120
    assert latency["publish"]["n"] == 4
    stages = sum(latency[s]["mean"] for s in ("read", "landmarks", "classify", "track_aggregate"))
    assert stages + latency["detect"]["mean"] / 5 <= latency["total"]["mean"] * 1.05
    # Each network's own time per call lies under the stage that calls it.
    inference = report["inference_ms"]
    assert inference["face_detector"]["n"] == 24 and inference["face_mesh"]["n"] == inference["classifier"]["n"] == 120
    for network, stage in (("face_detector", "detect"), ("face_mesh", "landmarks"), ("classifier", "classify")):
        assert 0 < inference[network]["median"] < latency[stage]["median"], network
    assert set(report["rss_mb"]) == {"start", "warm", "end", "peak"} and "rss_growth_pct" in report
    assert report["rss_mb"]["peak"] <= 300


def test_bench_on_a_video_and_a_bad_source(tmp_path) -> None:
    video = tmp_path / "clip.avi"
    write_video(video, [demo_face_bgr()] * 8)
    result = _cli("bench", "--source", str(video), "--frames", "20", "--warmup", "2")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["input"] == str(video) and report["frames"] == 20  # the 8-frame video loops
    assert report["frame_size"] == [512, 512] and report["faces_per_frame"] == 1.0
    bad = tmp_path / "notes.avi"
    bad.write_text("not a video")
    result = _cli("bench", "--source", str(bad), "--frames", "5")
    assert result.returncode == 2 and str(bad) in result.stderr and result.stdout == ""


def test_bench_soak_publishes_windows(mosquitto) -> None:
    broker = mosquitto()
    result = _cli("--set", f"mqtt.port={broker.port}", "--set", "aggregate.window_s=0.5", "bench", "--soak", "2",
                  "--warmup", "5")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["windows"] >= 3 and report["mqtt_dropped"] == 0 and report["mqtt_unsent"] == 0
    assert report["max_window_late_s"] < 0.5
