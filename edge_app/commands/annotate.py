"""``edge-emotion annotate INPUT [INPUT ...] -o OUTPUT [--json]``: faces, emotions and probability bars drawn onto
photos or videos, for looking at what the model sees on this machine. A bad input (missing, empty, a folder, not a
picture, truncated) is one ``error:`` line naming it; the other inputs are still annotated.

It is the only command that writes pictures, and only to OUTPUT. ``draw_faces`` is the drawing, shared with the
local preview page.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_app.app import build_pipeline
from edge_app.config import AppConfig
from edge_app.pipeline.capture import IMAGE_SUFFIXES, ImageError, read_image
from edge_app.pipeline.classify import EmotionClassifier
from edge_app.pipeline.faces import Face, FacePipeline, FrameError, as_rgb8
from edge_app.pipeline.runtime import ModelLoadError

log = logging.getLogger(__name__)

VIDEO_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}
# One colour per emotion (RGB), the same in every picture.
COLOURS = {
    "angry": (230, 57, 70), "disgust": (106, 153, 78), "fear": (155, 93, 229), "happy": (255, 190, 11),
    "sad": (58, 134, 255), "surprise": (255, 0, 110), "neutral": (200, 200, 200),
}
OTHER_COLOUR = (0, 200, 255)


class AnnotateError(ValueError):
    """An input or output that cannot be used; the message names the file."""


@dataclass
class FaceResult:
    """One face as drawn and printed: its box and class probabilities; nothing else of the face is kept."""

    box: Sequence[float]  # x0, y0, x1, y1 in pixels
    probabilities: Mapping[str, float]

    @property
    def emotion(self) -> str:
        return max(self.probabilities, key=self.probabilities.__getitem__)

    def as_json(self, frame: int) -> dict:
        return {"frame": frame, "box": [round(float(v), 1) for v in self.box], "emotion": self.emotion,
                "probabilities": {c: round(float(p), 4) for c, p in self.probabilities.items()}}


def classify_faces(rgb: np.ndarray, pipeline: FacePipeline,
                   classifier: EmotionClassifier) -> list[tuple[Face, FaceResult]]:
    """Every face the pipeline finds in ``rgb`` with its result (box and emotion probabilities).

    The face itself (crop, landmarks) is for on-machine use only, such as the preview page's Grad-CAM.
    """
    pairs = []
    for face in pipeline.detect(rgb):
        probabilities = classifier.predict(face.crop, face.features)
        pairs.append((face, FaceResult(face.box.tolist(), dict(zip(classifier.classes, probabilities.tolist())))))
    return pairs


def draw_faces(rgb: np.ndarray, results: Sequence[FaceResult]) -> np.ndarray:
    """A copy of ``rgb`` with each face's box, emotion and one probability bar per class."""
    out = np.ascontiguousarray(rgb).copy()
    height, width = out.shape[:2]
    scale = max(min(height, width) / 720.0, 0.4)
    thickness = max(1, round(2 * scale))
    font = cv2.FONT_HERSHEY_SIMPLEX
    for result in results:
        x0, y0, x1, y1 = (int(round(v)) for v in result.box)
        emotion = result.emotion
        colour = COLOURS.get(emotion, OTHER_COLOUR)
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, thickness)
        label = f"{emotion} {result.probabilities[emotion]:.0%}"
        (tw, th), base = cv2.getTextSize(label, font, 0.6 * scale, thickness)
        top = max(y0 - th - base - 4, 0)
        cv2.rectangle(out, (x0, top), (x0 + tw + 4, top + th + base + 4), colour, cv2.FILLED)
        cv2.putText(out, label, (x0 + 2, top + th + 2), font, 0.6 * scale, (0, 0, 0), thickness, cv2.LINE_AA)
        # Bars under the box (or inside it when the box touches the bottom): name, then a bar as long as p.
        row = max(int(14 * scale), 8)
        bar_width = max(x1 - x0, int(120 * scale))
        name_width = int(70 * scale)
        y = y1 + 4 if y1 + 4 + row * len(result.probabilities) <= height else max(y0, 0) + 4
        cv2.rectangle(out, (x0, y), (x0 + bar_width, y + row * len(result.probabilities)), (0, 0, 0), cv2.FILLED)
        for name, p in result.probabilities.items():
            cv2.putText(out, name, (x0, y + row - 3), font, 0.4 * scale, (255, 255, 255), 1, cv2.LINE_AA)
            left = x0 + name_width
            right = left + int((bar_width - name_width) * float(np.clip(p, 0.0, 1.0)))
            cv2.rectangle(out, (left, y + 2), (max(right, left + 1), y + row - 2), COLOURS.get(name, OTHER_COLOUR),
                          cv2.FILLED)
            y += row
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", type=Path, nargs="+", metavar="INPUT", help="photos (jpg, png, bmp) or video files")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUTPUT",
                        help="with one INPUT: the annotated file to write (same kind as INPUT) or a folder; with "
                             "several: a folder (created if missing) receiving each INPUT's annotation under its name")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON line per face on stdout: input, frame, box, emotion, probabilities")


def _check_input(path: Path) -> None:
    if path.is_dir():
        raise AnnotateError(f"{path}: is a directory, expected a photo or a video file")
    if not path.is_file():
        raise AnnotateError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise AnnotateError(f"{path}: empty file (0 bytes)")


def is_photo(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def output_paths(inputs: Sequence[Path], output: Path) -> list[Path]:
    """Where each input's annotation goes; ``AnnotateError`` when OUTPUT cannot be used (nothing is written then).

    One INPUT and an OUTPUT that is not a folder: OUTPUT itself, of the same kind. Otherwise OUTPUT is a folder
    (made here when its parent exists) and each input keeps its name (a video with a suffix OpenCV cannot write
    becomes .avi).
    """
    if len(inputs) == 1 and not output.is_dir():
        if not output.parent.is_dir():
            raise AnnotateError(f"{output}: folder {output.parent} does not exist")
        if is_photo(inputs[0]) and not is_photo(output):
            raise AnnotateError(f"{output}: INPUT is a photo, so OUTPUT must end in one of {sorted(IMAGE_SUFFIXES)}")
        if not is_photo(inputs[0]) and output.suffix.lower() not in VIDEO_CODECS:
            raise AnnotateError(f"{output}: INPUT is a video, so OUTPUT must end in one of {sorted(VIDEO_CODECS)}")
        return [output]
    if output.exists() and not output.is_dir():
        raise AnnotateError(f"{output}: with several INPUTs, OUTPUT must be a folder")
    if not output.parent.is_dir():
        raise AnnotateError(f"{output}: folder {output.parent} does not exist")
    output.mkdir(exist_ok=True)
    paths = []
    for path in inputs:
        name = path.name if is_photo(path) or path.suffix.lower() in VIDEO_CODECS else path.stem + ".avi"
        paths.append(output / name)
    return paths


def _video_frames(path: Path) -> tuple[Iterator[np.ndarray], float]:
    """RGB frames of a video and its frame rate; an unreadable or truncated video says so, naming the file."""
    capture = cv2.VideoCapture(str(path))
    ok, first = capture.read() if capture.isOpened() else (False, None)
    if not ok:
        capture.release()
        raise AnnotateError(f"{path}: not an image or a video OpenCV can read")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    expected = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))

    def frames() -> Iterator[np.ndarray]:
        frame, count = first, 0
        try:
            while frame is not None:
                count += 1
                yield as_rgb8(frame, bgr=True)
                ok, frame = capture.read()
                frame = frame if ok else None
        finally:
            capture.release()
        if expected and count < expected:
            log.warning("%s: ended at frame %d of %d (truncated or corrupt); annotated what could be read",
                        path, count, expected)

    return frames(), fps


def open_input(source: Path, output: Path) -> tuple[Iterator[np.ndarray], float]:
    """The RGB frames of a photo (one) or a video, and the video's frame rate; ``AnnotateError``, ``ImageError``
    or ``FrameError`` name the file that cannot be used."""
    _check_input(source)
    if output.resolve() == source.resolve():
        raise AnnotateError(f"{output}: is the input itself; choose another OUTPUT")
    if is_photo(source):
        return iter([read_image(source)]), 0.0
    return _video_frames(source)


def annotate_frames(frames: Iterator[np.ndarray], fps: float, source: Path, output: Path, pipeline: FacePipeline,
                    classifier: EmotionClassifier, json_lines: bool) -> tuple[int, int]:
    """Write the frames annotated to ``output`` (a photo for one frame from a photo, else a video); (faces, frames)."""
    photo = is_photo(source)
    writer = None
    faces = count = 0
    try:
        for index, rgb in enumerate(frames):
            results = [result for _, result in classify_faces(rgb, pipeline, classifier)]
            faces += len(results)
            count += 1
            if json_lines:
                for result in results:
                    print(json.dumps({"input": str(source), **result.as_json(index)}), flush=True)
            annotated = cv2.cvtColor(draw_faces(rgb, results), cv2.COLOR_RGB2BGR)
            if photo:
                if not cv2.imwrite(str(output), annotated):
                    raise AnnotateError(f"{output}: could not be written")
                continue
            if writer is None:
                writer = cv2.VideoWriter(str(output), cv2.VideoWriter_fourcc(*VIDEO_CODECS[output.suffix.lower()]),
                                         fps, (rgb.shape[1], rgb.shape[0]))
                if not writer.isOpened():
                    raise AnnotateError(f"{output}: could not be opened for writing a video")
            writer.write(annotated)
    finally:
        if writer is not None:
            writer.release()
    return faces, count


def main(args: argparse.Namespace, config: AppConfig) -> int:
    """0 when every input was annotated; 1 when some could not be (one ``error:`` line each, the others are
    still done); 2 when OUTPUT or the models cannot be used. The models load at the first usable input."""
    try:
        outputs = output_paths(args.inputs, args.output)
    except AnnotateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    models: tuple[EmotionClassifier, FacePipeline] | None = None
    failed = 0
    written: set[Path] = set()
    for source, output in zip(args.inputs, outputs):
        try:
            if output.resolve() in written:
                raise AnnotateError(f"{source}: another INPUT of the same name was already written to {output}")
            frames, fps = open_input(source, output)
            if models is None:
                models = build_pipeline(config)
            classifier, pipeline = models
            faces, count = annotate_frames(frames, fps, source, output, pipeline, classifier, args.json)
        except ModelLoadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except (AnnotateError, ImageError, FrameError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        written.add(output.resolve())
        print(f"{output}: {faces} face(s) in {count} frame(s)", file=sys.stderr)
    return 1 if failed else 0
