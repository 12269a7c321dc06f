"""Helpers for the privacy-switch tests: `edge-emotion run` as a real process, and what it holds open."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from media_helpers import demo_face_bgr, write_video
from mqtt_helpers import Subscriber


def face_video(path: Path) -> Path:
    """A short looping video of one real face (the bundled demo photo)."""
    return write_video(path, [demo_face_bgr()] * 20, fps=10)


class Service:
    """`edge-emotion run` on a looping video, its log in a file; ``STATE_DIRECTORY`` as the test says."""

    def __init__(self, port: int, video: Path, log: Path, *extra: str, state_directory: Path | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if k != "STATE_DIRECTORY"}
        if state_directory is not None:
            env["STATE_DIRECTORY"] = str(state_directory)
        self.video = video
        self.log_path = log
        self._log = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edge_app", "--set", f"mqtt.port={port}", "--set", "device.id=testcam",
             "--set", "aggregate.window_s=0.5", "--set", f"source.uri={video}", "--set", "source.fps=10", *extra,
             "run"], stdout=self._log, stderr=subprocess.STDOUT, env=env,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def holds_video_open(self) -> bool:
        """Whether the process has the video file open: the observable sign of an open camera."""
        fds = Path(f"/proc/{self.process.pid}/fd")
        return any(os.path.realpath(fd) == str(self.video.resolve()) for fd in fds.iterdir() if fd.is_symlink())

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        self._log.close()
        return code


def stats(sub: Subscriber) -> list[dict]:
    """Every stats message the subscriber got, in order."""
    return [json.loads(p) for p in sub.on("emotion/testcam/stats")]
