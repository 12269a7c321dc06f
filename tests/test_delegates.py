"""runtime.delegate reaches every network it can run, on the real model files: ``gpu`` asks for the GPU delegate on
BlazeFace, Face Mesh and the classifier's float16 build, ``edgetpu`` keeps the face networks on the CPU, and a
delegate library that is not there costs one warning and runs everything on the CPU (int8). This machine has
neither library, so the fallbacks are what run here; where a library loads, the same tests check that it is used."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import skimage.data

from edge_app.app import build_pipeline
from edge_app.config import load_config
from edge_app.model_card import ModelError, default_model_path
from edge_app.pipeline.classify import EmotionClassifier
from edge_app.pipeline.faces import FacePipeline
from edge_app.pipeline.runtime import delegate_library

MODELS = default_model_path().parent
INT8, FLOAT16, CARD = "fer_fusion_int8.tflite", "fer_fusion_float16.tflite", "fer_fusion.card.json"


def loads_here(delegate: str) -> bool:
    try:
        delegate_library(delegate)
    except OSError:
        return False
    return True


GPU_HERE = loads_here("gpu")


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """A private copy of the shipped int8 model, its float16 build and their card, free to damage."""
    for name in (INT8, FLOAT16, CARD):
        shutil.copyfile(MODELS / name, tmp_path / name)
    return tmp_path


def warnings_in(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_gpu_runs_the_float16_build_or_the_int8_one_on_the_cpu_with_one_warning(models: Path, caplog) -> None:
    with caplog.at_level(logging.INFO):
        classifier = EmotionClassifier(models / INT8, delegate="gpu")
    if GPU_HERE:
        assert classifier.delegate_in_use == "gpu" and classifier.model_path.name == FLOAT16
        return
    assert classifier.delegate_in_use == "cpu" and classifier.model_path.name == INT8
    warnings = warnings_in(caplog)
    assert len(warnings) == 1 and "gpu delegate could not load" in warnings[0] and FLOAT16 in warnings[0], warnings
    assert f"running {INT8} on the CPU instead of {FLOAT16} (built for the GPU delegate)" in caplog.text


def test_the_float16_build_must_match_its_card(models: Path) -> None:
    (models / FLOAT16).write_bytes((models / FLOAT16).read_bytes()[:-10])
    with pytest.raises(ModelError, match=f"{FLOAT16} does not match its card"):
        EmotionClassifier(models / INT8, delegate="gpu")


def test_without_the_float16_file_gpu_says_so_and_runs_the_int8_model(models: Path, caplog) -> None:
    (models / FLOAT16).unlink()
    with caplog.at_level(logging.WARNING):
        classifier = EmotionClassifier(models / INT8, delegate="gpu")
    assert classifier.model_path.name == INT8
    assert any(f"lists {FLOAT16} for the GPU delegate, but it is not there" in w for w in warnings_in(caplog))


@pytest.mark.parametrize("delegate", ["gpu", "edgetpu"])
def test_the_face_networks_get_the_delegate_they_can_run(delegate: str, caplog) -> None:
    with caplog.at_level(logging.INFO):
        pipeline = FacePipeline.from_config(load_config(None, [], env={}), EmotionClassifier().crop_spec,
                                            delegate=delegate)
    expected = "gpu" if delegate == "gpu" and GPU_HERE else "cpu"
    assert pipeline.delegates == {"detector": expected, "landmarks": expected}
    if delegate == "gpu" and not GPU_HERE:  # both networks asked for it, each fell back on its own
        warnings = warnings_in(caplog)
        assert len(warnings) == 2 and all("gpu delegate could not load" in w for w in warnings), warnings
        assert "face_detection_short_range.tflite" in warnings[0] and "face_landmark.tflite" in warnings[1]
    if delegate == "edgetpu":  # the Edge TPU runs compiled int8 models only: no attempt, one line
        assert warnings_in(caplog) == []
        assert caplog.text.count("the face detector and Face Mesh stay on the CPU") == 1
    faces = pipeline.detect(skimage.data.astronaut())
    assert len(faces) == 1 and faces[0].landmarks is not None


def test_the_service_warns_once_for_three_networks_when_the_gpu_delegate_is_missing(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        pipeline = build_pipeline(load_config(None, ["runtime.delegate=gpu"], env={}))
    delegates = pipeline.delegates
    if GPU_HERE:
        assert delegates == {"detector": "gpu", "landmarks": "gpu", "classifier": "gpu"}
        return
    assert delegates == {"detector": "cpu", "landmarks": "cpu", "classifier": "cpu"}
    assert len(warnings_in(caplog)) == 1 and "falling back to the CPU" in warnings_in(caplog)[0]


def test_bench_reports_where_each_network_ran() -> None:
    bench = subprocess.run([sys.executable, "-m", "edge_app", "--set", "runtime.delegate=gpu", "bench", "--frames", "3",
                            "--warmup", "1"], capture_output=True, text=True, timeout=300)
    assert bench.returncode == 0, bench.stderr
    expected = "gpu" if GPU_HERE else "cpu"
    assert json.loads(bench.stdout)["delegates"] == dict.fromkeys(("detector", "landmarks", "classifier"), expected)
    assert GPU_HERE or bench.stderr.count("delegate could not load") == 1, bench.stderr
