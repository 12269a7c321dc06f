"""GStreamer pipelines as a frame source, through PyGObject (``gi.repository.Gst``) and an appsink.

pip's OpenCV is built without GStreamer, so ``cv2.CAP_GSTREAMER`` never opens a pipeline from a pip install (the
Jetson CSI camera, ``nvarguscamerasrc``, is only reachable through GStreamer). PyGObject drives the pipeline
instead; it is imported only when a pipeline is the configured source, so nothing else needs it.
"""

from __future__ import annotations

import time
from functools import cache
from typing import Any

import numpy as np

from edge_app.config import ConfigError, SourceConfig
from edge_app.pipeline.capture import STREAM_TIMEOUT_S, SourceError

GSTREAMER_MISSING = (
    "GStreamer through PyGObject is not installed: on Debian or JetPack, apt install python3-gi gir1.2-gstreamer-1.0"
    " gstreamer1.0-plugins-base gstreamer1.0-plugins-good (a venv needs --system-site-packages),"
    " or pip install 'edge-emotion[gstreamer]'"
)
# The appsink is given these caps, so the frames are packed 8-bit RGB or BGR whatever the pipeline ends with
# (a pipeline that cannot produce them fails with "not-negotiated": put videoconvert before the appsink).
APPSINK_CAPS = "video/x-raw,format={RGB,BGR}"
# A read waits for a frame in slices this long, looking at the bus between them, so an error is reported at once.
PULL_SLICE_S = 0.05


@cache
def gst() -> Any:
    """The initialised ``Gst`` module; ``ConfigError`` saying what to install when PyGObject or GStreamer is missing."""
    try:
        import gi

        gi.require_version("Gst", "1.0")
        from gi.repository import Gst
    except (ImportError, ValueError):  # ValueError: gi without the Gst typelib
        raise ConfigError(f"source.kind: {GSTREAMER_MISSING}") from None
    Gst.init(None)
    return Gst


def _parse(description: str) -> tuple[Any, Any]:
    """The pipeline and its appsink; ``ConfigError`` when the text is no pipeline or has no appsink."""
    Gst = gst()
    from gi.repository import GLib

    try:
        pipeline = Gst.parse_launch_full(description, None, Gst.ParseFlags.FATAL_ERRORS)
    except GLib.Error as exc:
        raise ConfigError(f"source.uri: not a GStreamer pipeline that can be built here: {exc.message}") from None
    sink = _appsink(pipeline) if isinstance(pipeline, Gst.Bin) else None
    if sink is None:
        pipeline.set_state(Gst.State.NULL)
        raise ConfigError("source.uri: the GStreamer pipeline must end in appsink (e.g. ... ! videoconvert ! appsink)")
    return pipeline, sink


def _appsink(pipeline: Any) -> Any:
    """The first appsink in ``pipeline`` (searching nested bins too), or None."""
    Gst = gst()
    elements = pipeline.iterate_recurse()
    while True:
        result, element = elements.next()
        if result == Gst.IteratorResult.RESYNC:
            elements.resync()
            continue
        if result != Gst.IteratorResult.OK:
            return None
        factory = element.get_factory()
        if factory is not None and factory.get_name() == "appsink":
            return element


def check_pipeline(description: str) -> None:
    """Build the pipeline once and drop it: a typo or a missing element is a setting to fix (``ConfigError``),
    said at start-up, not a source to reopen forever."""
    pipeline, _ = _parse(description)
    pipeline.set_state(gst().State.NULL)


class GStreamerSource:
    """A GStreamer pipeline ending in an appsink; frames are RGB or BGR as negotiated (``bgr`` says which).

    Live pipelines (cameras) drop stale frames in the appsink, so a read gets the newest; files are read frame by
    frame, as fast as the reader asks. At the end of a file the pipeline seeks back to the start when
    ``source.loop`` is set (else ``read`` returns None); a live pipeline that ends, an error on the bus, or no frame
    for ``STREAM_TIMEOUT_S`` raise SourceError, and ``ReconnectingSource`` builds the pipeline again.
    """

    bgr = False

    def __init__(self, description: str, config: SourceConfig, name: str) -> None:
        Gst = gst()
        self.name = name
        self.loop = config.loop
        self.pipeline, self.sink = _parse(description)
        self.sink.set_property("caps", Gst.Caps.from_string(APPSINK_CAPS))
        self.sink.set_property("sync", False)  # the reader paces frames (source.fps), not the pipeline's clock
        self.sink.set_property("max-buffers", 1)
        self.frames_since_start = 0
        paused = self.pipeline.set_state(Gst.State.PAUSED)
        self.live = paused == Gst.StateChangeReturn.NO_PREROLL
        self.sink.set_property("drop", self.live)
        if (
            paused == Gst.StateChangeReturn.FAILURE
            or self.pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE
        ):
            why = self._bus_error() or "the pipeline refused to start"
            self.close()
            raise SourceError(f"{name}: cannot play ({why})")

    def read(self) -> np.ndarray | None:
        """The next frame (HxWx3 uint8), or None at the end of a non-looping, non-live pipeline."""
        Gst = gst()
        deadline = time.monotonic() + STREAM_TIMEOUT_S
        while True:
            sample = self.sink.emit("try-pull-sample", int(PULL_SLICE_S * Gst.SECOND))
            if sample is not None:
                self.frames_since_start += 1
                return self._frame(sample)
            why = self._bus_error()
            if why:
                raise SourceError(f"{self.name}: stopped delivering frames ({why})")
            if self.sink.get_property("eos"):
                if self.live:
                    raise SourceError(f"{self.name}: the live pipeline ended (end of stream)")
                if not self.loop:
                    return None
                if not self.frames_since_start or not self.pipeline.seek_simple(
                    Gst.Format.TIME, Gst.SeekFlags.FLUSH | Gst.SeekFlags.KEY_UNIT, 0
                ):
                    raise SourceError(f"{self.name}: ended and cannot seek back to the start")
                self.frames_since_start = 0
                deadline = time.monotonic() + STREAM_TIMEOUT_S
            elif time.monotonic() > deadline:
                raise SourceError(f"{self.name}: no frame for {STREAM_TIMEOUT_S:.0f} s")

    def close(self) -> None:
        self.pipeline.set_state(gst().State.NULL)

    def _frame(self, sample: Any) -> np.ndarray:
        """The sample's pixels as an owned HxWx3 array (rows may be padded to 4 bytes in the buffer)."""
        Gst = gst()
        structure = sample.get_caps().get_structure(0)
        width, height = structure.get_value("width"), structure.get_value("height")
        self.bgr = structure.get_value("format") == "BGR"
        buffer = sample.get_buffer()
        ok, mapped = buffer.map(Gst.MapFlags.READ)
        if not ok:
            raise SourceError(f"{self.name}: a frame's buffer could not be read")
        try:
            data = np.frombuffer(mapped.data, np.uint8)
        finally:
            buffer.unmap(mapped)
        stride = data.size // height
        return data[: stride * height].reshape(height, stride)[:, : width * 3].reshape(height, width, 3).copy()

    def _bus_error(self) -> str | None:
        """The first error waiting on the bus, as ``message (element)``, or None."""
        Gst = gst()
        message = self.pipeline.get_bus().pop_filtered(Gst.MessageType.ERROR)
        if message is None:
            return None
        error, debug = message.parse_error()
        why = f"{error.message} ({message.src.get_name()})"
        if "not-negotiated" in (debug or ""):
            why += ": the appsink takes RGB or BGR frames, put videoconvert before it"
        return why
