"""Face Mesh landmarks for every training image, computed once with the device's own pipeline.

``python train/landmark_cache.py [--data PATH]`` runs ``edge_app.pipeline.faces.FacePipeline`` (the
code the device runs) over each 48x48 image, upscaled to 192x192 with a replicated
border, and stores the landmarks (in 48x48 pixel coordinates) under ``cache/``, keyed by
the data fingerprint and the face models' hashes: a second run reuses the file. The
landmarks are stored as float32, the precision the device computes them at. It
also fits the crop framing (``CropSpec``) so device crops match FER-2013's, and reports
the landmark success rate per split and the framing residual.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing as mp
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_app.dataset import SPLIT_NAMES, FaceDataset, load_dataset  # noqa: E402
from edge_app.emotions import fer_label_map  # noqa: E402
from edge_app.model_card import ModelCard  # noqa: E402
from edge_app.pipeline.faces import SMALL_FACE_BORDER, SMALL_FACE_UPSCALE, FacePipeline  # noqa: E402
from edge_app.pipeline.mediapipe_assets import FACE_DETECTOR, FACE_LANDMARKER, KNOWN_SHA256  # noqa: E402
from edge_app.pipeline.preprocess import CROP_SIZE, CropSpec, crop_landmarks, eye_centres, landmark_features  # noqa: E402

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: float32 landmarks (1 rounded them to float16)
DEFAULT_CACHE_DIR = ROOT / "cache"

_pipeline: FacePipeline | None = None


def _landmarks_of(image: np.ndarray) -> np.ndarray:
    """One worker's call: the pipeline (its TFLite interpreters) is made once per process."""
    global _pipeline
    if _pipeline is None:
        # Only landmarks are cached: the crop framing is what fit_crop_spec() measures from them afterwards.
        _pipeline = FacePipeline.for_small_faces(CropSpec(size_iod=2.6, centre_below_eyes_iod=0.45))
    return _pipeline.small_face_landmarks(image)


def cache_path(dataset: FaceDataset, cache_dir: Path) -> Path:
    key = hashlib.sha256(
        f"{dataset.fingerprint()}|{KNOWN_SHA256[FACE_DETECTOR]}|{KNOWN_SHA256[FACE_LANDMARKER]}|"
        f"{SMALL_FACE_UPSCALE}|{SMALL_FACE_BORDER}|{CACHE_VERSION}".encode()
    ).hexdigest()[:16]
    return cache_dir / f"landmarks-{key}.npz"


def compute_landmarks(dataset: FaceDataset, workers: int = 2) -> np.ndarray:
    with mp.get_context("fork").Pool(workers) as pool:
        results = list(
            tqdm(pool.imap(_landmarks_of, dataset.images, chunksize=64), total=len(dataset), desc="landmarks")
        )
    return np.stack(results).astype(np.float32)


def load_or_compute(dataset: FaceDataset, cache_dir: Path = DEFAULT_CACHE_DIR, workers: int = 2) -> np.ndarray:
    """Landmarks (N, 468, 3) for ``dataset`` (NaN rows where none), from the cache when it matches."""
    path = cache_path(dataset, cache_dir)
    if path.is_file():
        with np.load(path) as cached:
            if len(cached["landmarks"]) == len(dataset):
                log.info("landmark cache hit: %s", path)
                return cached["landmarks"].astype(np.float32)
    landmarks = compute_landmarks(dataset, workers)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, landmarks=landmarks)
    log.info("landmark cache written: %s", path)
    return landmarks


def training_card_path(model_path: Path) -> Path:
    """The card beside a Keras model: ``<stem>.card.json`` (``model.keras`` -> ``model.card.json``)."""
    return model_path.with_name(model_path.stem + ".card.json")


def recorded_path(path: Path) -> str:
    """A model's path as reports record it: relative to the checkout when inside it (no machine's folders)."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(path)


def load_with_features(data_path: str | Path, cache_dir: Path, card: ModelCard) -> tuple[FaceDataset, np.ndarray]:
    """The dataset restricted to the card's classes and its landmark features, computed as in training."""
    full = load_dataset(data_path)
    if card.training.get("data_sha256") not in (None, full.fingerprint()):
        log.warning("%s is not the data this model was trained on (fingerprint differs from the card)", data_path)
    features = features_from_landmarks(load_or_compute(full, cache_dir))
    keep = fer_label_map(card.classes)[full.labels] >= 0
    return full.with_classes(tuple(card.classes)), features[keep]


def features_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """The model's landmark input for each row (zeros + flag 0 where no landmarks)."""
    return np.stack([landmark_features(None if np.isnan(lm).any() else lm) for lm in landmarks])


def fit_crop_spec(landmarks: np.ndarray) -> tuple[CropSpec, dict[str, float]]:
    """Crop framing (relative to the eyes) that reproduces FER-2013's framing, and its residual.

    The residual is the mean distance, in 48x48 pixels, between the mean landmark layout of
    the FER-2013 images and the mean layout inside device crops framed with the fitted spec.
    """
    found = ~np.isnan(landmarks).any(axis=(1, 2))
    sizes, offsets = [], []
    for lm in landmarks[found]:
        right, left = eye_centres(lm)
        mid, delta = (right + left) / 2, left - right
        iod, roll = float(np.hypot(*delta)), float(np.arctan2(delta[1], delta[0]))
        to_centre = np.array([CROP_SIZE / 2, CROP_SIZE / 2]) - mid
        below = -np.sin(roll) * to_centre[0] + np.cos(roll) * to_centre[1]
        sizes.append(CROP_SIZE / iod)
        offsets.append(below / iod)
    spec = CropSpec(
        size_iod=round(float(np.median(sizes)), 4), centre_below_eyes_iod=round(float(np.median(offsets)), 4)
    )
    fer_layout = landmarks[found][:, :, :2].mean(0)
    crop_layout = np.mean([crop_landmarks(lm, spec) for lm in landmarks[found]], axis=0)
    residual = float(np.linalg.norm(fer_layout - crop_layout, axis=1).mean())
    return spec, {"mean_landmark_residual_px": round(residual, 3), "faces_used": int(found.sum())}


def success_rates(dataset: FaceDataset, landmarks: np.ndarray) -> dict[str, float]:
    found = ~np.isnan(landmarks).any(axis=(1, 2))
    rates = {name: round(float(found[dataset.splits == code].mean()), 4) for name, code in SPLIT_NAMES.items()}
    rates["all"] = round(float(found.mean()), 4)
    return rates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "fer2013.npz"))
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    dataset = load_dataset(args.data)
    landmarks = load_or_compute(dataset, Path(args.cache_dir), args.workers)
    spec, fit = fit_crop_spec(landmarks[dataset.splits == SPLIT_NAMES["train"]])
    print(json.dumps({"success_rate": success_rates(dataset, landmarks), "crop_spec": spec.to_dict(), **fit}))


if __name__ == "__main__":
    main()
