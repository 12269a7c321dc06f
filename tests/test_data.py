"""FER-2013 loaders: the project's npz (real data), Kaggle's csv and an image-folder copy, with malformed input."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_app.dataset import TEST, TRAIN, VALIDATION, DataError, load_csv, load_dataset, load_image_folder, load_npz
from edge_app.emotions import EMOTIONS

USAGES = ("Training", "PublicTest", "PrivateTest")
FERPLUS_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"


def face(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (48, 48), dtype=np.uint8)


def pixels_text(image: np.ndarray) -> str:
    return " ".join(str(v) for v in image.ravel())


def test_csv_rows_become_faces_and_malformed_rows_are_named_and_counted(tmp_path, caplog) -> None:
    rows = ["emotion,pixels,Usage,source"]  # an extra column is tolerated
    expected = []
    for i in range(9):
        rows.append(f"{i % 7},{pixels_text(face(i))},{USAGES[i % 3]},web")
        expected.append((face(i), i % 7, i % 3))
    rows[3] = f"3,{pixels_text(face(2))[:-4]},PrivateTest,web"  # data row 2: one pixel value short
    rows.insert(5, f"9,{pixels_text(face(99))},Training,web")  # data row 4: unknown label
    rows.insert(6, f"1,{pixels_text(face(98)).replace('1', 'x', 1)},Training,web")  # data row 5: not numeric
    rows.insert(7, f"1,{pixels_text(face(97))},Holdout,web")  # data row 6: unknown usage
    del expected[2]
    path = tmp_path / "fer2013.csv"
    path.write_text("\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING, logger="edge_app.dataset"):
        data = load_csv(path)
    assert len(data) == len(expected) == 8
    for i, (image, label, split) in enumerate(expected):
        assert np.array_equal(data.images[i], image) and data.labels[i] == label and data.splits[i] == split
    assert data.images.dtype == np.uint8 and data.ferplus_votes is None
    warnings = caplog.text
    assert "row 2 (line 4)" in warnings and "2303 pixel values, expected 2304" in warnings
    assert "row 4 (line 6)" in warnings and "unknown emotion label '9'" in warnings
    assert "row 5 (line 7)" in warnings and "row 6 (line 8)" in warnings and "unknown Usage 'Holdout'" in warnings
    assert "4 malformed row(s) skipped" in warnings


def test_ferplus_votes_beside_the_csv_are_attached_row_by_row(tmp_path) -> None:
    lines = ["emotion,pixels,Usage"] + [f"{i},{pixels_text(face(i))},Training" for i in range(4)]
    lines[2] = "1,1 2 3,Training"  # data row 1 is skipped; the votes must stay aligned
    (tmp_path / "fer2013.csv").write_text("\n".join(lines) + "\n")
    votes = [[i, 0, 0, 0, 10 - i, 0, 0, 0, 0, 0] for i in range(4)]
    (tmp_path / "fer2013new.csv").write_text(
        FERPLUS_HEADER + "\n" + "\n".join(f"Training,fer{i:07d}.png," + ",".join(map(str, v))
                                          for i, v in enumerate(votes)) + "\n")
    data = load_csv(tmp_path / "fer2013.csv")
    assert data.ferplus_votes.tolist() == [votes[0], votes[2], votes[3]]
    assert data.ferplus_distribution(("neutral", "angry"))[1].tolist() == pytest.approx([0.2, 0.8])


def test_ferplus_file_of_another_length_is_ignored_with_a_warning(tmp_path, caplog) -> None:
    (tmp_path / "fer2013.csv").write_text(f"emotion,pixels,Usage\n0,{pixels_text(face(0))},Training\n")
    (tmp_path / "fer2013new.csv").write_text(FERPLUS_HEADER + "\n" + "Training,a.png,1,0,0,0,0,0,0,0,0,0\n" * 2)
    with caplog.at_level(logging.WARNING, logger="edge_app.dataset"):
        assert load_csv(tmp_path / "fer2013.csv").ferplus_votes is None
    assert "2 vote rows for 1 csv rows" in caplog.text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "header lacks"),
        (b"emotion,pixels,Usage\n", "no usable rows"),
        (b"emotion,pixels,Usage\n7,1 2 3,Training\n12,,PublicTest\n", "no usable rows"),
        (b"a,b,c\n1,2,3\n", "header lacks ['emotion', 'pixels', 'usage']"),
        (bytes(range(256)) * 8, "cannot read as a csv file"),
    ],
)
def test_unusable_csv_files_are_data_errors(tmp_path, content, message) -> None:
    path = tmp_path / "fer2013.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(message)):
        load_dataset(path)


def write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


def test_image_folder_with_mixed_case_classes_and_a_stratified_holdout(tmp_path, caplog) -> None:
    for i in range(20):
        write_png(tmp_path / "train" / "Angry" / f"{i:03d}.png", face(i))
        write_png(tmp_path / "train" / "happy" / f"{i:03d}.PNG", face(100 + i))
    for i in range(10):
        write_png(tmp_path / "train" / "NEUTRAL" / f"{i:03d}.jpg", cv2.resize(face(200 + i), (96, 96)))
    write_png(tmp_path / "Test" / "angry" / "a.png", face(300))
    write_png(tmp_path / "test" / "5" / "b.jpeg", face(301))  # a FER-2013 label as the folder name
    write_png(tmp_path / "test" / "grumpy" / "c.png", face(302))  # not a class: skipped with a warning
    (tmp_path / "Test" / "angry" / "broken.png").write_bytes(b"not an image")
    write_png(tmp_path / "Test" / "angry" / "cut.png", face(303))
    cut = tmp_path / "Test" / "angry" / "cut.png"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # truncated: must not become a half-grey face
    (tmp_path / "train" / "happy" / "notes.txt").write_text("ignored")
    with caplog.at_level(logging.WARNING, logger="edge_app.dataset"):
        data = load_image_folder(tmp_path)
    assert data.images.shape == (52, 48, 48) and data.images.dtype == np.uint8
    counts = {(EMOTIONS[label], split): int(((data.labels == label) & (data.splits == split)).sum())
              for label in range(7) for split in (TRAIN, VALIDATION, TEST)}
    assert counts[("angry", TRAIN)] == 18 and counts[("angry", VALIDATION)] == 2
    assert counts[("happy", TRAIN)] == 18 and counts[("happy", VALIDATION)] == 2
    assert counts[("neutral", TRAIN)] == 9 and counts[("neutral", VALIDATION)] == 1
    assert counts[("angry", TEST)] == 1 and counts[("surprise", TEST)] == 1
    angry = data.images[data.labels == EMOTIONS.index("angry")]
    assert any(np.array_equal(image, face(0)) for image in angry)  # PNG pixels kept exactly
    assert "broken.png: not an image" in caplog.text and "cut.png: truncated image" in caplog.text
    assert "2 malformed image(s) skipped" in caplog.text
    assert "grumpy: not an emotion class folder" in caplog.text
    again = load_image_folder(tmp_path)
    assert np.array_equal(again.splits, data.splits), "the hold-out is seeded"


def test_image_folder_with_a_validation_folder_keeps_train_whole(tmp_path) -> None:
    for i in range(10):
        write_png(tmp_path / "train" / "sad" / f"{i}.png", face(i))
    write_png(tmp_path / "validation" / "Sad" / "v.png", face(50))
    write_png(tmp_path / "test" / "sad" / "t.png", face(51))
    data = load_dataset(tmp_path)
    assert [int((data.splits == s).sum()) for s in (TRAIN, VALIDATION, TEST)] == [10, 1, 1]
    assert np.array_equal(data.split("validation").images[0], face(50))


def test_unusable_image_folders_are_data_errors(tmp_path) -> None:
    with pytest.raises(DataError, match="no split folders"):
        load_image_folder(tmp_path)
    (tmp_path / "train" / "happy").mkdir(parents=True)
    (tmp_path / "train" / "happy" / "x.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="no usable images"):
        load_image_folder(tmp_path)


def test_load_dataset_refuses_unknown_and_missing_paths(tmp_path) -> None:
    with pytest.raises(DataError, match="no such file or directory"):
        load_dataset(tmp_path / "missing.npz")
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(DataError, match="unknown data format"):
        load_dataset(tmp_path / "data.txt")
    (tmp_path / "fer2013.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable npz file"):
        load_dataset(tmp_path / "fer2013.npz")


def test_real_npz_has_the_published_split_sizes_and_class_counts(fer_data_path) -> None:
    data = load_npz(fer_data_path)
    assert len(data) == 35887 and data.images.shape[1:] == (48, 48)
    expected = {
        "train": [3995, 436, 4097, 7215, 4830, 3171, 4965],
        "validation": [467, 56, 496, 895, 653, 415, 607],
        "test": [491, 55, 528, 879, 594, 416, 626],
    }
    for split, counts in expected.items():
        part = data.split(split)
        assert len(part) == sum(counts) == {"train": 28709, "validation": 3589, "test": 3589}[split]
        assert np.bincount(part.labels, minlength=7).tolist() == counts
    assert data.ferplus_votes is not None and data.ferplus_votes.shape == (35887, 10)


def test_csv_written_from_the_real_npz_loads_back_identically(fer_data_path, tmp_path) -> None:
    """The csv loader and its FER+ alignment on real rows: the first PublicTest rows and their neighbours."""
    data = load_npz(fer_data_path)
    rows = np.r_[0:40, 28700:28720, 32290:32310]
    ferplus = fer_data_path.parent / "ferplus" / "fer2013new.csv"
    if not ferplus.is_file():
        pytest.skip(f"FER+ votes not found at {ferplus}")
    ferplus_lines = ferplus.read_text().splitlines()
    lines = ["emotion,pixels,Usage"] + [f"{data.labels[i]},{pixels_text(data.images[i])},{USAGES[data.splits[i]]}"
                                        for i in rows]
    (tmp_path / "fer2013.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "fer2013new.csv").write_text("\n".join([ferplus_lines[0], *(ferplus_lines[i + 1] for i in rows)]))
    loaded = load_dataset(tmp_path / "fer2013.csv")
    subset = data.select(np.isin(np.arange(len(data)), rows))
    assert loaded.fingerprint() == subset.fingerprint()
    assert np.array_equal(loaded.ferplus_votes, subset.ferplus_votes)
    assert [int((loaded.splits == s).sum()) for s in (TRAIN, VALIDATION, TEST)] == [49, 19, 12]

