"""Input the data folder gives without a word where it should say something: a TIFF of several
pages read as one, training images unlike each other, defective images without their mask, a
test folder that is a broken link, masks of good images, and a warning repeated per worker."""

from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_config
from PIL import Image

from anomaly.cli import main
from anomaly.data.files import DataError
from anomaly.data.folder import AnomalyDataset, read_image
from anomaly.data.image_unlike import warn_mixed
from anomaly.pipeline import train_run


def _grey(value: int, size: tuple[int, int] = (32, 32)) -> Image.Image:
    return Image.fromarray(np.full(size[::-1], value, np.uint8))


# --- 1. a file of several images is refused, naming it ------------------------------------------
def test_a_tiff_of_several_pages_is_refused_and_a_thumbnail_page_is_not(tmp_path: Path) -> None:
    stack = tmp_path / "stack.tif"
    _grey(0).save(stack, save_all=True, append_images=[_grey(255)])
    with pytest.raises(DataError, match=r"stack.tif: a TIFF of 2 pages .*Save the page you mean"):
        read_image(stack)
    thumb = tmp_path / "thumb.tif"  # its second page a reduced-resolution copy: read as before
    _grey(200).save(thumb, save_all=True, append_images=[_grey(0, (8, 8))])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = read_image(thumb)
    assert a.shape == (32, 32, 1) and np.allclose(a, 200 / 255)


# --- 2. train names training images unlike the others ---------------------------------------------
def _training_copy(tiny_cookies: Path, dest: Path) -> Path:
    shutil.copytree(tiny_cookies, dest)
    return dest / "train" / "good"


def test_train_names_training_images_unlike_the_others(tiny_cookies: Path, tmp_path: Path):
    good = _training_copy(tiny_cookies, tmp_path / "d")
    first = min(good.glob("*.png"))
    grey = np.asarray(Image.open(first).convert("L")).astype(np.uint16) * 257
    Image.fromarray(grey).save(good / "deep.png")  # 16-bit greyscale
    Image.open(first).convert("LA").save(good / "la.png")
    Image.new("RGB", (1, 1), (200, 150, 100)).save(good / "dot.png")
    run = tmp_path / "run"
    with pytest.warns(UserWarning) as said:
        train_run(tiny_config(tmp_path / "d", "meandiff", channels=3), run, progress=False)
    texts = [str(w.message) for w in said]
    n = len(list(good.iterdir()))
    assert any(
        f"2 of the {n} training images" in t
        and "deep.png" in t
        and "la.png" in t
        and "greyscale" in t
        for t in texts
    )
    assert any("deep.png" in t and "16-bit, the others 8-bit" in t for t in texts)
    assert any("dot.png" in t and "--size 64" in t for t in texts)
    assert (run / "model.pt").is_file()  # warned, not refused
    many = [str(good / f"{i}.png") for i in range(5)]
    for p in many:
        Image.new("RGB", (8, 8)).save(p)
    Image.new("RGB", (64, 64)).save(good / "big.png")
    with pytest.warns(
        UserWarning,
        match=r"5 of the 6 training images \(.*0.png, .*1.png, "
        r".*2.png and 2 more\) have a shorter side under 32 px",
    ):
        warn_mixed(many[::-1] + [str(good / "big.png")], 3, 64)  # named in sorted order
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all small: a size chosen to enlarge them (auto's 448)
        assert warn_mixed(many, 3, 64) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the generated set: alike, nothing to say
        assert warn_mixed(sorted((tiny_cookies / "train" / "good").iterdir()), 3, 64) == []


# --- 3. a defective image without its mask is named, with where the mask goes --------------------
def test_a_defective_image_without_its_mask_is_named(tiny_cookies: Path, tmp_path: Path):
    root = tmp_path / "d"
    shutil.copytree(tiny_cookies, root)
    gt = root / "ground_truth"
    gone = min((gt / "crack").iterdir())
    gone.unlink()
    stem = gone.name.removesuffix("_mask.png")
    image = root / "test" / "crack" / f"{stem}.png"
    with pytest.warns(UserWarning, match="no mask") as said:
        ds = AnomalyDataset(root, "test", size=32)
    texts = [str(w.message) for w in said if "no mask" in str(w.message)]
    assert len(texts) == 1 and f"{image} (its mask goes in {gone})" in texts[0]
    assert texts[0].startswith(f"1 of the {int(ds.labels.sum())} defective test images")
    shutil.rmtree(gt)  # no masks at all: no pixel metrics, nothing to name
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AnomalyDataset(root, "test", size=32)


# --- 4. a test folder that is a broken link; masks of good images ---------------------------------
def test_a_test_folder_that_is_a_broken_link_is_an_error(tiny_cookies: Path, tmp_path: Path):
    root = tmp_path / "d"
    shutil.copytree(tiny_cookies, root)
    (root / "test" / "scratch").symlink_to(tmp_path / "moved")
    with pytest.raises(DataError, match=r"test/scratch: a symbolic link to .*moved, which does "):
        AnomalyDataset(root, "test", size=32)
    AnomalyDataset(root, "train", size=32)  # train/good is whole: training is not refused


def test_a_mask_that_marks_a_good_image_is_named_as_ignored(tiny_cookies: Path, tmp_path: Path):
    root = tmp_path / "d"
    shutil.copytree(tiny_cookies, root)
    good = root / "ground_truth" / "good"
    good.mkdir()
    Image.new("L", (64, 64), 0).save(good / "000_mask.png")  # all zeros: as expected
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AnomalyDataset(root, "test", size=32)
    Image.new("L", (64, 64), 255).save(good / "001_mask.png")
    with pytest.warns(UserWarning, match="ignored") as said:
        ds = AnomalyDataset(root, "test", size=32)
    text = str(said[0].message)
    assert len(said) == 1 and str(good / "001_mask.png") in text and "000_mask" not in text
    assert "move them to test/<defect>/" in text
    assert all(s.mask_path is None for s in ds.samples if s.defect == "good")


# --- 5. a warning from a decoding worker is printed once per file ---------------------------------
def test_a_sub_pixel_mask_is_named_once_with_decoding_workers(
    tiny_cookies: Path, tmp_path: Path, capfd
):
    """score --workers 2 named each mask with a defect under one model pixel twice: the progress
    bar (tqdm.auto) iterated the loader a second time, whose workers decoded the first batches
    again (twice the work, too)."""
    root = tmp_path / "d"
    shutil.copytree(tiny_cookies, root)
    specks = sorted((root / "ground_truth" / "crack").iterdir())
    for speck in specks:
        a = np.zeros(Image.open(speck).size[::-1], np.uint8)
        a[5, 5] = 255  # not a pixel nearest neighbour reads at 16 px
        Image.fromarray(a).save(speck)
    run = tmp_path / "run"
    train_run(tiny_config(root, "meandiff", size=16, batch_size=4), run, progress=False)
    capfd.readouterr()
    assert main(["score", "--run", str(run), "--workers", "2", "--no-overlays"]) == 0
    err = capfd.readouterr().err
    assert [err.count(f"{speck}: its defect") for speck in specks] == [1] * len(specks)


def test_the_onnx_path_refuses_a_tiff_stack_as_the_package_does(tmp_path: Path, monkeypatch):
    from anomaly import export
    from anomaly.export import ExportError, preprocess

    stack = tmp_path / "stack.tif"
    _grey(0).save(stack, save_all=True, append_images=[_grey(255)])
    with pytest.raises(ExportError, match=r"stack.tif: a TIFF of 2 pages .*Save the page you mean"):
        preprocess(stack, 32, 1)
    anim = tmp_path / "anim.png"  # copied without the package: animations are still refused
    _grey(0).save(anim, save_all=True, append_images=[_grey(255)])
    monkeypatch.setitem(sys.modules, "anomaly.data.image_kind", None)  # its import fails
    with pytest.raises(ExportError, match=r"anim.png: cannot read .*an animation of 2 frames"):
        preprocess(anim, 32, 1)
    with pytest.raises(ExportError, match=r"stack.tif: a TIFF of 2 pages, not one image"):
        export.preprocess(stack, 32, 1)  # and the stack too, in short
