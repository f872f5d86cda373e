"""Folders and files named otherwise than the layouts read them (`anomaly.data.layout_names`):
loose masks, mask folders in a defect kind's place, good folders named close to good/, two
images of one stem, and a folder entry that is no regular file, each named with its fix."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly.data import AnomalyDataset, DataError
from anomaly.data.layout_names import good_name_word, name_words

S = 32


def _image(path: Path, seed: int) -> None:
    a = np.random.default_rng(seed).integers(0, 256, (S, S, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


def _mask(path: Path) -> None:
    m = np.zeros((S, S), np.uint8)
    m[8:16, 8:16] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(m).save(path)


def _plain(root: Path, masks: str | None = "masks/scratch") -> Path:
    """ROOT/good/ (5 images), ROOT/scratch/s_0..2.png, their masks in ROOT/`masks`/."""
    for i in range(5):
        _image(root / "good" / f"g_{i}.png", i)
    for i in range(3):
        _image(root / "scratch" / f"s_{i}.png", 10 + i)
        if masks is not None:
            _mask(root / masks / f"s_{i}_mask.png")
    return root


def _said(root: Path, split: str = "test") -> tuple[AnomalyDataset, str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = AnomalyDataset(root, split, size=S)
    return data, "\n".join(str(w.message) for w in caught)


# --- 1. masks directly in masks/ or ground_truth/ -----------------------------------------------


@pytest.mark.parametrize("folder", ["masks", "ground_truth"])
def test_loose_masks_in_the_plain_layout_are_named_with_their_folder(tmp_path, folder):
    root = _plain(tmp_path / "d", masks=folder)  # masks/s_0_mask.png, no scratch/ folder
    data, said = _said(root)
    assert not data.has_masks  # not read, as before, but now said
    assert re.search(r"s_0_mask.png, s_1_mask.png, s_2_mask.png lie directly in", said), said
    assert f"Move them into {root / folder / 'scratch'}/" in said


def test_loose_masks_in_the_mvtec_layout_are_named(tmp_path):
    root = tmp_path / "mv"
    for i in range(3):
        _image(root / "train/good" / f"{i}.png", i)
        _image(root / "test/good" / f"{i}.png", 5 + i)
        _image(root / "test/crack" / f"{i:03d}.png", 10 + i)
    _mask(root / "ground_truth/000_mask.png")
    _mask(root / "ground_truth/crack/001_mask.png")  # one read, one loose
    data, said = _said(root)
    assert sum(s.mask_path is not None for s in data.samples) == 1
    assert "000_mask.png lies directly in ground_truth/ and is not read" in said
    assert f"Move it into {root / 'ground_truth' / 'crack'}/" in said


# --- 2. a folder of masks in a defect kind's place ----------------------------------------------


def test_a_mask_folder_of_mask_files_is_refused_not_scored(tmp_path):
    root = _plain(tmp_path / "d", masks="mask")  # mask/s_0_mask.png: was a defect kind
    with pytest.raises(DataError, match="looks like a folder of masks") as e:
        AnomalyDataset(root, "test", size=S)
    assert str(root / "mask") in str(e.value) and f"{root / 'masks' / 'scratch'}/" in str(e.value)


def test_a_mask_folder_with_kind_folders_is_refused_with_the_right_fix(tmp_path):
    root = _plain(tmp_path / "d", masks="mask/scratch")
    with pytest.raises(DataError, match="looks like a folder of masks") as e:
        AnomalyDataset(root, "test", size=S)
    assert "move their images up" not in str(e.value)
    assert f"move its folders into {root / 'masks'}/" in str(e.value)


def test_a_gt_folder_of_black_and_white_images_is_refused_but_a_label_kind_is_read(tmp_path):
    root = _plain(tmp_path / "d", masks=None)
    for i in range(3):
        _mask(root / "gt" / f"s_{i}.png")  # <stem>.png masks under another name
    with pytest.raises(DataError, match=r"named gt/ and its images are black-and-white"):
        AnomalyDataset(root, "test", size=S)
    (root / "gt").rename(root / "labels")
    with pytest.raises(DataError, match="labels/ and its images"):
        AnomalyDataset(root, "test", size=S)
    _image(root / "labels" / "s_1.png", 99)  # a defect kind "labels" (misprints): photos
    data, _ = _said(root)
    assert data.counts()["labels"] == 3
    for i in range(3):
        _image(root / "labels" / f"s_{i}.png", 20 + i)
    data, _ = _said(root)
    assert data.counts() == {"good": 1, "labels": 3, "scratch": 3}


def test_masks_beside_their_defect_images_are_refused(tmp_path):
    root = _plain(tmp_path / "d", masks=None)
    _mask(root / "scratch" / "s_1_mask.png")
    with pytest.raises(DataError, match=r"s_1_mask.png \(mask of s_1.png\?\)") as e:
        AnomalyDataset(root, "test", size=S)
    assert f"{root / 'masks' / 'scratch'}/" in str(e.value)


# --- 3. good images in a folder named close to good/ --------------------------------------------

GOODISH = ["good2", "good copy", "good_batch2", "OK_parts", "normal_images", "goodParts",
           "Defect-Free parts", "no_defects", "Pass-2"]  # fmt: skip
DEFECT_KINDS = ["not_ok", "no_good", "NG", "good_but_scratched", "ok_with_dent", "bad_ok",
                "okey", "goodness", "abnormal", "pass_through_hole", "clean_room_dust",
                "normal_wear", "print_ok_mismatch", "clean_cut_missing"]  # fmt: skip


@pytest.mark.parametrize("name", GOODISH)
def test_a_good_folder_named_close_to_good_is_refused_with_the_rename(tmp_path, name):
    root = _plain(tmp_path / "d")
    for i in range(2):
        _image(root / name / f"x_{i}.png", 30 + i)
    with pytest.raises(DataError, match=re.escape(f"{name}/ would be read as a defect kind")) as e:
        AnomalyDataset(root, "test", size=S)
    assert f"Rename it to {root / 'good'}" in str(e.value)


@pytest.mark.parametrize("name", DEFECT_KINDS)
def test_a_defect_kind_that_says_what_is_wrong_is_read(tmp_path, name):
    root = _plain(tmp_path / "d")
    for i in range(2):
        _image(root / name / f"x_{i}.png", 30 + i)
    data, _ = _said(root)
    assert data.counts()[name] == 2


def test_good_words_in_a_name():
    assert name_words("OK_parts2") == ["ok", "parts"]
    assert name_words("goodParts") == ["good", "parts"]
    assert name_words("Defect-Free") == ["defectfree"]
    assert good_name_word("good") is None and good_name_word("scratch") is None
    assert good_name_word("no defect") == "nodefect" and good_name_word("not_ok") is None


def test_an_mvtec_good_folder_named_close_to_good_is_refused(tmp_path):
    root = tmp_path / "mv"
    for i in range(2):
        _image(root / "train/good" / f"{i}.png", i)
        _image(root / "train/good_2" / f"{i}.png", 5 + i)
    with pytest.raises(DataError, match=re.escape("good_2/ would be read as a defect kind")):
        AnomalyDataset(root, "train", size=S)


# --- 4. two images of one stem -------------------------------------------------------------------


def test_two_images_of_one_stem_are_refused_when_masks_are_matched(tmp_path):
    root = _plain(tmp_path / "d")
    Image.open(root / "scratch/s_0.png").convert("RGB").save(root / "scratch/s_0.jpg")
    with pytest.raises(DataError, match=r"s_0.jpg and s_0.png have one name") as e:
        AnomalyDataset(root, "test", size=S)
    assert str(root / "scratch") in str(e.value) and "Rename one" in str(e.value)
    # no masks in the data set: nothing is matched by stem, both are read
    (root / "masks").rename(tmp_path / "elsewhere")
    data, _ = _said(root)
    assert data.counts() == {"good": 1, "scratch": 4}


# --- 5. a folder entry that is no regular file ---------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need a POSIX system")
def test_a_named_pipe_among_the_images_is_named_as_not_a_regular_file(tmp_path):
    root = _plain(tmp_path / "d", masks=None)
    os.mkfifo(root / "good" / "camera_pipe.png")
    _, said = _said(root, "train")
    assert "camera_pipe.png" in said and "not a regular file" in said
    assert "of a type not read" not in said


def test_a_black_and_white_data_set_keeps_a_defect_kind_named_like_masks(tmp_path):
    """Session 28's review: a data set of black-and-white images (scanned prints) with a defect
    kind `label_missing` was refused as a folder of masks."""
    root = tmp_path / "bw"
    for i in range(5):
        _mask(root / "good" / f"g_{i}.png")
    for i in range(2):
        _mask(root / "label_missing" / f"l_{i}.png")
    data, _ = _said(root)
    assert data.counts()["label_missing"] == 2


def test_one_stem_twice_in_a_kind_without_masks_is_read(tmp_path):
    """Session 28's review: two images of one stem were refused in a kind with no mask folder,
    where nothing matches by stem."""
    root = _plain(tmp_path / "d")
    _image(root / "plastic" / "p_0.png", 40)
    _image(root / "plastic" / "p_0.jpg", 41)
    data, _ = _said(root)
    assert data.counts()["plastic"] == 2


@pytest.mark.parametrize("name", ["good_backup", "good_train", "normal_front", "OK_final"])
def test_a_folder_that_may_hold_good_images_is_named_when_read_as_a_defect_kind(tmp_path, name):
    """Session 28's code review: the narrowed rule read good_backup/ or good_train/ as defect
    kinds without a word. Such a name cannot be told from a defect kind's (pass_through_hole),
    so it is read, and named."""
    root = _plain(tmp_path / "d")
    for i in range(2):
        _image(root / name / f"x_{i}.png", 30 + i)
    data, said = _said(root)
    assert data.counts()[name] == 2
    assert f"{name}/ (it says" in said and "read as defect kinds" in said
    other = _plain(tmp_path / "e")
    _image(other / "not_ok" / "x.png", 40)  # says what is wrong: read, and not named
    assert "(it says" not in _said(other)[1]
