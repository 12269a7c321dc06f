"""The windows not yet acknowledged by the broker, kept on disk so that a restart, a SIGKILL or a power cut loses none.

One file per window, ``<seq>.json``, holding exactly the payload that goes out on the emotions topic (the aggregated
numbers, nothing else), and ``last_seq``, the highest ``seq`` ever handed out, so that ``seq`` continues after a
restart instead of starting again at 1. Every file is written atomically (a temporary file, fsync, rename, fsync of
the directory): after a crash a file is either whole or absent. A file that is nevertheless unreadable (a disk
fault, an edit by hand) is reported in one line and renamed ``*.corrupt``, never stopping the start.

Without a directory (off systemd, ``mqtt.queue_dir`` unset) the queue only remembers ``last_seq`` in memory.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from edge_app.publish.aggregate import EmotionsMessage

log = logging.getLogger(__name__)

LAST_SEQ = "last_seq"
WINDOW_FILE = re.compile(r"^(?P<seq>\d{1,18})\.json$")


class QueueDirError(ValueError):
    """The queue directory cannot be created or written (one line naming it)."""


def queue_directory(queue_dir: str | None, env: Mapping[str, str] = os.environ) -> tuple[Path | None, str]:
    """Where the queue lives and the setting that chose it: systemd's ``$STATE_DIRECTORY`` (the unit's
    ``StateDirectory=``, its only writable path) when set, else ``mqtt.queue_dir``, else nowhere (memory only)."""
    state = env.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return Path(state), "$STATE_DIRECTORY"
    if queue_dir:
        return Path(queue_dir).expanduser(), "mqtt.queue_dir"
    return None, "memory"


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` so that a crash at any moment leaves the old content or the new one, never a part."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself reaches the disk
    finally:
        os.close(directory)


class WindowQueue:
    """Window payloads by ``seq`` on disk until acknowledged, and the last ``seq`` handed out.

    Thread-safe: windows are added by the service's loop and removed by the MQTT thread on acknowledgement.
    A disk error while running (a full disk) is logged once and the window stays in memory only.
    """

    def __init__(self, directory: Path | None = None, origin: str = "mqtt.queue_dir") -> None:
        self.directory = directory
        self.last_seq = 0
        self._lock = threading.Lock()
        self._stored: set[int] = set()
        self._loaded: list[tuple[int, bytes]] = []
        self._disk_error: str | None = None
        if directory is not None:
            self._open(directory, origin)

    @property
    def next_seq(self) -> int:
        """The ``seq`` the next window must carry: one past any window this device ever queued."""
        return self.last_seq + 1

    def take_loaded(self) -> list[tuple[int, bytes]]:
        """The windows found on disk at start, in ``seq`` order (once: the publisher sends them first)."""
        loaded, self._loaded = self._loaded, []
        return loaded

    def add(self, seq: int, payload: bytes) -> None:
        """Keep a window until ``remove``; written to disk before it is handed to the network."""
        with self._lock:
            self.last_seq = max(self.last_seq, seq)
            if self.directory is None:
                return
            try:
                write_atomically(self._path(seq), payload)
                self._stored.add(seq)
                self._disk_error = None
            except OSError as error:
                self._disk_failed(f"cannot write window {seq} to {self.directory}: {error}")

    def remove(self, seq: int) -> None:
        """Forget a window (acknowledged, or dropped from a full buffer); ``last_seq`` is saved before the newest
        window's file goes, so the number survives an empty queue."""
        with self._lock:
            if self.directory is None or seq not in self._stored:
                return
            try:
                if seq >= max(self._stored):
                    write_atomically(self.directory / LAST_SEQ, f"{self.last_seq}\n".encode())
                self._path(seq).unlink(missing_ok=True)
                self._stored.discard(seq)
            except OSError as error:
                self._disk_failed(f"cannot remove window {seq} from {self.directory}: {error}")

    @property
    def stored(self) -> int:
        """Windows held on disk now."""
        with self._lock:
            return len(self._stored)

    def _path(self, seq: int) -> Path:
        assert self.directory is not None
        return self.directory / f"{seq:010d}.json"

    def _disk_failed(self, error: str) -> None:
        """Log the first failure of a run of them (a full disk fails every write until space is freed)."""
        if self._disk_error is None:
            log.error("MQTT queue: %s (kept in memory only)", error)
        self._disk_error = error

    def _open(self, directory: Path, origin: str) -> None:
        """Create or read the directory; only an unwritable directory is an error, a bad file is set aside."""
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomically(directory / f".{LAST_SEQ}.probe", b"")
            (directory / f".{LAST_SEQ}.probe").unlink()
        except OSError as error:
            raise QueueDirError(f"{origin}: cannot write the MQTT queue directory {directory}: {error}") from error
        for leftover in directory.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)  # a write that never reached its rename: by design not a window
        last_file = directory / LAST_SEQ
        if last_file.exists():
            text = last_file.read_bytes().decode(errors="replace").strip()
            if text.isdigit():
                self.last_seq = int(text)
            else:
                self._set_aside(last_file, f"not a number: {text[:20]!r}")
        for path in sorted(directory.iterdir()):
            match = WINDOW_FILE.match(path.name)
            if match and path.is_file():
                self._load(path, int(match["seq"]))
        self._loaded.sort()
        if self._loaded:
            log.info("MQTT queue: %d window(s) from an earlier run in %s, seq %d-%d, sent first",
                     len(self._loaded), directory, self._loaded[0][0], self._loaded[-1][0])

    def _load(self, path: Path, seq: int) -> None:
        payload = path.read_bytes()
        try:
            window = EmotionsMessage.model_validate_json(payload)
        except ValidationError as error:
            self._set_aside(path, error.errors()[0]["msg"])
            return
        if window.seq != seq:
            self._set_aside(path, f"holds seq {window.seq}")
            return
        self._stored.add(seq)
        self._loaded.append((seq, payload))
        self.last_seq = max(self.last_seq, seq)

    def _set_aside(self, path: Path, why: str) -> None:
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        log.error("MQTT queue: %s is unreadable (%s); set aside as %s", path, why, aside.name)
