"""The face pipeline: frame -> faces with landmarks, the 48x48 crop and the landmark features.

Detection finds new faces; between detections a face is followed from its previous
landmarks (MediaPipe's tracking ROI), which is cheaper and steadier. Both can report their stages' milliseconds
separately: ``detect`` (the face detector) and ``landmarks`` (Face Mesh, the crop and the landmark features).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from edge_app.config import AppConfig
from edge_app.pipeline.detect import Detection, FaceDetector
from edge_app.pipeline.geometry import iou_matrix
from edge_app.pipeline.landmarks import NUM_LANDMARKS, FaceMesh, Roi, roi_from_detection, roi_from_landmarks
from edge_app.pipeline.preprocess import CROP_SIZE, CropSpec, crop_face, eye_centres, landmark_features

log = logging.getLogger(__name__)

# A 48x48 training face is upscaled for Face Mesh, and given a replicated border: FER-2013 faces fill the
# frame, and the detector finds more of them with some context around them (95% instead of 90%).
SMALL_FACE_UPSCALE = 192
SMALL_FACE_BORDER = 64
# A detection overlapping a followed face this much (IoU of the detector's box and the landmarks' box) is that face.
MERGE_IOU = 0.3


@dataclass
class Face:
    """One face in a frame. ``landmarks`` and ``crop`` stay on the device: nothing publishes them."""

    box: np.ndarray  # x0, y0, x1, y1 in pixels
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


def _covered(box: np.ndarray, faces: Sequence[Face | None]) -> bool:
    """Whether ``box`` is one of ``faces`` already (IoU at least ``MERGE_IOU`` with one of their boxes)."""
    boxes = [face.box for face in faces if face is not None]
    return bool(boxes) and bool(iou_matrix(np.asarray(box)[None], np.stack(boxes)).max() >= MERGE_IOU)


class FacePipeline:
    """Detect or follow faces and prepare the emotion model's inputs for each.

    ``delegate`` runs BlazeFace and Face Mesh: ``gpu`` runs both on the GPU delegate (each falls back to the CPU
    on its own if the delegate refuses it); the Edge TPU runs only compiled int8 models, so with ``edgetpu`` both
    stay on the CPU (said once, here). ``delegates`` says where each runs.
    """

    def __init__(
        self,
        crop_spec: CropSpec,
        *,
        min_detection_score: float,
        min_landmark_score: float,
        min_face_px: int,
        max_faces: int,
        num_threads: int = 1,
        delegate: str = "cpu",
    ):
        self.crop_spec = crop_spec
        if delegate == "edgetpu":
            log.info("the Edge TPU runs only the emotion classifier: the face detector and Face Mesh stay on the CPU")
            delegate = "cpu"
        self.detector = FaceDetector(min_score=min_detection_score, num_threads=num_threads, delegate=delegate)
        self.mesh = FaceMesh(num_threads=num_threads, delegate=delegate)
        self.min_landmark_score = min_landmark_score
        self.min_face_px = min_face_px
        self.max_faces = max_faces

    @classmethod
    def from_config(cls, config: AppConfig, crop_spec: CropSpec, *, max_faces: int | None = None,
                    delegate: str | None = None) -> FacePipeline:
        """The device's pipeline as ``detection`` and ``runtime`` set it; ``max_faces`` and ``delegate`` override
        the config's."""
        detection = config.detection
        return cls(crop_spec, min_detection_score=detection.min_score, min_landmark_score=detection.min_landmark_score,
                   min_face_px=detection.min_face_px, max_faces=max_faces or detection.max_faces,
                   num_threads=config.runtime.num_threads, delegate=delegate or config.runtime.delegate)

    @classmethod
    def for_small_faces(cls, crop_spec: CropSpec) -> FacePipeline:
        """For ``small_face_landmarks``: one 48x48 face at a time, any size, MediaPipe's default score thresholds."""
        return cls(crop_spec, min_detection_score=0.5, min_landmark_score=0.5, min_face_px=0, max_faces=1)

    @property
    def delegates(self) -> dict[str, str]:
        """Where each network runs: ``{"detector": ..., "landmarks": ...}`` (``cpu``, ``gpu``)."""
        return {"detector": self.detector.model.delegate_in_use, "landmarks": self.mesh.model.delegate_in_use}

    def detect(self, rgb: np.ndarray, ms: dict[str, float] | None = None) -> list[Face]:
        """Faces found by the detector, largest first, at most ``max_faces``, none under ``min_face_px``.

        ``ms``, when given, has the milliseconds of ``detect`` and ``landmarks`` added to what it holds.
        """
        return self.detect_counting_skipped(rgb, ms)[0]

    def detect_counting_skipped(
        self, rgb: np.ndarray, ms: dict[str, float] | None = None, followed: Sequence[Face] = ()
    ) -> tuple[list[Face], int]:
        """The ``followed`` faces, then the detector's new ones, and how many detections were left out.

        A detection that overlaps a followed face (IoU >= ``MERGE_IOU``) is that face, already measured: it is not
        measured again, so a face keeps its place (and its track) whether or not the detector sees it in this frame,
        as in MediaPipe's face landmarker. New faces fill the room ``max_faces`` leaves, largest first; the ones under
        ``min_face_px`` or beyond that room are counted as left out.
        """
        start = time.perf_counter()
        found_by_detector = self.detector(rgb)
        sized = [d for d in found_by_detector if d.width >= self.min_face_px]
        unseen = [d for d in sized if not _covered(d.box, followed)]
        new = sorted(unseen, key=lambda d: -d.width)[: max(self.max_faces - len(followed), 0)]
        skipped = len(found_by_detector) - (len(sized) - len(unseen)) - len(new)
        start = _add_ms(ms, "detect", start)
        faces = (self._face(rgb, roi_from_detection(d), d) for d in new)
        found = [*followed, *(f for f in faces if f is not None)]
        _add_ms(ms, "landmarks", start)
        return found, skipped

    def follow(self, rgb: np.ndarray, previous: list[Face], ms: dict[str, float] | None = None) -> list[Face | None]:
        """Each previous face re-measured from its landmarks; None where it was lost or became another's.

        ``ms``, when given, has the milliseconds of ``landmarks`` added to what it holds.
        """
        start = time.perf_counter()
        followed: list[Face | None] = []
        for face in previous:
            if face.landmarks is None:
                followed.append(None)
                continue
            found = self._face(rgb, roi_from_landmarks(face.landmarks), None)
            if found is not None and (found.width < self.min_face_px or _covered(found.box, followed)):
                found = None  # too small now, or the same face as one followed already (two tracks converged)
            followed.append(found)
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
        else:
            if detection is None:
                return None
            landmarks = None
            right, left = detection.keypoints[0], detection.keypoints[1]
            box = detection.box
        crop = crop_face(rgb, right, left, self.crop_spec)
        return Face(np.asarray(box, np.float32), landmarks, crop, landmark_features(landmarks))
