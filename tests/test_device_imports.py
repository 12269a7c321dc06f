"""Every device command imports without the desktop side: no TensorFlow, Keras or mediapipe, and nothing from
train/ or convert/ (they are not installed on a device). The desktop venv has them all, so a stray import here would
go unnoticed until a Raspberry Pi failed to start the service."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edge_app.cli import SUBCOMMANDS

DESKTOP_MODULES = ("tensorflow", "keras", "mediapipe", "jax", "matplotlib", "train", "convert")


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_a_device_command_imports_nothing_from_the_desktop_side(command: str) -> None:
    module = SUBCOMMANDS[command][0]
    code = (f"import sys, {module}, edge_app.cli\n"
            f"loaded = sorted(m for m in {DESKTOP_MODULES!r} if m in sys.modules)\n"
            "assert not loaded, loaded\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_every_device_command_is_covered() -> None:
    assert set(SUBCOMMANDS) >= {"run", "bench", "check", "annotate", "ui"}
