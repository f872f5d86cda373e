"""Copies among the good images a threshold is set on count once.

Byte-identical copies (or the same pixels saved twice) are one draw of a good part, not
several: counted as many, they inflate n, and a conformal guarantee set on them is false. The
run is the session's tiny auto-encoder (`scored_ae_run`); the folder holds the tiny cookie set's
4 good test images (never trained on) and copies of one of them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import copy_run, good_test_folder, tiny_config
from PIL import Image

from anomaly.calibration import set_threshold
from anomaly.cli import main
from anomaly.data.files import DataError
from anomaly.runs import RunDir, RunError
from anomaly.threshold_file import guarantee_words
from anomaly.threshold_text import calibration_words


@pytest.fixture
def run(scored_ae_run, tmp_path):
    return copy_run(scored_ae_run, tmp_path / "run")


@pytest.fixture
def line(tiny_cookies, tmp_path):
    """The 4 good test cookies and 3 byte-identical copies of the first: 7 files, 4 images."""
    folder = good_test_folder(tiny_cookies, tmp_path / "line")
    first = min(folder.iterdir())
    for i in range(3):
        shutil.copy(first, folder / f"zz_copy_{i}.png")
    return folder


def test_byte_copies_count_once(run, line):
    with pytest.warns(UserWarning, match=r"3 of the 7 good images are copies") as caught:
        t = set_threshold(run, "conformal", 0.2, good_images=line)
    words = [str(w.message) for w in caught if "copies of another" in str(w.message)]
    assert len(words) == 1 and "zz_copy_0.png" in words[0]
    assert t.params["n"] == 4 and t.params["calibration"]["n"] == 4
    assert t.params["calibration"]["copies"] == 3
    assert "the 4 good images" in t.params["guarantee"]
    saved = RunDir(run).calibration()
    assert len(saved["paths"]) == len(saved["scores"]) == 4
    assert not any("zz_copy" in p for p in saved["paths"])
    t = RunDir(run).threshold()  # saved, and its numbers check out: the guarantee stands
    assert guarantee_words(t.rule, t.params) and "3 copies" in calibration_words(t)


def test_too_few_distinct_images_are_refused(run, line):
    """7 files would allow alpha 1/8; the 4 distinct ones need alpha >= 1/5."""
    before = RunDir(run).file(RunDir.THRESHOLD).read_bytes()
    with pytest.raises(DataError) as err:
        set_threshold(run, "conformal", 0.125, good_images=line)
    words = str(err.value)
    assert "needs at least 7 distinct" in words and "so 4 are distinct" in words
    assert "zz_copy_0.png" in words and "--value 0.2 or more" in words
    assert RunDir(run).file(RunDir.THRESHOLD).read_bytes() == before  # nothing saved


def test_the_same_pixels_saved_twice_count_once(run, line):
    for f in line.glob("zz_copy_*"):
        f.unlink()
    first = min(line.iterdir())
    with Image.open(first) as im:
        im.load()
        im.save(line / "zz_resaved.png", compress_level=0)  # other bytes, the same pixels
    assert (line / "zz_resaved.png").read_bytes() != first.read_bytes()
    with pytest.warns(UserWarning, match="zz_resaved.png"):
        t = set_threshold(run, "normal-quantile", 0.5, good_images=line)
    assert t.params["calibration"]["n"] == 4 and t.params["calibration"]["copies"] == 1


def test_the_cli_names_the_copies_and_counts_once(run, line, capsys):
    argv = ["threshold", "--run", str(run), "--rule", "conformal", "--good-images", str(line)]
    assert main([*argv, "--value", "0.125"]) == 2
    out, err = capsys.readouterr()
    assert "so 4 are distinct" in err and "zz_copy_0.png" in err and "guarantee" not in out
    code = main([*argv, "--value", "0.2"])
    out, err = capsys.readouterr()
    assert code == 0 and "exchangeable with the 4 good images" in out
    assert "warning:" in err and "zz_copy_0.png" in err


@pytest.fixture
def held_out_run(tiny_cookies, tmp_path):
    """A run holding out 4 good images, whose split.json records the last two as byte-identical
    (what it records of copies in train/good)."""
    from anomaly.pipeline import train_run

    run = tmp_path / "held"
    train_run(tiny_config(tiny_cookies, val_fraction=0.5), run, progress=False)
    split = json.loads((run / "split.json").read_text())
    assert len(split["val"]) == 4
    split["sha256"][-1] = split["sha256"][-2]
    (run / "split.json").write_text(json.dumps(split))
    return run


def test_held_out_copies_count_once(held_out_run):
    rd = RunDir(held_out_run)
    scores = rd.val_scores()["scores"]
    with pytest.raises(RunError, match=r"so 3 are distinct"):
        set_threshold(held_out_run, "conformal", 0.2)  # 4 would do
    with pytest.warns(UserWarning, match=r"1 of the 4 good images is a copy"):
        t = set_threshold(held_out_run, "conformal", 0.25)
    assert t.params["n"] == 3 and t.params["calibration"]["copies"] == 1
    assert t.params["calibration"]["scores"] == scores[:3]
    assert t.value == np.nextafter(max(scores[:3]), np.inf)
    t = rd.threshold()
    assert guarantee_words(t.rule, t.params)  # the numbers check out on the scores counted
    assert "(1 copy of them not counted)" in calibration_words(t)


def test_no_copies_no_change(run, tiny_cookies, tmp_path):
    folder = tmp_path / "good"
    shutil.copytree(tiny_cookies / "test" / "good", folder)
    t = set_threshold(run, "conformal", 0.2, good_images=folder)
    assert t.params["calibration"]["n"] == 4 and "copies" not in t.params["calibration"]
    t = set_threshold(run, "normal-quantile", 0.5)
    assert "copies" not in t.params["calibration"]
    assert json.loads(Path(RunDir(run).file(RunDir.CALIBRATION)).read_text())["n"] == 4
