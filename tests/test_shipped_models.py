"""The device install stays lean: MediaPipe's face models ship inside edge_app (the very bytes of mediapipe's wheel),
and the core dependencies hold no mediapipe, TensorFlow, jax, matplotlib or GUI OpenCV."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from pathlib import Path

import pytest

from edge_app.pipeline.mediapipe_assets import (
    FACE_DETECTOR,
    FACE_LANDMARKER,
    KNOWN_SHA256,
    mediapipe_model,
    sha256_file,
)

ROOT = Path(__file__).resolve().parents[1]
SIZES = {FACE_DETECTOR: 229_714, FACE_LANDMARKER: 1_242_398}
# What made the plain install 1,131 MB and crash without libGL (issue 12); none may be a core dependency again.
HEAVY = {"mediapipe", "tensorflow", "tensorflow-cpu", "tf-keras", "keras", "jax", "jaxlib", "matplotlib", "torch",
         "opencv-python", "opencv-contrib-python", "opencv-contrib-python-headless", "scikit-learn", "scipy"}


def _name(requirement: str) -> str:
    """The normalised project name of a requirement ("opencv_python-headless<4.12" -> "opencv-python-headless")."""
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)).lower()


@pytest.mark.parametrize("relative", [FACE_DETECTOR, FACE_LANDMARKER])
def test_the_shipped_face_models_are_the_pinned_files_with_their_licence(relative: str) -> None:
    path = mediapipe_model(relative)
    assert path.stat().st_size == SIZES[relative] and sha256_file(path) == KNOWN_SHA256[relative]
    notice = (path.parent / "NOTICE").read_text()
    assert path.name in notice and KNOWN_SHA256[relative] in notice
    assert "Apache License" in (path.parent / "LICENSE").read_text()


@pytest.mark.parametrize("relative", [FACE_DETECTOR, FACE_LANDMARKER])
def test_the_shipped_face_models_are_byte_identical_to_the_installed_mediapipes(relative: str) -> None:
    spec = importlib.util.find_spec("mediapipe")  # not imported: that would load TensorFlow
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("mediapipe is not installed (it is in the test extra): nothing to compare the shipped files with")
    theirs = Path(next(iter(spec.submodule_search_locations))) / relative
    if not theirs.is_file():
        pytest.skip(f"the installed mediapipe ships no {relative} (only 0.10.14 - 0.10.21 do)")
    assert mediapipe_model(relative).read_bytes() == theirs.read_bytes()


def test_pyproject_keeps_the_device_install_lean() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+, as CI runs
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    core = {_name(r) for r in project["project"]["dependencies"]}
    assert not core & HEAVY, core & HEAVY
    assert "opencv-python-headless" in core
    assert "mediapipe" in {_name(r) for r in project["project"]["optional-dependencies"]["test"]}
    # Only the device package is installed: no top-level train/convert on a Pi.
    packages = project["tool"]["setuptools"]["packages"]
    assert all(p == "edge_app" or p.startswith("edge_app.") for p in packages), packages
    assert "*.tflite" in project["tool"]["setuptools"]["package-data"]["edge_app.pipeline.mediapipe_models"]


def test_the_installed_metadata_has_the_same_lean_core() -> None:
    """What pip really installs for `pip install edge-emotion` (the metadata of the install in use)."""
    requirements = importlib.metadata.requires("edge-emotion") or []
    core = {_name(r) for r in requirements if "extra ==" not in r}
    assert core and not core & HEAVY, core & HEAVY
