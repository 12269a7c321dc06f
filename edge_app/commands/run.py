"""``edge-emotion run``: frames -> faces -> emotions -> tracks -> one aggregated MQTT message per window.

Nothing but the aggregated numbers leaves the process: frames, crops and landmarks live only in this loop, and
nothing is written to disk but the windows waiting for the broker (``publish.queue``, under the state directory)
and the privacy switch's state (``sensing``), when it is used. Under systemd (``Type=notify``) it reports READY,
STATUS, WATCHDOG and STOPPING. The frame loop itself is ``edge_app.app.Service``, which ``bench`` times.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time

from edge_app.app import Service, build_pipeline
from edge_app.config import AppConfig
from edge_app.pipeline.capture import ReconnectingSource
from edge_app.pipeline.runtime import ModelLoadError
from edge_app.publish import sdnotify
from edge_app.publish.mqtt import MqttError, MqttPublisher
from edge_app.publish.queue import QueueDirError
from edge_app.publish.sensing import SensingSwitch

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=0.0, metavar="SECONDS",
                        help="stop after this many seconds, publishing the last window (0: until stopped)")
    parser.add_argument("--max-windows", type=int, default=0, metavar="N",
                        help="stop after publishing this many windows (0: no limit)")


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
        pipeline = build_pipeline(config)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    classifier = pipeline.classifier
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
    service = Service(config, pipeline, source.read, publisher)
    log.info("running: %s, model %s on %s, device id %s, sensing %s", source.name, classifier.model_path.name,
             classifier.delegate_in_use, device, "on" if switch.on else f"off (kept in {switch.state_file})")
    stop = _Stop(config.mqtt.flush_s)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    watchdog_every = sdnotify.watchdog_interval()
    ready, alive, last_ping, sensing = False, False, 0.0, True

    def publish(now: float) -> None:
        state = source.state.split(":")[0] if switch.on else "off"
        shown = source.state if switch.on else "closed (sensing off)"
        message = service.publish(now, sensing=switch.on, source_state=state)
        log.info("window %d: %d frames, %d faces, dominant %s, source %s", message.seq, message.frames,
                 message.faces, message.dominant, shown)
        mqtt_state = "off"
        if publisher is not None:
            mqtt_state = "connected" if publisher.connected else f"buffering {publisher.buffered}"
        sdnotify.status(f"window {message.seq}: {message.fps:.1f} fps, {message.faces} face(s), dominant "
                        f"{message.dominant or 'none'}; source {shown}; mqtt {mqtt_state}")

    try:
        while not stop.requested:
            sensing, was_sensing = switch.on, sensing
            if sensing != was_sensing:
                follow_switch(sensing, source)
            result = service.step() if sensing else switch.wait(SENSING_OFF_POLL_S)
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
            if service.aggregator.due(now):
                publish(now)
            if source.ended:
                log.info("%s has ended: publishing the last window and stopping", source.name)
                break
            if (args.max_windows and service.windows >= args.max_windows) or (
                args.duration and now - started >= args.duration
            ):
                break
    finally:
        sdnotify.stopping()
        if not args.max_windows or service.windows < args.max_windows:
            publish(time.monotonic())
        source.close()
        if publisher is not None:
            publisher.close(timeout=stop.time_left())
    return 0
