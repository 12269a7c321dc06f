"""The privacy switch: whether the device senses at all.

Off means the camera is closed (its light goes out) and no frame is read; windows still go out, marked
``sensing: false``, so subscribers see the device is alive. The state is kept in a small file so that it survives a
restart of the service: ``$STATE_DIRECTORY/sensing`` under systemd (``StateDirectory=``, the one place the hardened
unit may write, shared with the MQTT queue of ``publish.queue``), else ``sensing.state_file``, else the user's state
folder. The file is written only when the switch is used.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from edge_app.publish.queue import write_atomically

log = logging.getLogger(__name__)

ON, OFF = b"ON", b"OFF"
STATE_FILE_NAME = "sensing"


def default_state_file(configured: str | None) -> Path:
    """``$STATE_DIRECTORY/sensing`` (systemd), else ``sensing.state_file``, else the user's state folder: the same
    precedence as the MQTT queue's folder."""
    state_directory = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state_directory:
        return Path(state_directory) / STATE_FILE_NAME
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "edge-emotion" / STATE_FILE_NAME


class SensingSwitch:
    """Thread-safe on/off state set from MQTT's thread and read by the frame loop, kept in ``state_file``.

    ``state_file`` None: nothing is kept and every start begins at ``default`` (the switch does not exist).
    """

    def __init__(self, default: bool = True, state_file: Path | None = None) -> None:
        self.state_file = state_file
        self._changed = threading.Condition()
        self._warned_command = False
        self._on = default
        stored = self._read()
        if stored is not None:
            self._on = stored

    @classmethod
    def from_config(cls, section) -> SensingSwitch:
        """Build from the ``sensing`` config section; without the switch the stored state is ignored."""
        state_file = default_state_file(section.state_file) if section.switch else None
        return cls(section.default, state_file)

    @property
    def on(self) -> bool:
        return self._on

    @property
    def payload(self) -> bytes:
        """The state as published on ``<prefix>/<device>/sensing``."""
        return ON if self._on else OFF

    def set(self, on: bool) -> None:
        """Switch, keep the state in the state file (also an unchanged one: the user's choice then outlives a new
        ``sensing.default``), and wake a frame loop waiting in ``wait``."""
        with self._changed:
            changed, self._on = on != self._on, on
            self._changed.notify_all()
        if changed:
            log.info("sensing switched %s", "on: the camera opens again" if on else "off: the camera is closed")
        self._write()

    def command(self, payload: bytes, retained: bool = False) -> bool:
        """Apply a command from ``.../sensing/set``: exactly ``ON`` or ``OFF``, not retained; True when applied.

        Anything else is ignored, and the first such command is logged (a flood of bad commands cannot fill the
        journal). A retained command is refused: it would replay an old order at every reconnect.
        """
        if payload in (ON, OFF) and not retained:
            self.set(payload == ON)
            return True
        if not self._warned_command:
            why = "a retained command" if retained else f"payload {payload[:40]!r} is not ON or OFF"
            log.warning("sensing command ignored: %s (further bad commands are ignored silently)", why)
            self._warned_command = True
        return False

    def wait(self, timeout: float) -> None:
        """Sleep up to ``timeout`` seconds, returning early when the switch changes."""
        with self._changed:
            on = self._on
            self._changed.wait_for(lambda: self._on != on, timeout=timeout)

    def _read(self) -> bool | None:
        if self.state_file is None or not self.state_file.exists():
            return None
        try:
            text = self.state_file.read_text().strip()
        except OSError as exc:
            log.warning("sensing state file %s cannot be read (%s): starting %s", self.state_file,
                        exc.strerror or exc, "on" if self._on else "off")
            return None
        if text not in ("ON", "OFF"):
            log.warning("sensing state file %s holds %r, not ON or OFF: starting %s", self.state_file, text[:40],
                        "on" if self._on else "off")
            return None
        return text == "ON"

    def _write(self) -> None:
        if self.state_file is None:
            return
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.state_file, self.payload + b"\n")  # a crash leaves the old state, not half a file
        except OSError as exc:
            log.warning("sensing state cannot be kept in %s (%s): it is lost at restart", self.state_file,
                        exc.strerror or exc)
