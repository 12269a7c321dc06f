"""``edge-emotion bench``: time every stage of the service's pipeline on this device and print one JSON object.

Input: the bundled demo photo (one face in a 640x480 frame, or ``--faces K`` copies of the face tiled into one
frame), JPEG-decoded every frame as a camera's MJPEG would be, or ``--source VIDEO``. ``--soak SECONDS`` runs that
long instead of ``--frames`` and publishes every window through MQTT when ``mqtt.enabled``, to watch memory and
delivery under load.

Stages, each as median, p95 and mean milliseconds: ``read`` (decode + colour conversion), ``detect`` (the face
detector, on detection frames), ``landmarks`` (Face Mesh, crop and features, every frame), ``classify`` (the emotion
model on every face), ``track_aggregate``, ``publish`` (closing a window and serialising/queuing it; without
``--soak`` a window closes every 30 timed frames) and ``total``.
``inference_ms`` gives each network's own time per call (the runtime's ``invoke``): the floor under the stages,
which says how fast this device runs the models apart from the code around them.
It drives ``edge-emotion run``'s own loop (``edge_app.app.Service``: its ``step`` and ``publish``), so the figures are
the service's.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from edge_app.app import Service, build_pipeline
from edge_app.config import AppConfig
from edge_app.pipeline.capture import demo_image, read_image
from edge_app.pipeline.faces import FrameError, as_rgb8
from edge_app.pipeline.runtime import ModelLoadError
from edge_app.publish.mqtt import MqttError, MqttPublisher

FRAME_SIZE = (640, 480)
TILE_PX = 240  # a tiled face is ~95 px wide, as a person 1-2 m from a wide-angle camera
MAX_FACES = 9  # a 3x3 grid: more columns make faces too small for the short-range detector
FACE_MARGIN = 1.25  # half the tile, in face widths
STAGES = ("read", "detect", "landmarks", "classify", "track_aggregate", "publish", "total")
NETWORKS = ("face_detector", "face_mesh", "classifier")
# Without --soak, a window closes every this many timed frames (not on the clock), so that a run of any length on a
# machine of any speed times publishing the same number of times: --frames 120 publishes 4 windows.
BENCH_WINDOW_FRAMES = 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=300, metavar="N", help="frames to time after warm-up")
    parser.add_argument("--warmup", type=int, default=30, metavar="N", help="frames run before timing")
    parser.add_argument("--soak", type=float, default=0.0, metavar="SECONDS",
                        help="run this long instead of --frames, publishing windows when mqtt.enabled")
    parser.add_argument("--faces", type=int, default=1, choices=range(1, MAX_FACES + 1), metavar="K",
                        help=f"copies of the demo face tiled into the frame (1-{MAX_FACES})")
    parser.add_argument("--source", type=Path, metavar="VIDEO", help="time this video instead of the demo face")
    parser.add_argument("--threads", type=int, metavar="N", help="override runtime.num_threads")


def demo_frame(faces: int) -> np.ndarray:
    """One face: the whole demo photo fitted into 640x480; K faces: K crops of its face in a grid of 240 px tiles."""
    photo = read_image(demo_image())
    if faces == 1:
        width, height = FRAME_SIZE
        side = min(width, height)
        frame = np.zeros((height, width, 3), np.uint8)
        left, top = (width - side) // 2, (height - side) // 2
        frame[top:top + side, left:left + side] = cv2.resize(photo, (side, side), interpolation=cv2.INTER_AREA)
        return frame
    # The face's box in the 512x512 demo photo (found once by the pipeline; fixed so the input never changes).
    x0, y0, x1, y1 = 179, 72, 271, 175
    half = FACE_MARGIN * (x1 - x0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    crop = photo[int(cy - half):int(cy + half), int(cx - half):int(cx + half)]
    tile = cv2.resize(crop, (TILE_PX, TILE_PX), interpolation=cv2.INTER_AREA)
    cols = math.ceil(math.sqrt(faces))
    rows = math.ceil(faces / cols)
    frame = np.zeros((rows * TILE_PX, cols * TILE_PX, 3), np.uint8)
    for i in range(faces):
        r, c = divmod(i, cols)
        frame[r * TILE_PX:(r + 1) * TILE_PX, c * TILE_PX:(c + 1) * TILE_PX] = tile
    return frame


def rss_mb() -> tuple[float, float]:
    """Resident memory now and its peak (VmHWM), in MB, from /proc (Linux)."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return round(values["VmRSS"], 1), round(values["VmHWM"], 1)


def summary(samples: list[float]) -> dict[str, float] | None:
    """Median, 95th percentile and mean milliseconds of one stage, and how many frames ran it; None if none did."""
    if not samples:
        return None
    values = np.asarray(samples)
    return {"median": round(float(np.median(values)), 3), "p95": round(float(np.percentile(values, 95)), 3),
            "mean": round(float(values.mean()), 3), "n": len(samples)}


def _reader(args: argparse.Namespace) -> tuple[Callable[[], np.ndarray | None], str]:
    """A function giving the next BGR-decoded frame as RGB (None at the end of a video), and a description."""
    if args.source is None:
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(demo_frame(args.faces), cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        return lambda: as_rgb8(cv2.imdecode(jpeg, cv2.IMREAD_COLOR), bgr=True), f"demo face x{args.faces}"
    capture = cv2.VideoCapture(str(args.source))
    if not capture.isOpened() or args.source.is_dir():
        raise FrameError(f"{args.source}: not a video OpenCV can read")

    def read() -> np.ndarray | None:
        ok, frame = capture.read()
        if not ok:
            capture.set(cv2.CAP_PROP_POS_FRAMES, 0)  # loop, so that --frames can exceed the video's length
            ok, frame = capture.read()
        return as_rgb8(frame, bgr=True) if ok else None

    return read, str(args.source)


def main(args: argparse.Namespace, config: AppConfig) -> int:
    if args.frames < 1 or args.warmup < 0:
        print("error: --frames: expected at least 1 frame, and --warmup 0 or more", file=sys.stderr)
        return 2
    if args.threads is not None:
        if args.threads < 1:
            print(f"error: --threads: expected an integer >= 1, got {args.threads}", file=sys.stderr)
            return 2
        config.runtime.num_threads = args.threads
    rss_start, _ = rss_mb()
    try:
        pipeline = build_pipeline(config)
        read, input_name = _reader(args)
    except (ModelLoadError, FrameError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    classifier = pipeline.classifier
    publisher = None
    if args.soak and config.mqtt.enabled:
        try:
            publisher = MqttPublisher.from_config(config.mqtt, config.device.id, classifier.classes,
                                                  keep_on_disk=False)
        except MqttError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    service = Service(config, pipeline, read, publisher)
    samples: dict[str, list[float]] = {stage: [] for stage in STAGES}
    inference: dict[str, list[float]] = {network: [] for network in NETWORKS}
    faces_found: list[int] = []
    late_s = 0.0
    frames = timed = 0
    rss_warm = rss_start
    timing_started = time.monotonic()
    cpu_started = time.process_time()
    window_due = timing_started + service.aggregator.window_s
    try:
        while True:
            if args.soak:
                if time.monotonic() - timing_started >= args.soak and frames >= args.warmup:
                    break
            elif timed >= args.frames:
                break
            t0 = time.perf_counter()
            result = service.step()
            if result is None:
                print(f"error: {input_name}: no frame could be read", file=sys.stderr)
                return 2
            now = time.monotonic()
            t1 = time.perf_counter()
            publish_ms = None
            if args.soak:
                window_closes = service.aggregator.due(now)
            else:
                window_closes = frames >= args.warmup and (frames - args.warmup + 1) % BENCH_WINDOW_FRAMES == 0
            if window_closes:
                late_s, window_due = max(late_s, now - window_due), now + service.aggregator.window_s
                message = service.publish(now)  # with MQTT: serialised and queued; the network is another thread
                if publisher is None:
                    message.model_dump_json()  # what publishing costs this loop without a broker
                publish_ms = (time.perf_counter() - t1) * 1000
            t2 = time.perf_counter()
            frames += 1
            if frames == args.warmup:
                rss_warm, _ = rss_mb()
                timing_started = time.monotonic()
                cpu_started = time.process_time()
            if frames <= args.warmup:
                continue
            timed += 1
            faces_found.append(len(result.faces))
            for stage in ("read", "detect", "landmarks", "classify"):
                if stage in result.ms:
                    samples[stage].append(result.ms[stage])
            samples["track_aggregate"].append(result.ms["track"] + result.ms["aggregate"])
            if publish_ms is not None:
                samples["publish"].append(publish_ms)
            if "detect" in result.ms:
                inference["face_detector"].append(pipeline.faces.detector.model.last_ms)
            if result.faces:  # the last face's calls: one call each per face
                inference["face_mesh"].append(pipeline.faces.mesh.model.last_ms)
                inference["classifier"].append(classifier.last_ms)
            samples["total"].append((t2 - t0) * 1000)
    finally:
        if publisher is not None:
            publisher.close(timeout=3.0)
    elapsed = time.monotonic() - timing_started
    cpu_s = time.process_time() - cpu_started
    rss_end, rss_peak = rss_mb()
    report = {
        "input": input_name,
        "frame_size": list(result.frame_size),
        "frames": timed,
        "faces_per_frame": round(float(np.mean(faces_found)), 2) if faces_found else 0.0,
        "fps": round(timed / elapsed, 1) if elapsed > 0 else 0.0,
        # CPU time of this process per frame (all its threads): what a frame costs when no other process competes.
        "cpu_ms_per_frame": round(cpu_s * 1000 / max(timed, 1), 3),
        "latency_ms": {stage: summary(values) for stage, values in samples.items()},
        "inference_ms": {network: summary(values) for network, values in inference.items()},
        "delegate": classifier.delegate_in_use,
        "delegates": pipeline.delegates,
        "threads": config.runtime.num_threads,
        "every_n_frames": config.detection.every_n_frames,
        "flip_average": classifier.flip_average,
        "rss_mb": {"start": rss_start, "warm": rss_warm, "end": rss_end, "peak": rss_peak},
        "rss_growth_pct": round((rss_end - rss_warm) / rss_warm * 100, 2),
    }
    if args.soak:
        report.update(soak_s=round(elapsed, 1), windows=service.windows, max_window_late_s=round(max(late_s, 0.0), 3),
                      mqtt_dropped=publisher.dropped if publisher else None,
                      mqtt_unsent=publisher.buffered if publisher else None)
    print(json.dumps(report))
    return 0
