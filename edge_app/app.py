"""The composition root: every command builds the device's pipeline here, from the config, in one way.

``build_pipeline`` loads the emotion model (checked against its card) and the face pipeline framed as the card says;
``run``, ``bench``, ``check``, ``annotate`` and ``ui`` all start from it. ``Service`` is ``run``'s frame loop (read,
find or follow faces, classify, track, add to the window; close and publish a window): ``run`` drives it until it is
stopped, ``bench`` drives the same calls and times them, so the benchmark measures the service.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from edge_app.config import AppConfig
from edge_app.pipeline.classify import EmotionClassifier
from edge_app.pipeline.faces import FacePipeline
from edge_app.pipeline.frames import FrameProcessor, FrameResult, take_frame
from edge_app.pipeline.track import Tracker
from edge_app.publish.aggregate import EmotionsMessage, WindowAggregator
from edge_app.publish.mqtt import MqttPublisher


class Pipeline(NamedTuple):
    """The device's networks: the emotion model and the face pipeline (detector, Face Mesh, crop, features)."""

    classifier: EmotionClassifier
    faces: FacePipeline

    @property
    def delegates(self) -> dict[str, str]:
        """Where each network runs, as stats and bench report it: ``detector``, ``landmarks``, ``classifier``."""
        return {**self.faces.delegates, "classifier": self.classifier.delegate_in_use}

    def frame_processor(self, config: AppConfig) -> FrameProcessor:
        """A new frame processor with its own tracker, as ``detection`` and ``tracking`` set them."""
        return FrameProcessor(self.faces, self.classifier, Tracker.from_config(config.tracking),
                              config.detection.every_n_frames)


def build_pipeline(config: AppConfig) -> Pipeline:
    """The emotion model and the face pipeline of ``config``.

    ``runtime.delegate`` reaches all three networks; where the classifier found that the GPU delegate cannot load
    (one warning), the face networks run on the CPU without trying it again.
    ``ModelLoadError`` (``ModelError`` for the emotion model) names the file that is missing or wrong.
    """
    classifier = EmotionClassifier.from_config(config)
    delegate = config.runtime.delegate
    if delegate == "gpu" and classifier.delegate_in_use != "gpu":
        delegate = "cpu"  # a GPU delegate the classifier could not load fails the face networks too: one warning
    return Pipeline(classifier, FacePipeline.from_config(config, classifier.crop_spec, delegate=delegate))


class Service:
    """``run``'s loop, one call at a time: ``step`` reads a frame and adds what it gives to the window, ``publish``
    closes the window and sends it (and the stats) through ``publisher`` when there is one."""

    def __init__(self, config: AppConfig, pipeline: Pipeline, read: Callable[[], np.ndarray | None],
                 publisher: MqttPublisher | None = None) -> None:
        self.pipeline = pipeline
        self.read = read
        self.publisher = publisher
        self.processor = pipeline.frame_processor(config)
        self.aggregator = WindowAggregator.from_config(
            config.aggregate, pipeline.classifier.classes, config.device.id, now=time.monotonic(),
            first_seq=publisher.next_seq if publisher is not None else 1,
        )
        self.windows = 0

    def step(self) -> FrameResult | None:
        """One frame: read, find or follow faces, classify, track, add to the window; None when there was none."""
        return take_frame(self.read, self.processor, self.aggregator)

    def publish(self, now: float, *, sensing: bool = True, source_state: str = "ok") -> EmotionsMessage:
        """Close the window at ``now`` and publish it with the stats; the message is returned for logging."""
        message = self.aggregator.flush(now, sensing=sensing)
        self.windows += 1
        if self.publisher is not None:
            self.publisher.publish_emotions(message)
            self.publisher.publish_stats(self.aggregator.stats(
                now, buffered_messages=self.publisher.buffered, dropped_messages=self.publisher.dropped,
                delegate=self.pipeline.classifier.delegate_in_use, source_state=source_state, sensing=sensing,
                delegates=self.pipeline.delegates,
            ))
        return message
