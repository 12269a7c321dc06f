"""A small TFLite runtime wrapper: load a model, bind tensors by name, pick a delegate, time calls.

The interpreter comes from ai-edge-litert when installed (fastest here), else
tflite-runtime, else tensorflow.lite. Inputs and outputs are bound by name, never
by position: the TFLite converter reorders a multi-input model's inputs.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DELEGATES = ("cpu", "edgetpu", "gpu")
_EDGETPU_LIBRARY = "libedgetpu.so.1"
_GPU_LIBRARIES = ("libtensorflowlite_gpu_delegate.so", "libtensorflowlite_gpu_gl.so")


class ModelLoadError(RuntimeError):
    """A model file is missing, unreadable or not a TFLite flatbuffer."""


def _interpreter_api() -> tuple[Any, Any, str]:
    """Return (Interpreter class, load_delegate function, backend name)."""
    try:
        from ai_edge_litert.interpreter import Interpreter, load_delegate

        return Interpreter, load_delegate, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter, load_delegate

        return Interpreter, load_delegate, "tflite-runtime"
    except ImportError:
        pass
    try:
        import tensorflow as tf

        return tf.lite.Interpreter, tf.lite.experimental.load_delegate, "tensorflow.lite"
    except ImportError as exc:
        raise ModelLoadError(
            "no TFLite runtime found: install ai-edge-litert (or tflite-runtime / tensorflow)"
        ) from exc


def available_cpus() -> int:
    """CPUs this process may run on (affinity and cgroup aware), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _quantize(value: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    dtype = detail["dtype"]
    if dtype in (np.float32, np.float16):
        return np.asarray(value, dtype=dtype)
    scale, zero_point = detail["quantization"]
    if scale == 0:
        return np.asarray(value, dtype=dtype)
    info = np.iinfo(dtype)
    q = np.round(np.asarray(value, dtype=np.float32) / scale + zero_point)
    return np.clip(q, info.min, info.max).astype(dtype)


def _dequantize(value: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if detail["dtype"] in (np.float32, np.float16) or scale == 0:
        return value.astype(np.float32)
    return (value.astype(np.float32) - zero_point) * scale


def delegate_library(delegate: str) -> str:
    """The shared library of ``delegate`` (``edgetpu``, ``gpu``) that loads here; OSError saying what was tried.

    Checked with ctypes before ``load_delegate``: a missing library then fails before a Delegate object exists
    (a half-built one prints an "Exception ignored in Delegate.__del__" traceback when it is collected).
    """
    errors = []
    for library in (_EDGETPU_LIBRARY,) if delegate == "edgetpu" else _GPU_LIBRARIES:
        try:
            ctypes.CDLL(library)
            return library
        except OSError as exc:
            errors.append(str(exc))
    raise OSError("; ".join(errors))


class TFLiteModel:
    """One TFLite model with named float inputs/outputs, (de)quantizing int8 tensors itself.

    ``delegate`` is ``cpu`` (XNNPACK, built into the runtime), ``edgetpu`` or ``gpu``.
    A delegate that cannot load falls back to the CPU with one warning;
    ``delegate_in_use`` says what is running.
    """

    def __init__(self, path: str | Path, delegate: str = "cpu", num_threads: int | None = None):
        self.path = Path(path)
        if delegate not in DELEGATES:
            raise ValueError(f"runtime.delegate: expected one of {DELEGATES}, got {delegate!r}")
        if not self.path.is_file():
            raise ModelLoadError(f"model file not found: {self.path}")
        threads = min(num_threads or available_cpus(), available_cpus())
        interpreter_cls, load_delegate, self.backend = _interpreter_api()
        self.delegate_in_use = "cpu"
        delegates = []
        if delegate != "cpu":
            try:
                delegates = [load_delegate(delegate_library(delegate))]
                self.delegate_in_use = delegate
            except (OSError, ValueError, RuntimeError) as exc:
                log.warning("%s delegate could not load (%s); falling back to the CPU for %s",
                            delegate, exc, self.path.name)
        try:
            self._interpreter = interpreter_cls(
                model_path=str(self.path), num_threads=threads, experimental_delegates=delegates or None
            )
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            if not delegates:
                raise ModelLoadError(f"cannot load TFLite model {self.path}: {exc}") from exc
            log.warning("%s delegate rejected %s (%s); falling back to the CPU", delegate, self.path.name, exc)
            self.delegate_in_use = "cpu"
            try:
                self._interpreter = interpreter_cls(model_path=str(self.path), num_threads=threads)
                self._interpreter.allocate_tensors()
            except (ValueError, RuntimeError) as exc2:
                raise ModelLoadError(f"cannot load TFLite model {self.path}: {exc2}") from exc2
        self.inputs = {d["name"]: d for d in self._interpreter.get_input_details()}
        self.outputs = {d["name"]: d for d in self._interpreter.get_output_details()}
        self.last_ms = 0.0

    def input_shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(v) for v in self.inputs[name]["shape"])

    def input_name(self, suffix: str) -> str:
        """The input whose name is ``suffix`` or ends with it (converters add prefixes like ``serving_default_``)."""
        for name in self.inputs:
            if name == suffix or name.endswith(suffix) or name.split(":")[0].endswith(suffix):
                return name
        raise KeyError(f"{self.path.name} has no input named like {suffix!r}; it has {sorted(self.inputs)}")

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once. ``feeds`` maps input names to float arrays; returns float outputs by name."""
        missing = set(self.inputs) - set(feeds)
        if missing:
            raise KeyError(f"missing input(s) {sorted(missing)} for {self.path.name}")
        for name, value in feeds.items():
            detail = self.inputs[name]
            self._interpreter.set_tensor(detail["index"], _quantize(value, detail))
        start = time.perf_counter()
        self._interpreter.invoke()
        self.last_ms = (time.perf_counter() - start) * 1000.0
        return {
            name: _dequantize(self._interpreter.get_tensor(d["index"]), d) for name, d in self.outputs.items()
        }
