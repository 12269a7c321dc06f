"""The face pipeline: frame -> faces with landmarks, the 48x48 crop and the landmark features.

Detection finds new faces; between detections a face is followed from its previous
landmarks (MediaPipe's tracking ROI), which is cheaper and steadier. Both can report their stages' milliseconds
separately: ``detect`` (the face detector) and ``landmarks`` (Face Mesh, the crop and the landmark features).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np

from edge_app.face_detection import Detection, FaceDetector
from edge_app.face_mesh import NUM_LANDMARKS, FaceMesh, Roi, roi_from_detection, roi_from_landmarks
from edge_app.preprocess import CROP_SIZE, CropSpec, crop_face, eye_centres, landmark_features

# A 48x48 training face is upscaled for Face Mesh, and given a replicated border: FER-2013 faces fill the
# frame, and the detector finds more of them with some context around them (95% instead of 90%).
SMALL_FACE_UPSCALE = 192
SMALL_FACE_BORDER = 64


@dataclass
class Face:
    """One face in a frame. ``landmarks`` and ``crop`` stay on the device: nothing publishes them."""

    box: np.ndarray  # x0, y0, x1, y1 in pixels
    score: float  # detection score, or landmark presence score when followed
    landmarks: np.ndarray | None  # (468, 3) pixels, None when Face Mesh found none
    crop: np.ndarray  # (48, 48) uint8
    features: np.ndarray  # (LANDMARK_FEATURES,) float32

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])


class FrameError(ValueError):
    """A frame that cannot be turned into an 8-bit RGB image."""


def as_rgb8(frame: np.ndarray | None, *, bgr: bool = False) -> np.ndarray:
    """Any camera/image array as contiguous HxWx3 uint8 RGB; ``FrameError`` says why not.

    Accepts grayscale, 3 or 4 channels, 8- or 16-bit and float in [0, 1].
    """
    if frame is None:
        raise FrameError("frame is None")
    frame = np.asarray(frame)
    if frame.ndim not in (2, 3) or frame.size == 0 or min(frame.shape[:2]) < 1:
        raise FrameError(f"frame has shape {frame.shape}, expected HxW or HxWxC")
    if frame.ndim == 3 and frame.shape[2] not in (1, 3, 4):
        raise FrameError(f"frame has {frame.shape[2]} channels, expected 1, 3 or 4")
    if frame.dtype == np.uint16:
        frame = (frame >> 8).astype(np.uint8)
    elif frame.dtype.kind == "f":
        frame = np.clip(np.nan_to_num(frame) * 255.0, 0, 255).astype(np.uint8)
    elif frame.dtype != np.uint8:
        raise FrameError(f"frame has dtype {frame.dtype}, expected uint8, uint16 or float")
    if frame.ndim == 2 or frame.shape[2] == 1:
        return np.ascontiguousarray(cv2.cvtColor(frame.reshape(frame.shape[:2]), cv2.COLOR_GRAY2RGB))
    if frame.shape[2] == 4:
        return np.ascontiguousarray(cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB))
    # cvtColor, not frame[:, :, ::-1]: numpy's reversed-stride copy costs ~10x more (3 ms for 640x480 on one core).
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if bgr else np.ascontiguousarray(frame)


def small_face_frame(gray: np.ndarray) -> np.ndarray:
    """A 48x48 grayscale training face as an RGB frame the detector can read: upscaled, with a replicated border.

    The landmark cache measures training faces in this frame, and the conversion gate runs the whole device path on it.
    """
    big = cv2.resize(gray, (SMALL_FACE_UPSCALE, SMALL_FACE_UPSCALE), interpolation=cv2.INTER_CUBIC)
    border = SMALL_FACE_BORDER
    big = cv2.copyMakeBorder(big, border, border, border, border, cv2.BORDER_REPLICATE)
    return cv2.cvtColor(big, cv2.COLOR_GRAY2RGB)


def _add_ms(ms: dict[str, float] | None, stage: str, since: float) -> float:
    """Add the milliseconds since ``since`` to ``ms[stage]`` (when ``ms`` is given); return now."""
    now = time.perf_counter()
    if ms is not None:
        ms[stage] = ms.get(stage, 0.0) + (now - since) * 1000.0
    return now


class FacePipeline:
    """Detect or follow faces and prepare the emotion model's inputs for each."""

    def __init__(
        self,
        crop_spec: CropSpec,
        *,
        min_detection_score: float = 0.5,
        min_landmark_score: float = 0.5,
        min_face_px: int = 24,
        max_faces: int = 10,
        num_threads: int = 1,
    ):
        self.crop_spec = crop_spec
        self.detector = FaceDetector(min_score=min_detection_score, num_threads=num_threads)
        self.mesh = FaceMesh(num_threads=num_threads)
        self.min_landmark_score = min_landmark_score
        self.min_face_px = min_face_px
        self.max_faces = max_faces

    def detect(self, rgb: np.ndarray, ms: dict[str, float] | None = None) -> list[Face]:
        """Faces found by the detector, largest first, at most ``max_faces``, none under ``min_face_px``.

        ``ms``, when given, has the milliseconds of ``detect`` and ``landmarks`` added to what it holds.
        """
        return self.detect_counting_skipped(rgb, ms)[0]

    def detect_counting_skipped(self, rgb: np.ndarray, ms: dict[str, float] | None = None) -> tuple[list[Face], int]:
        """``detect``'s faces and how many detections it left out (under ``min_face_px``, beyond ``max_faces``)."""
        start = time.perf_counter()
        found_by_detector = self.detector(rgb)
        detections = sorted((d for d in found_by_detector if d.width >= self.min_face_px), key=lambda d: -d.width)
        skipped = len(found_by_detector) - min(len(detections), self.max_faces)
        start = _add_ms(ms, "detect", start)
        faces = (self._face(rgb, roi_from_detection(d), d) for d in detections[: self.max_faces])
        found = [f for f in faces if f is not None]
        _add_ms(ms, "landmarks", start)
        return found, skipped

    def follow(self, rgb: np.ndarray, previous: list[Face], ms: dict[str, float] | None = None) -> list[Face | None]:
        """Each previous face re-measured from its landmarks; None where it was lost.

        ``ms``, when given, has the milliseconds of ``landmarks`` added to what it holds.
        """
        start = time.perf_counter()
        followed: list[Face | None] = []
        for face in previous:
            if face.landmarks is None:
                followed.append(None)
                continue
            found = self._face(rgb, roi_from_landmarks(face.landmarks), None)
            followed.append(found if found is not None and found.width >= self.min_face_px else None)
        _add_ms(ms, "landmarks", start)
        return followed

    def small_face_landmarks(self, gray: np.ndarray) -> np.ndarray:
        """Landmarks (468, 3) of an already cropped 48x48 face, in its pixels; NaN where none were found.

        Training (the landmark cache) and ``edge-emotion check`` both measure FER-2013 faces with this.
        """
        faces = self.detect(small_face_frame(gray))
        if not faces or faces[0].landmarks is None:
            return np.full((NUM_LANDMARKS, 3), np.nan, np.float32)
        points = faces[0].landmarks.copy()
        points[:, :2] -= SMALL_FACE_BORDER
        return points * (CROP_SIZE / SMALL_FACE_UPSCALE)

    def _face(self, rgb: np.ndarray, roi: Roi, detection: Detection | None) -> Face | None:
        """The face in ``roi``; without landmarks it is framed from the detection's eyes, or None."""
        landmarks, presence = self.mesh(rgb, roi)
        if presence >= self.min_landmark_score and np.all(np.isfinite(landmarks)):
            right, left = eye_centres(landmarks)
            box = np.concatenate([landmarks[:, :2].min(0), landmarks[:, :2].max(0)])
            score = detection.score if detection is not None else presence
        else:
            if detection is None:
                return None
            landmarks = None
            right, left = detection.keypoints[0], detection.keypoints[1]
            box, score = detection.box, detection.score
        crop = crop_face(rgb, right, left, self.crop_spec)
        return Face(np.asarray(box, np.float32), float(score), landmarks, crop, landmark_features(landmarks))
