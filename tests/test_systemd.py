"""The systemd template unit verifies, as the template and as an instance, and is hardened (exposure <= 2.0, its
state directory the only writable path); install.sh parses; and the pipeline really runs under the rule
MemoryDenyWriteExecute=yes enforces (no writable and executable memory). tests/platforms/systemd.sh boots it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "edge-emotion@.service"
INSTALL = REPO / "systemd" / "install.sh"
EXEC_PATH = "/opt/edge-emotion/venv/bin/edge-emotion"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")


def _unit_with_executable(tmp_path: Path, name: str) -> Path:
    """A copy of the unit named ``name`` whose ExecStart exists (verify insists on it; no venv is installed here)."""
    program = tmp_path / "edge-emotion"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    text = UNIT.read_text()
    assert EXEC_PATH in text
    unit = tmp_path / name
    unit.write_text(text.replace(EXEC_PATH, str(program)))
    return unit


def _settings(text: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and line[0] != "#":
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


@needs_systemd_analyze
@pytest.mark.parametrize("name", [UNIT.name, "edge-emotion@cam0.service"])
def test_unit_verifies(tmp_path: Path, name: str) -> None:
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", str(_unit_with_executable(tmp_path, name))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert name not in result.stderr, result.stderr  # no warnings about the unit either


@needs_systemd_analyze
@pytest.mark.parametrize("name", [UNIT.name, "edge-emotion@cam0.service"])
def test_unit_exposure_is_at_most_2(tmp_path: Path, name: str) -> None:
    unit = tmp_path / name
    unit.write_text(UNIT.read_text())
    result = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(unit)],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    exposure = float(match.group(1))
    print(f"systemd-analyze security exposure of {name}: {exposure}")
    assert exposure <= 2.0


def test_each_instance_has_its_own_config_id_and_state_which_is_the_only_writable_path() -> None:
    """edge-emotion@cam0 reads cam0.yaml, publishes as <host>-cam0 and may write only /var/lib/edge-emotion/cam0."""
    values = _settings(UNIT.read_text())
    assert values["ExecStart"] == [f"{EXEC_PATH} --config /etc/edge-emotion/%i.yaml run"]
    assert "EDGE_EMOTION_INSTANCE=%i" in values["Environment"]
    assert values["StateDirectory"] == ["edge-emotion/%i"] and values["DynamicUser"] == ["yes"]
    assert values["ProtectSystem"] == ["strict"] and values["ProtectHome"] == ["yes"]
    writable = {"ReadWritePaths", "BindPaths", "CacheDirectory", "LogsDirectory", "RuntimeDirectory",
                "ConfigurationDirectory"}
    assert not writable & set(values), writable & set(values)


def test_unit_settings_the_service_relies_on() -> None:
    values = _settings(UNIT.read_text())
    assert values["Type"] == ["notify"] and values["NotifyAccess"] == ["main"]
    assert values["WatchdogSec"] == ["30"] and values["Restart"] == ["on-failure"]
    assert values["ExecStart"][0].startswith(EXEC_PATH) and values["ExecStart"][0].endswith(" run")
    assert "video" in values["SupplementaryGroups"][0].split()
    assert "char-video4linux rw" in values["DeviceAllow"]


def test_install_script_parses() -> None:
    result = subprocess.run(["bash", "-n", str(INSTALL)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_install_script_refuses_bad_options_before_touching_anything() -> None:
    for args, message in [(["--frobnicate"], "unknown option --frobnicate"),
                          (["--purge"], "--purge only goes with --uninstall"),
                          (["--instance", "../etc"], "--instance ../etc: use letters, digits"),
                          (["--instance"], "--instance needs a name"),
                          (["--uninstall", "--instance", "cam0"], "--instance does not go with --uninstall")]:
        result = subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True)
        assert result.returncode == 1 and message in result.stderr, result.stderr
    result = subprocess.run(["bash", str(INSTALL), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--uninstall" in result.stdout and "/opt/edge-emotion/venv" in result.stdout


MDWE_RUN = """
import ctypes, mmap, sys
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit(77)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("MDWE is not enforced: a writable and executable mapping was allowed")
except OSError:
    pass
from edge_app.cli import main
sys.exit(main(["bench", "--frames", "20", "--warmup", "5", "--faces", "2"]))
"""


def test_pipeline_runs_without_writable_executable_memory() -> None:
    """The kernel's PR_SET_MDWE refuses what MemoryDenyWriteExecute=yes refuses: the unit's setting is safe."""
    result = subprocess.run([sys.executable, "-c", MDWE_RUN], capture_output=True, text=True, timeout=120, cwd=REPO)
    if result.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert result.returncode == 0, result.stderr[-2000:]
    assert '"faces_per_frame": 2.0' in result.stdout
