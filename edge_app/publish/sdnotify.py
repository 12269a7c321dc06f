"""systemd's sd_notify protocol without a dependency: one datagram per message to ``$NOTIFY_SOCKET``.

With ``Type=notify`` the unit is started once ``READY=1`` arrives, and ``WatchdogSec`` restarts the service when
``WATCHDOG=1`` stops arriving. Outside systemd (no ``NOTIFY_SOCKET``) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def _address() -> str | None:
    """The socket path; a leading '@' names an abstract socket (a leading NUL byte on the wire)."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return None
    return "\0" + path[1:] if path.startswith("@") else path


def notify(*fields: str) -> bool:
    """Send ``KEY=VALUE`` fields as one message; True when sent, False outside systemd or when it failed."""
    address = _address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Never block the service: if systemd's queue is full this message is dropped (the next one follows).
            sock.sendto("\n".join(fields).encode(), socket.MSG_DONTWAIT, address)
    except OSError as exc:
        log.debug("sd_notify to %r failed: %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def ready(status: str | None = None) -> bool:
    """The service is up (``Type=notify`` units count as started from here)."""
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def stopping() -> bool:
    return notify("STOPPING=1")


def watchdog() -> bool:
    """Tell the watchdog the service is alive; send at least every ``watchdog_interval()`` seconds."""
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    """The one-line state ``systemctl status`` shows; newlines would end the field, so they become spaces."""
    return notify("STATUS=" + " ".join(text.split()))


def watchdog_interval() -> float | None:
    """Half of ``WatchdogSec`` in seconds (systemd's advice), or None when no watchdog is set for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None
