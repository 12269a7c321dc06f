"""Model faults in `edge-emotion run` against a real mosquitto: a missing, truncated or wrong model file and a card
that does not match stop the service with one line naming the file before anything (not even the status) is
published; a delegate that cannot load falls back to the CPU and says so in the log and in stats."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mqtt_helpers import Subscriber

from edge_app.model_card import default_model_path
from edge_app.pipeline.mediapipe_assets import FACE_DETECTOR, mediapipe_model, sha256_file

MODELS = default_model_path().parent
INT8 = "fer_fusion_int8.tflite"
CARD = "fer_fusion.card.json"


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """A private copy of the shipped int8 model, its Edge TPU-ready and float16 builds and their card, to damage."""
    folder = tmp_path / "models"
    folder.mkdir()
    for name in (INT8, "fer_fusion_int8_edgetpu_ready.tflite", "fer_fusion_float16.tflite", CARD):
        shutil.copyfile(MODELS / name, folder / name)
    return folder


def edit_card(models: Path, change: Callable[[dict], None]) -> None:
    card = json.loads((models / CARD).read_text())
    change(card)
    (models / CARD).write_text(json.dumps(card))


def register(models: Path, kind: str, file: Path) -> None:
    """Make the card vouch for ``file`` as its ``kind`` entry (as convert/quantize.py would)."""
    edit_card(models, lambda card: card["files"].__setitem__(kind, {
        "file": file.name, "sha256": sha256_file(file), "size_bytes": file.stat().st_size}))


def truncate(models: Path) -> None:
    model = models / INT8
    model.write_bytes(model.read_bytes()[:4000])


def truncate_and_rewrite_card(models: Path) -> None:
    truncate(models)
    register(models, "int8", models / INT8)


def another_network(models: Path) -> None:
    """A valid TFLite file that is not an emotion model (the face detector), and a card that vouches for it."""
    shutil.copyfile(mediapipe_model(FACE_DETECTOR), models / INT8)
    register(models, "int8", models / INT8)


def not_a_model(models: Path) -> None:
    (models / INT8).write_text("this is not a model")
    register(models, "int8", models / INT8)


def card_with_other_inputs(models: Path) -> None:
    edit_card(models, lambda card: card["inputs"]["landmarks"].__setitem__("shape", [1, 468]))


def card_without_entry(models: Path) -> None:
    edit_card(models, lambda card: card["files"].pop("int8"))


# damage -> (what to do to the copy, extra --set options, what the one error line must say)
FAULTS: dict[str, tuple[Callable[[Path], None], list[str], str]] = {
    "missing model": (lambda m: (m / INT8).unlink(), [], "model file not found: {models}/" + INT8),
    "truncated model": (truncate, [], "{models}/" + INT8 + " does not match its card (sha256"),
    "truncated model, card rewritten": (truncate_and_rewrite_card, [],
                                        "{models}/" + INT8 + ": cannot load as a TFLite model"),
    "not a model": (not_a_model, [], "{models}/" + INT8 + ": cannot load as a TFLite model"),
    "another network": (another_network, [], "{models}/" + INT8 + ": the model has no input named like 'face'"),
    "card with other classes than the config": (lambda m: None, ["model.classes=[happy,sad]"],
                                                "differ from model.classes ['happy', 'sad']"),
    "card with other input shapes": (card_with_other_inputs, [], "card input 'landmarks' has shape [1, 468]"),
    "card not listing the model": (card_without_entry, [], "{models}/" + INT8 + ": no model card in"),
    "card not JSON": (lambda m: (m / CARD).write_text("{not json"), [], "not valid JSON"),
    "card missing": (lambda m: (m / CARD).unlink(), [], "no model card in {models}"),
}


def run(broker, models: Path, *settings: str, args: tuple[str, ...] = ("--max-windows", "1"),
        timeout: float = 90) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "edge_app", "--set", f"mqtt.port={broker.port}", "--set", "device.id=testcam",
               "--set", "aggregate.window_s=1", "--set", f"model.path={models / INT8}", "--set", "mqtt.discovery=true"]
    for setting in settings:
        command += ["--set", setting]
    return subprocess.run([*command, "run", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("fault", FAULTS)
def test_model_fault_is_one_line_and_nothing_is_published(mosquitto, models: Path, fault: str) -> None:
    damage, settings, expected = FAULTS[fault]
    damage(models)
    broker = mosquitto()
    subscriber = Subscriber(broker, ["#"])  # every topic, retained ones included
    try:
        result = run(broker, models, *settings)
        time.sleep(0.5)  # a stray message would arrive by now; the wait's length cannot make the test fail
    finally:
        subscriber.close()
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected.format(models=models) in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert subscriber.messages == []  # not even status online, nor Home Assistant discovery


@pytest.mark.parametrize("delegate", ["edgetpu", "gpu"])
def test_a_delegate_that_cannot_load_falls_back_to_the_cpu(mosquitto, models: Path, delegate: str) -> None:
    """gpu: no GPU delegate library here (asked for on all three networks: still one warning). edgetpu: an Edge TPU
    build registered in the card, but no libedgetpu (the face networks stay on the CPU, said once)."""
    if delegate == "edgetpu":
        compiled = models / "fer_fusion_int8_edgetpu.tflite"
        shutil.copyfile(models / "fer_fusion_int8_edgetpu_ready.tflite", compiled)
        register(models, "edgetpu", compiled)
    broker = mosquitto()
    subscriber = Subscriber(broker, ["emotion/testcam/#"])
    try:
        result = run(broker, models, f"runtime.delegate={delegate}", args=("--max-windows", "2"))
        subscriber.wait_for(lambda: len(subscriber.on("emotion/testcam/stats")) >= 2
                            and len(subscriber.on("emotion/testcam/emotions")) >= 2, timeout=30)
    finally:
        subscriber.close()
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "delegate could not load" in line]
    assert len(warnings) == 1 and "falling back to the CPU" in warnings[0], result.stderr
    if delegate == "edgetpu":
        assert "libedgetpu" in warnings[0]
        assert f"running {INT8} on the CPU instead of fer_fusion_int8_edgetpu.tflite" in result.stderr
        assert result.stderr.count("the face detector and Face Mesh stay on the CPU") == 1
    else:
        assert f"running {INT8} on the CPU instead of fer_fusion_float16.tflite" in result.stderr
    assert f"model {INT8} on cpu" in result.stderr  # the start-up line names the file and delegate in use
    stats = [json.loads(p) for p in subscriber.on("emotion/testcam/stats")]
    assert len(stats) == 2 and all(s["delegate"] == "cpu" for s in stats)
    assert all(s["delegates"] == {"detector": "cpu", "landmarks": "cpu", "classifier": "cpu"} for s in stats)
    windows = [json.loads(p) for p in subscriber.on("emotion/testcam/emotions")]
    assert [w["seq"] for w in windows] == [1, 2] and windows[0]["dominant"] == "happy"
