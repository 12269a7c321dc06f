"""`edge-emotion check` with the shipped model on bad files: each unreadable photo or face is named and the others
are still measured; data that cannot be read at all (a wrong, empty or cut-short npz) is one line, exit 2."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from edge_app.commands import check
from edge_app.config import load_config

ASTRONAUT = skimage.data.astronaut()


def run_check(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, dict | None, str]:
    parser = argparse.ArgumentParser()
    check.add_arguments(parser)
    code = check.main(parser.parse_args(argv), load_config(None, ["runtime.num_threads=1"], env={}))
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else None, err


def write_jpeg(path: Path, rgb: np.ndarray) -> None:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


# kind -> (how to make the bad file at a path, what the warning says)
BAD_FILES: dict[str, tuple[Callable[[Path], object], str]] = {
    "zero bytes": (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    "not an image": (lambda p: p.write_text("not a picture"), "not an image OpenCV can read"),
    "truncated JPEG": (lambda p: p.write_bytes(cv2.imencode(".jpg", ASTRONAUT)[1].tobytes()[:20_000]),
                       "truncated image"),
    "a directory": (lambda p: p.mkdir(), "is a directory"),
}


def test_full_pipeline_names_each_bad_photo_and_measures_the_rest(tmp_path: Path, capsys, caplog) -> None:
    happy = tmp_path / "photos" / "happy"
    happy.mkdir(parents=True)
    write_jpeg(happy / "a_astronaut.jpg", ASTRONAUT)
    bad = {kind: happy / f"b_{kind.replace(' ', '_')}.jpg" for kind in BAD_FILES}
    for kind, path in bad.items():
        BAD_FILES[kind][0](path)
    write_jpeg(happy / "c_astronaut.jpg", ASTRONAUT[:, ::-1])  # after the bad ones: still measured
    with caplog.at_level(logging.WARNING):
        code, result, err = run_check(["--full-pipeline", "--data", str(tmp_path / "photos")], capsys)
    assert result is not None, err
    assert result["n"] == 6 and result["unreadable"] == 4 and result["face_found_rate"] == 0.3333
    assert result["accuracy"] == 0.3333  # both astronauts read as happy; the bad files count as wrong
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for kind, path in bad.items():
        assert [m for m in messages if m.startswith(f"{path}: {BAD_FILES[kind][1]}")], (kind, messages)
    assert code == (0 if result["passed"] else 1)


def test_faces_mode_skips_each_bad_face_file_by_name(tmp_path: Path, capsys, caplog) -> None:
    """An image-folder copy of FER-2013 (test/happy/*.png, 48x48 faces) with bad files among the faces."""
    happy = tmp_path / "faces" / "test" / "happy"
    happy.mkdir(parents=True)
    face = cv2.resize(cv2.cvtColor(ASTRONAUT[60:200, 160:290], cv2.COLOR_RGB2GRAY), (48, 48))
    for i in range(3):
        cv2.imwrite(str(happy / f"face{i}.png"), np.roll(face, i, axis=1))
    for kind in BAD_FILES:
        BAD_FILES[kind][0](happy / f"bad_{kind.replace(' ', '_')}.png")
    with caplog.at_level(logging.WARNING):
        code, result, err = run_check(["--data", str(tmp_path / "faces")], capsys)
    assert result is not None, err
    assert result["n"] == 3 and code in (0, 1)
    skipped = {Path(m.split(":")[0]).name: m for m in (r.getMessage() for r in caplog.records) if "skipped" in m}
    for kind, (_, why) in BAD_FILES.items():
        assert why in skipped[f"bad_{kind.replace(' ', '_')}.png"]


def _npz(path: Path, **arrays: np.ndarray) -> None:
    np.savez(path, **arrays)


def _cut(path: Path) -> None:
    _npz(path, pixels=np.zeros((20, 48, 48), np.uint8), emotion=np.zeros(20), usage=np.full(20, 2),
         images=np.zeros((20, 64, 64, 3), np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# npz -> (how to make it, what the one line says in faces mode, ... in --full-pipeline mode)
BAD_NPZ: dict[str, tuple[Callable[[Path], object], str, str]] = {
    "zero bytes": (lambda p: p.write_bytes(b""), "not a readable npz file",
                   "not an npz with arrays images and emotion"),
    "cut short": (_cut, "not a readable npz file", "not an npz with arrays images and emotion"),
    "text": (lambda p: p.write_text("hello"), "not a readable npz file", "not an npz with arrays images and emotion"),
    "other arrays": (lambda p: _npz(p, a=np.zeros(3)), "npz lacks array(s) ['emotion', 'pixels', 'usage']",
                     "not an npz with arrays images and emotion"),
    "wrong shapes": (lambda p: _npz(p, pixels=np.zeros((2, 10, 10), np.uint8), emotion=np.zeros(2),
                                    usage=np.zeros(2), images=np.zeros((2, 10, 10), np.uint8)),
                     "pixels has shape (2, 10, 10) uint8, expected (N, 48, 48) uint8",
                     "images has shape (2, 10, 10) uint8, expected (N, H, W, 3) uint8"),
    "lengths differ": (lambda p: _npz(p, pixels=np.zeros((2, 48, 48), np.uint8), emotion=np.zeros(3),
                                      usage=np.zeros(2), images=np.zeros((2, 64, 64, 3), np.uint8)),
                       "pixels, emotion and usage differ in length", "with one emotion per image (3)"),
    "object arrays": (lambda p: _npz(p, pixels=np.array([None, 1], dtype=object), emotion=np.zeros(2),
                                     usage=np.zeros(2), images=np.array([None, 1], dtype=object)),
                      "not a readable npz file", "not an npz with arrays images and emotion"),
}


@pytest.mark.parametrize("mode", ["faces", "full-pipeline"])
@pytest.mark.parametrize("kind", BAD_NPZ)
def test_an_unreadable_npz_is_one_line_naming_it(tmp_path: Path, capsys, kind: str, mode: str) -> None:
    make, faces_message, photos_message = BAD_NPZ[kind]
    path = tmp_path / "data.npz"
    make(path)
    argv = ["--data", str(path)] + (["--full-pipeline"] if mode == "full-pipeline" else [])
    code, result, err = run_check(argv, capsys)
    assert code == 2 and result is None
    assert err.startswith(f"edge-emotion check: {path}: ") and len(err.splitlines()) == 1, err
    assert (faces_message if mode == "faces" else photos_message) in err
