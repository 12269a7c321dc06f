"""`edge-emotion annotate` with the shipped model: photos, videos, and bad files among good ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from media_helpers import demo_face_bgr, write_video

from edge_app.commands.annotate import FaceResult, draw_faces
from edge_app.pipeline.capture import demo_image, read_image


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_app", *args], capture_output=True, text=True, timeout=timeout)


def test_annotate_photo_writes_the_picture_and_json_lines(tmp_path: Path) -> None:
    output = tmp_path / "annotated.png"
    result = _cli("annotate", str(demo_image()), "-o", str(output), "--json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 1
    face = lines[0]
    assert set(face) == {"input", "frame", "box", "emotion", "probabilities"} and face["frame"] == 0
    assert face["emotion"] == "happy" and abs(sum(face["probabilities"].values()) - 1) < 0.02
    x0, y0, x1, y1 = face["box"]
    assert 150 < x0 < x1 < 300 and 50 < y0 < y1 < 200  # the astronaut's face
    original, drawn = read_image(demo_image()), read_image(output)
    assert drawn.shape == original.shape
    changed = np.abs(drawn.astype(int) - original.astype(int)).sum(axis=2) > 60
    assert changed.any() and not changed[:, :100].any()  # drawn around the face only, not everywhere
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotated.png"]  # nothing else written


def test_annotate_video(tmp_path: Path) -> None:
    video, output = tmp_path / "in.avi", tmp_path / "out.avi"
    write_video(video, [demo_face_bgr()] * 3, fps=5)
    result = _cli("annotate", str(video), "-o", str(output), "--json")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["frame"] for line in result.stdout.splitlines()] == [0, 1, 2]
    capture = cv2.VideoCapture(str(output))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3


def _bad_input(path: Path, kind: str) -> None:
    if kind == "zero bytes":
        path.write_bytes(b"")
    elif kind == "not an image":
        path.write_text("hello")
    elif kind == "truncated":
        path.write_bytes(demo_image().read_bytes()[:15_000])
    elif kind == "directory":
        path.mkdir()


BAD_INPUTS = {"zero bytes": "empty file", "not an image": "not an image", "truncated": "truncated",
              "directory": "is a directory", "missing": "file not found"}


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_annotate_bad_input_is_one_clear_line(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "input.jpg"
    _bad_input(path, kind)
    result = _cli("annotate", str(path), "-o", str(tmp_path / "out.jpg"))
    assert result.returncode == 1
    assert result.stderr == f"error: {path}: {BAD_INPUTS[kind]}" + result.stderr.split(BAD_INPUTS[kind], 1)[1]
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "out.jpg").exists()


def test_annotate_goes_on_after_bad_files(tmp_path: Path) -> None:
    """Each bad file gets its own error line; the good photo before and the video after are still annotated."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = inputs / "a_good.jpg"
    good.write_bytes(demo_image().read_bytes())
    bad = {kind: inputs / f"b_{kind.replace(' ', '_')}.jpg" for kind in ("zero bytes", "not an image", "truncated",
                                                                            "directory")}
    for kind, path in bad.items():
        _bad_input(path, kind)
    video = inputs / "c_clip.avi"
    write_video(video, [demo_face_bgr()] * 2, fps=5)
    out = tmp_path / "out"
    result = _cli("annotate", str(good), *map(str, bad.values()), str(video), "-o", str(out), "--json")
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(bad)
    for (kind, path), line in zip(bad.items(), errors):
        assert line.startswith(f"error: {path}: {BAD_INPUTS[kind]}"), line
    assert sorted(p.name for p in out.iterdir()) == ["a_good.jpg", "c_clip.avi"]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(line["input"], line["frame"]) for line in lines] == [(str(good), 0), (str(video), 0), (str(video), 1)]
    assert all(line["emotion"] == "happy" for line in lines)


def test_annotate_refuses_an_unusable_output_before_reading_anything(tmp_path: Path) -> None:
    photo = tmp_path / "face.jpg"
    photo.write_bytes(demo_image().read_bytes())
    for output, message in [(tmp_path / "face.avi", "INPUT is a photo"),
                            (tmp_path / "no" / "out.jpg", "does not exist"), (photo, "is the input itself")]:
        result = _cli("annotate", str(photo), "-o", str(output))
        assert result.returncode == (1 if output == photo else 2) and message in result.stderr, result.stderr
    (tmp_path / "file.txt").write_text("a file, not a folder")
    result = _cli("annotate", str(photo), str(photo), "-o", str(tmp_path / "file.txt"))
    assert result.returncode == 2 and "OUTPUT must be a folder" in result.stderr
    assert photo.read_bytes() == demo_image().read_bytes()


def test_draw_faces_leaves_its_input_alone() -> None:
    rgb = np.zeros((240, 320, 3), np.uint8)
    result = FaceResult([100, 60, 180, 150], {"happy": 0.7, "sad": 0.2, "neutral": 0.1})
    drawn = draw_faces(rgb, [result])
    assert not rgb.any() and drawn.shape == rgb.shape and drawn.any()
    assert tuple(drawn[100, 100]) == (255, 190, 11)  # the box in happy's colour, in RGB
    assert result.emotion == "happy"
