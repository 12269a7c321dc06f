"""``edge-emotion run``: frames -> faces -> emotions -> tracks -> one aggregated MQTT message per window.

Nothing but the aggregated numbers leaves the process: frames, crops and landmarks live only in this loop, and
nothing is written to disk but the windows waiting for the broker (``publish_queue``, under the state directory)
and the privacy switch's state (``sensing``), when it is used. Under systemd (``Type=notify``) it reports READY,
STATUS, WATCHDOG and STOPPING.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edge_app.config import AppConfig
from edge_app.pipeline.capture import ReconnectingSource
from edge_app.pipeline.classify import EmotionClassifier
from edge_app.pipeline.faces import Face, FacePipeline, FrameError, as_rgb8
from edge_app.pipeline.runtime import ModelLoadError
from edge_app.pipeline.track import Track, Tracker
from edge_app.publish import sdnotify
from edge_app.publish.aggregate import WindowAggregator
from edge_app.publish.mqtt import MqttError, MqttPublisher
from edge_app.publish.queue import QueueDirError
from edge_app.publish.sensing import SensingSwitch

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=0.0, metavar="SECONDS",
                        help="stop after this many seconds, publishing the last window (0: until stopped)")
    parser.add_argument("--max-windows", type=int, default=0, metavar="N",
                        help="stop after publishing this many windows (0: no limit)")


def load_models(config: AppConfig) -> tuple[EmotionClassifier, FacePipeline]:
    """The emotion model (checked against its card) and the face pipeline framed as the card says.

    ``runtime.delegate`` reaches all three networks; where the classifier found that the GPU delegate cannot load
    (one warning), the face networks run on the CPU without trying it again.
    ``ModelLoadError`` (``ModelError`` for the emotion model) names the file that is missing or wrong.
    """
    classifier = EmotionClassifier.from_config(config)
    delegate = config.runtime.delegate
    if delegate == "gpu" and classifier.delegate_in_use != "gpu":
        delegate = "cpu"  # a GPU delegate the classifier could not load fails the face networks too: one warning
    pipeline = FacePipeline.from_config(config, classifier.crop_spec, delegate=delegate)
    return classifier, pipeline


def delegates_in_use(classifier: EmotionClassifier, pipeline: FacePipeline) -> dict[str, str]:
    """Where each network runs, as stats and bench report it: ``detector``, ``landmarks``, ``classifier``."""
    return {**pipeline.delegates, "classifier": classifier.delegate_in_use}


@dataclass
class FrameResult:
    """What one frame gave: the faces (on-device only), their tracks (in the same order), and stage milliseconds.

    ``ms`` has ``detect`` (the face detector) on detection frames, ``landmarks`` (Face Mesh, crops and features,
    whether the faces were found or followed), ``classify``, ``track`` and ``total``. ``skipped_detections``: faces
    the detector found in this frame that were left out (under ``detection.min_face_px``, beyond ``max_faces``).
    """

    faces: list[Face]
    tracks: list[Track]
    ms: dict[str, float] = field(default_factory=dict)
    skipped_detections: int = 0


class FrameProcessor:
    """Follow each face from its landmarks; every ``every_n_frames`` frames, or when a face was lost, also detect
    and add the new faces; classify every face; match them to tracks. Used by ``run`` and ``bench`` alike."""

    def __init__(self, pipeline: FacePipeline, classifier: EmotionClassifier, tracker: Tracker,
                 every_n_frames: int) -> None:
        self.pipeline = pipeline
        self.classifier = classifier
        self.tracker = tracker
        self.every_n_frames = every_n_frames
        self.frame_index = 0
        self._previous: list[Face] = []

    def __call__(self, rgb: np.ndarray, now: float) -> FrameResult:
        ms: dict[str, float] = {}
        t0 = time.perf_counter()
        faces, skipped = self._faces(rgb, ms)
        t1 = time.perf_counter()
        probabilities = [self.classifier.predict(face.crop, face.features) for face in faces]
        t2 = time.perf_counter()
        tracks = self.tracker.update([face.box for face in faces], probabilities, now)
        t3 = time.perf_counter()
        ms.update(classify=(t2 - t1) * 1000, track=(t3 - t2) * 1000, total=(t3 - t0) * 1000)
        self._previous = faces
        self.frame_index += 1
        return FrameResult(faces, tracks, ms, skipped)

    def _faces(self, rgb: np.ndarray, ms: dict[str, float]) -> tuple[list[Face], int]:
        """This frame's faces and how many detections were left out (0 when the faces were only followed).

        Followed faces are kept on detection frames too: the detector only adds the faces it finds that no followed
        face covers, so a face it misses in one frame (a low score, motion blur) does not vanish from its track.
        """
        followed = [f for f in self.pipeline.follow(rgb, self._previous, ms) if f is not None] if self._previous else []
        if followed and len(followed) == len(self._previous) and self.frame_index % self.every_n_frames:
            return followed, 0
        return self.pipeline.detect_counting_skipped(rgb, ms, followed)


def take_frame(read: Callable[[], np.ndarray | None], processor: FrameProcessor,
               aggregator: WindowAggregator) -> FrameResult | None:
    """Read one frame and put what it gives into the window; None when there was no usable frame.

    ``read`` returns a frame in any layout ``as_rgb8`` accepts (the source's RGB frames pass unchanged) or None
    when there is none now (a source being reopened). A frame that cannot be an 8-bit image (empty, wrong shape or
    dtype) is counted in ``dropped_frames`` and skipped: one bad frame never stops the service.
    """
    try:
        frame = read()
        if frame is None:
            return None
        rgb = as_rgb8(frame)
    except FrameError as exc:
        log.debug("frame dropped: %s", exc)
        aggregator.add_dropped_frame()
        return None
    now = time.monotonic()
    result = processor(rgb, now)
    aggregator.add_frame(result.tracks, len(result.faces), now, result.ms, result.skipped_detections)
    return result


# While sensing is off the loop wakes at least this often (to publish windows, feed the watchdog, see a stop).
SENSING_OFF_POLL_S = 0.25


def follow_switch(sensing: bool, source: ReconnectingSource) -> None:
    """Sensing went off: close the source (a camera's light goes out; its next read opens it again) and say so."""
    if sensing:
        log.info("sensing on: reading %s again", source.name)
    else:
        source.close()
        log.info("sensing off: %s is closed and no frame is read until sensing is switched on", source.name)


class _Stop:
    """Set by SIGTERM/SIGINT; the loop finishes its frame, publishes the partial window and exits.

    ``budget_s`` (``mqtt.flush_s``) is what the shutdown may take from the signal on, delivering buffered windows;
    the unit's TimeoutStopSec (15 s) leaves the rest for finishing the frame and closing the camera.
    """

    requested = False
    at = 0.0

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s

    def __call__(self, signum: int, _frame: object) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        self.requested, self.at = True, time.monotonic()

    def time_left(self) -> float:
        """Seconds the flush may still take: the whole budget when no signal came, else what the budget leaves."""
        return max(self.at + self.budget_s - time.monotonic(), 0.5) if self.requested else self.budget_s


def main(args: argparse.Namespace, config: AppConfig) -> int:
    try:
        classifier, pipeline = load_models(config)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    source = ReconnectingSource(config.source)  # ConfigError for a source.uri that means nothing: exit 2 in cli
    device = config.device.id
    switch = SensingSwitch.from_config(config.sensing)
    try:
        publisher = MqttPublisher.from_config(config.mqtt, device, classifier.classes,
                                              switch=switch if config.sensing.switch else None
                                              ) if config.mqtt.enabled else None
    except (MqttError, QueueDirError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    aggregator = WindowAggregator.from_config(config.aggregate, classifier.classes, device, now=started,
                                              first_seq=publisher.next_seq if publisher else 1)
    processor = FrameProcessor(pipeline, classifier, Tracker.from_config(config.tracking),
                               config.detection.every_n_frames)
    log.info("running: %s, model %s on %s, device id %s, sensing %s", source.name, classifier.model_path.name,
             classifier.delegate_in_use, device, "on" if switch.on else f"off (kept in {switch.state_file})")
    stop = _Stop(config.mqtt.flush_s)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    watchdog_every = sdnotify.watchdog_interval()
    windows, ready, alive, last_ping, sensing = 0, False, False, 0.0, True

    def publish(now: float) -> None:
        nonlocal windows
        message = aggregator.flush(now, sensing=switch.on)
        windows += 1
        state = source.state.split(":")[0] if switch.on else "off"
        shown = source.state if switch.on else "closed (sensing off)"
        log.info("window %d: %d frames, %d faces, dominant %s, source %s", message.seq, message.frames,
                 message.faces, message.dominant, shown)
        mqtt_state = "off"
        if publisher is not None:
            publisher.publish_emotions(message)
            publisher.publish_stats(aggregator.stats(
                now, buffered_messages=publisher.buffered, dropped_messages=publisher.dropped,
                delegate=classifier.delegate_in_use, source_state=state, sensing=switch.on,
                delegates=delegates_in_use(classifier, pipeline),
            ))
            mqtt_state = "connected" if publisher.connected else f"buffering {publisher.buffered}"
        sdnotify.status(f"window {message.seq}: {message.fps:.1f} fps, {message.faces} face(s), dominant "
                        f"{message.dominant or 'none'}; source {shown}; mqtt {mqtt_state}")

    try:
        while not stop.requested:
            sensing, was_sensing = switch.on, sensing
            if sensing != was_sensing:
                follow_switch(sensing, source)
            result = take_frame(source.read, processor, aggregator) if sensing else switch.wait(SENSING_OFF_POLL_S)
            now = time.monotonic()
            alive = alive or result is not None or not sensing  # while off, the loop's waking up is its sign of life
            reopening = sensing and source.state.startswith("reopening")
            if not ready and (result is not None or reopening or not sensing):
                sdnotify.ready(f"{source.name}: {source.state}")
                ready = True
            # The watchdog is fed while frames flow, or while a lost source is being reopened on schedule (the loop
            # is alive); a loop stuck in a read stops feeding it and systemd restarts the service.
            if watchdog_every and (alive or reopening) and now - last_ping >= watchdog_every:
                sdnotify.watchdog()
                last_ping, alive = now, False
            if aggregator.due(now):
                publish(now)
            if source.ended:
                log.info("%s has ended: publishing the last window and stopping", source.name)
                break
            if (args.max_windows and windows >= args.max_windows) or (
                args.duration and now - started >= args.duration
            ):
                break
    finally:
        sdnotify.stopping()
        if not args.max_windows or windows < args.max_windows:
            publish(time.monotonic())
        source.close()
        if publisher is not None:
            publisher.close(timeout=stop.time_left())
    return 0
