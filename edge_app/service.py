"""``edge-emotion run``: frames -> faces -> emotions -> tracks -> one aggregated MQTT message per window.

Nothing but the aggregated numbers leaves the process: frames, crops and landmarks live only in this loop.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time

from edge_app.aggregate import WindowAggregator
from edge_app.classifier import EmotionClassifier
from edge_app.config import AppConfig
from edge_app.faces import Face, FacePipeline
from edge_app.mqtt import MqttPublisher
from edge_app.runtime import ModelLoadError
from edge_app.sources import SourceError, frames
from edge_app.tracker import Tracker

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: until stopped)")
    parser.add_argument("--max-windows", type=int, default=0, help="stop after publishing this many windows")


class _Stop:
    """Set by SIGTERM/SIGINT; the loop finishes its frame, publishes the partial window and exits."""

    requested = False

    def __call__(self, signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        self.requested = True


def _faces(pipeline: FacePipeline, rgb, previous: list[Face], frame_index: int, every_n: int) -> list[Face]:
    """Detect every ``every_n`` frames or when a face was lost; otherwise follow the faces from their landmarks."""
    if previous and frame_index % every_n:
        followed = pipeline.follow(rgb, previous)
        if all(face is not None for face in followed):
            return followed  # type: ignore[return-value]
    return pipeline.detect(rgb)


def main(args: argparse.Namespace, config: AppConfig) -> int:
    try:
        classifier = EmotionClassifier(
            config.model.path, config.model.card, delegate=config.runtime.delegate,
            num_threads=config.runtime.num_threads, expected_classes=config.model.classes,
        )
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    detection = config.detection
    pipeline = FacePipeline(
        classifier.crop_spec, min_detection_score=detection.min_score, min_landmark_score=detection.min_landmark_score,
        min_face_px=detection.min_face_px, max_faces=detection.max_faces,
    )
    device = config.device.id
    tracker = Tracker.from_config(config.tracking)
    started = time.monotonic()
    aggregator = WindowAggregator.from_config(config.aggregate, classifier.classes, device, now=started)
    publisher = MqttPublisher.from_config(config.mqtt, device, classifier.classes) if config.mqtt.enabled else None
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    windows, previous, source_state = 0, [], "ok"

    def publish(now: float) -> None:
        nonlocal windows
        message = aggregator.flush(now)
        windows += 1
        log.info("window %d: %d frames, %d faces, dominant %s", message.seq, message.frames, message.faces,
                 message.dominant)
        if publisher is not None:
            publisher.publish_emotions(message)
            publisher.publish_stats(aggregator.stats(
                now, buffered_messages=publisher.buffered, dropped_messages=publisher.dropped,
                delegate=classifier.delegate_in_use, source_state=source_state,
            ))

    try:
        for index, rgb in enumerate(frames(config.source)):
            t0 = time.perf_counter()
            faces = _faces(pipeline, rgb, previous, index, detection.every_n_frames)
            t1 = time.perf_counter()
            probabilities = [classifier.predict(face.crop, face.features) for face in faces]
            t2 = time.perf_counter()
            now = time.monotonic()
            tracks = tracker.update([face.box for face in faces], probabilities, now)
            aggregator.add_frame(tracks, len(faces), now, {
                "landmarks": (t1 - t0) * 1000, "classify": (t2 - t1) * 1000, "total": (t2 - t0) * 1000,
            })
            previous = faces
            if aggregator.due(now):
                publish(now)
            if stop.requested or (args.max_windows and windows >= args.max_windows) or (
                args.duration and now - started >= args.duration
            ):
                break
        else:
            source_state = "ended"
    except SourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        source_state = "failed"
    finally:
        if not args.max_windows or windows < args.max_windows:
            publish(time.monotonic())
        if publisher is not None:
            publisher.close(timeout=3.0)
    return 0 if source_state != "failed" else 1
