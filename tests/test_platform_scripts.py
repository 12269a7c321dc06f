"""tests/platforms/*.sh parse, and their shared summary line is JSON even when a failure message holds quotes,
backslashes and several lines (the scripts themselves need root, debootstrap and minutes: .ci/run runs them)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

PLATFORMS = Path(__file__).resolve().parent / "platforms"


@pytest.mark.parametrize("script", sorted(PLATFORMS.glob("*.sh")), ids=lambda p: p.name)
def test_script_parses(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_failure_ends_with_one_json_line_and_runs_the_cleanups(tmp_path: Path) -> None:
    marker = tmp_path / "cleaned"
    program = f"""
source {PLATFORMS / 'lib.bash'}
on_exit "touch '{marker}'"
result faces 300
fail $'install.sh failed: "libGL.so.1"\\n\\tC:\\\\path'
echo never reached
"""
    result = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "never reached" not in result.stdout
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["passed"] is False and summary["faces"] == 300
    assert summary["error"] == 'install.sh failed: "libGL.so.1"  C:\\path'
    assert marker.exists(), "the cleanup did not run"
