"""Shared fixtures: the FER-2013 path, a tiny trained model, and a real mosquitto broker on a free loopback port."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Keras (TensorFlow, matplotlib) before GStreamer: in the test venv, a process that has run Gst.init beside
# mediapipe's opencv-contrib cv2 dies with SIGSEGV when it later imports keras (in matplotlib's ft2font), so
# `pytest tests/test_gstreamer.py tests/test_classifier.py` died while the whole suite, which happens to load keras
# first, passed. Loaded here, every order works. The device never imports keras or matplotlib.
try:
    import keras  # noqa: F401
except ImportError:  # a device-only install: the tests that need keras skip
    pass
from mqtt_helpers import close_all
from train_helpers import run_script, small_fer

# In CI the property tests replay the same examples every run (a failure is reproducible, not a dice roll);
# on a developer's machine they explore new ones each run. CI=true is what CI services (and .ci/run) set.
# Neither kind of run depends on the machine's speed: no per-example deadline, no "too slow" health check.
UNTIMED = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("ci", derandomize=True, print_blob=True, **UNTIMED)
settings.register_profile("dev", **UNTIMED)
settings.load_profile("ci" if os.environ.get("CI", "").lower() in ("1", "true", "yes") else "dev")

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)



@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """A test that runs the CLI in-process (``configure_logging``) leaves no handler on its captured stderr: a later
    test's threads would log into the closed stream ('--- Logging error --- I/O operation on closed file')."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)

@pytest.fixture(scope="session")
def fer_data_path() -> Path:
    """The FER-2013 npz given by FER2013_PATH; tests that need it skip when it is not set."""
    value = os.environ.get("FER2013_PATH")
    if not value:
        pytest.skip("FER-2013 not available: set FER2013_PATH to fer2013.npz")
    path = Path(value)
    if not path.exists():
        pytest.skip(f"FER-2013 not available: FER2013_PATH={value} does not exist")
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, fer_data_path: Path) -> dict[str, Path]:
    """A tiny fusion model trained by train/train.py on a FER-2013 slice and converted by quantize.py.

    Built once per session; the files live in a fixed folder of the session's temp dir, so
    modules that import this fixture reuse them instead of training again.
    """
    base = tmp_path_factory.getbasetemp() / "tiny_model"
    paths = {"base": base, "data": base / "fer_small.npz", "cache": base / "cache", "run": base / "run",
             "models": base / "models"}
    paths["keras"] = paths["run"] / "model.keras"
    paths["int8"] = paths["models"] / "fer_fusion_int8.tflite"
    paths["card"] = paths["models"] / "fer_fusion.card.json"
    paths["report"] = paths["models"] / "quantization_report.json"
    if (base / "done").is_file():
        return paths
    base.mkdir(exist_ok=True)
    small_fer(fer_data_path, paths["data"])
    trained = run_script(
        "train/train.py", "--data", paths["data"], "--out", paths["run"], "--cache-dir", paths["cache"],
        "--epochs", "30", "--batch-size", "64", "--warmup-epochs", "0", "--widths", "8", "16", "32", "64",
        "--lr", "3e-3", "--patience", "30",
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    converted = run_script(
        "convert/quantize.py", "--model", paths["keras"], "--out", paths["models"], "--data", paths["data"],
        "--cache-dir", paths["cache"], "--calibration-size", "100", "--max-accuracy-drop", "5",
        "--max-device-path-drop", "10",  # 280 faces: a few that flip move the device path's figure by points
    )
    assert converted.returncode == 0, converted.stderr[-3000:]
    (base / "done").write_text(converted.stdout)
    return paths


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Broker:
    """A mosquitto process with its own config and persistence directory, restartable on the same port."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path, conf: str = "") -> None:
        self.workdir = workdir
        self.port = free_port()
        self.log_path = workdir / "mosquitto.log"
        self.config_path = workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} {self.host}",
            "persistence true",
            f"persistence_location {workdir}/",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # mosquitto run as root would switch to user mosquitto and lose the tmp dir
        if "allow_anonymous" not in conf:
            lines.append("allow_anonymous true")
        self.config_path.write_text("\n".join(lines) + "\n" + conf + "\n")
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start the broker and wait until its port accepts connections."""
        if self.process is not None and self.process.poll() is None:
            return
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config_path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}: {err}{log}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not accept connections on {self.host}:{self.port} within {timeout} s")

    def stop(self) -> None:
        """Stop the broker (SIGTERM, so it saves persistent sessions) and wait for it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@pytest.fixture
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Broker]]:
    """Factory ``mosquitto(conf="", start=True) -> Broker``; every broker it made is stopped at teardown."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install -y mosquitto)")
    brokers: list[Broker] = []

    def make(conf: str = "", start: bool = True) -> Broker:
        broker = Broker(tmp_path_factory.mktemp("mosquitto"), conf)
        brokers.append(broker)
        if start:
            broker.start()
        return broker

    yield make
    for broker in brokers:
        broker.stop()


@pytest.fixture
def clients() -> Iterator[list]:
    """MQTT publishers and subscribers made by a test (tests/mqtt_helpers.py), closed at teardown even on failure."""
    made: list = []
    yield made
    close_all(made)
