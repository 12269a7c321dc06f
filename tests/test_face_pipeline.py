"""The numpy face pipeline agrees with MediaPipe's own solutions on real faces."""

from __future__ import annotations

import gc
import shutil
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pytest
from skimage import data, io

from edge_app.pipeline.detect import FaceDetector
from edge_app.pipeline.geometry import iou_matrix
from edge_app.pipeline.landmarks import FaceMesh, roi_from_detection, roi_from_landmarks
from edge_app.pipeline.mediapipe_assets import FACE_DETECTOR, KNOWN_SHA256, mediapipe_model, verified
from edge_app.pipeline.runtime import ModelLoadError, TFLiteModel

mp = pytest.importorskip("mediapipe", reason="mediapipe's Python API is needed to cross-check")


def _real_faces() -> dict[str, np.ndarray]:
    hopper = io.imread(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    astronaut = data.astronaut()
    return {
        "astronaut": astronaut,
        "grace_hopper": hopper,
        "cameraman": cv2.cvtColor(data.camera(), cv2.COLOR_GRAY2RGB),
        "astronaut_small": cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA),
        "hopper_mirrored": np.ascontiguousarray(hopper[:, ::-1]),
    }


FACES = _real_faces()


def _mediapipe_boxes(rgb: np.ndarray) -> list[np.ndarray]:
    h, w = rgb.shape[:2]
    with mp.solutions.face_detection.FaceDetection(model_selection=0, min_detection_confidence=0.5) as detector:
        result = detector.process(rgb)
    boxes = []
    for det in result.detections or []:
        b = det.location_data.relative_bounding_box
        boxes.append(np.array([b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h]))
    return boxes


def _mediapipe_landmarks(rgb: np.ndarray) -> list[np.ndarray]:
    h, w = rgb.shape[:2]
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=4) as mesh:
        result = mesh.process(rgb)
    return [np.array([[p.x * w, p.y * h] for p in face.landmark]) for face in result.multi_face_landmarks or []]


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.fixture(scope="module")
def mesh() -> FaceMesh:
    return FaceMesh()


@pytest.mark.parametrize("name", sorted(FACES))
def test_detection_agrees_with_mediapipe(name: str, detector: FaceDetector) -> None:
    rgb = FACES[name]
    ours = detector(rgb)
    theirs = _mediapipe_boxes(rgb)
    assert theirs, f"MediaPipe found no face in {name}: pick another image"
    assert len(ours) == len(theirs)
    for box in theirs:
        best = max(float(iou_matrix(d.box[None], box[None])[0, 0]) for d in ours)
        assert best >= 0.9, f"{name}: detection IoU {best:.3f} < 0.9"


@pytest.mark.parametrize("name", sorted(FACES))
def test_landmarks_agree_with_mediapipe(name: str, detector: FaceDetector, mesh: FaceMesh) -> None:
    rgb = FACES[name]
    theirs = _mediapipe_landmarks(rgb)
    assert theirs, f"MediaPipe found no landmarks in {name}"
    for reference in theirs:
        width = np.ptp(reference[:, 0])
        errors = []
        for det in detector(rgb):
            points, presence = mesh(rgb, roi_from_detection(det))
            assert presence > 0.5
            errors.append(np.linalg.norm(points[:, :2] - reference, axis=1).mean() / width)
        assert min(errors) <= 0.02, f"{name}: mean landmark error {min(errors):.4f} of face width > 2%"


def test_following_from_landmarks_stays_on_the_face(detector: FaceDetector, mesh: FaceMesh) -> None:
    rgb = FACES["astronaut"]
    points, _ = mesh(rgb, roi_from_detection(detector(rgb)[0]))
    for _ in range(5):  # a still face followed frame after frame must not drift
        points, presence = mesh(rgb, roi_from_landmarks(points))
    reference = _mediapipe_landmarks(rgb)[0]
    assert presence > 0.9
    assert np.linalg.norm(points[:, :2] - reference, axis=1).mean() / np.ptp(reference[:, 0]) <= 0.02


def test_two_faces_in_one_frame(detector: FaceDetector) -> None:
    left = FACES["astronaut"][40:300, 100:360]
    right = cv2.resize(FACES["grace_hopper"], (300, 352))[0:260, 20:280]
    frame = np.ascontiguousarray(np.hstack([left, right]))
    found = detector(frame)
    assert len(found) == len(_mediapipe_boxes(frame)) == 2
    assert sorted(bool(d.box[0] < 260) for d in found) == [False, True]


def test_no_face_in_a_blank_frame(detector: FaceDetector) -> None:
    assert detector(np.zeros((240, 320, 3), np.uint8)) == []
    assert detector(np.full((240, 320, 3), 255, np.uint8)) == []


def test_model_with_another_hash_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "face_detection_short_range.tflite"
    shutil.copy(mediapipe_model(FACE_DETECTOR), copy)
    assert verified(copy, KNOWN_SHA256[FACE_DETECTOR]) == copy
    with open(copy, "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(ModelLoadError, match="face_detection_short_range.tflite has sha256"):
        verified(copy, KNOWN_SHA256[FACE_DETECTOR])


def test_runtime_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="model file not found: .*missing.tflite"):
        TFLiteModel(tmp_path / "missing.tflite")
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"this is not a flatbuffer" * 10)
    with pytest.raises(ModelLoadError, match="garbage.tflite"):
        TFLiteModel(garbage)


@pytest.mark.parametrize("delegate", ["edgetpu", "gpu"])
# A missing delegate library is a log line, not an "Exception ignored" traceback when objects are collected.
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_unavailable_delegate_falls_back_to_cpu(delegate: str, caplog: pytest.LogCaptureFixture) -> None:
    model = TFLiteModel(mediapipe_model(FACE_DETECTOR), delegate=delegate)
    gc.collect()
    assert model.delegate_in_use == "cpu"
    assert any("falling back to the CPU" in r.message for r in caplog.records)
    out = model({next(iter(model.inputs)): np.zeros((1, 128, 128, 3), np.float32)})
    assert out["regressors"].shape == (1, 896, 16)
