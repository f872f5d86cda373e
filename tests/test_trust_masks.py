"""Defect masks as people save them: every non-zero pixel is a defect whatever the file's mode
(palette, red on black, 16-bit, faint), an empty mask of a defective image is an error naming
it, an inverted one is named in a warning; and what train says about its images (32-bit TIFFs,
aspect ratios that differ)."""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly.data.files import DataError
from anomaly.data.folder import AnomalyDataset, load_mask
from anomaly.data.image_kind import image_kind, summarize
from anomaly.data.image_unlike import unlike

DEFECT = np.zeros((8, 12), bool)
DEFECT[2:5, 3:9] = True  # 18 of 96 pixels


def _palette(background: int, defect: int) -> Image.Image:
    im = Image.fromarray(np.where(DEFECT, defect, background).astype(np.uint8), "P")
    colours = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 0, 0), 3: (0, 255, 0)}
    im.putpalette([c for i in range(4) for c in colours[i]])
    return im


def _rgba(colour: tuple, alpha_only: bool = False) -> Image.Image:
    a = np.zeros(DEFECT.shape + (4,), np.uint8)
    a[DEFECT] = (0, 0, 0, 255) if alpha_only else (*colour, 255)
    if not alpha_only:
        a[~DEFECT, 3] = 255  # opaque black background
    return Image.fromarray(a, "RGBA")


def _grey(high: int, dtype=np.uint8, mode: str | None = None) -> Image.Image:
    return Image.fromarray(np.where(DEFECT, high, 0).astype(dtype), mode)


def _red() -> Image.Image:
    a = np.zeros(DEFECT.shape + (3,), np.uint8)
    a[DEFECT, 0] = 255
    return Image.fromarray(a)


MASKS = {
    "L 0/255 (MVTec AD)": (lambda: _grey(255), "png"),
    "L 0/1": (lambda: _grey(1), "png"),
    "L faint 0/30": (lambda: _grey(30), "png"),
    "1 (bilevel)": (lambda: _grey(255).convert("1"), "png"),
    "P index 1 = (128, 0, 0)": (lambda: _palette(0, 1), "png"),
    "P black background at index 2, defect at index 3": (lambda: _palette(2, 3), "png"),
    "RGB red on black": (_red, "png"),
    "RGBA red on opaque black": (lambda: _rgba((255, 0, 0)), "png"),
    "RGBA black paint on a transparent layer": (lambda: _rgba((0, 0, 0), True), "png"),
    "LA": (lambda: _grey(255).convert("LA"), "png"),
    "I;16 holding 0/255": (lambda: _grey(255, np.uint16), "png"),
    "I;16 holding 0/65535": (lambda: _grey(65535, np.uint16), "png"),
    "I 32-bit TIFF": (lambda: _grey(100_000, np.int32, "I"), "tif"),
    "F TIFF 0/0.3": (lambda: _grey(0.3, np.float32, "F"), "tif"),
}


@pytest.mark.parametrize("name", MASKS)
def test_every_non_zero_pixel_is_a_defect(tmp_path: Path, name: str) -> None:
    make, ext = MASKS[name]
    path = tmp_path / f"m.{ext}"
    make().save(path)
    assert torch.equal(load_mask(path, None), torch.from_numpy(DEFECT).float()), name


def _cookies(tiny_cookies: Path, dest: Path) -> Path:
    root = shutil.copytree(tiny_cookies, dest)
    (root / "manifest.json").unlink(missing_ok=True)
    return root


def _masks(root: Path) -> list[Path]:
    return sorted((root / "ground_truth").glob("*/*.png"))


def test_palette_and_red_masks_read_as_the_white_ones(tiny_cookies: Path, tmp_path: Path) -> None:
    want = [item["mask"] for item in AnomalyDataset(tiny_cookies, "test", size=32)]
    assert sum(m.sum() for m in want) > 0
    for kind in ("P", "RGB"):
        root = _cookies(tiny_cookies, tmp_path / kind)
        for path in _masks(root):
            a = np.asarray(Image.open(path)) > 0
            if kind == "P":
                im = Image.fromarray(a.astype(np.uint8), "P")
                im.putpalette([0, 0, 0, 128, 0, 0])
            else:
                im = Image.fromarray(np.stack([a * 255, a * 0, a * 0], -1).astype(np.uint8))
            im.save(path)
        got = [item["mask"] for item in AnomalyDataset(root, "test", size=32)]
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True)), kind


def test_an_empty_mask_of_a_defective_image_is_an_error(tiny_cookies: Path, tmp_path: Path):
    root = _cookies(tiny_cookies, tmp_path / "d")
    empty = _masks(root)[0]
    Image.new("L", Image.open(empty).size, 0).save(empty)
    ds = AnomalyDataset(root, "test", size=32)
    with pytest.raises(DataError) as e:
        ds.check()
    assert str(empty) in str(e.value) and "non-zero pixels" in str(e.value)
    i = next(i for i, s in enumerate(ds.samples) if s.mask_path == str(empty))
    with pytest.raises(DataError, match="marks no defect"):
        ds[i]
    empty.unlink()  # without its mask the image is left out of the pixel metrics
    assert AnomalyDataset(root, "test", size=32)[i]["mask_known"] is False


def test_an_inverted_mask_is_named_in_a_warning(tiny_cookies: Path, tmp_path: Path) -> None:
    root = _cookies(tiny_cookies, tmp_path / "d")
    inverted = _masks(root)[0]
    a = np.asarray(Image.open(inverted))
    Image.fromarray(np.where(a > 0, 0, 255).astype(np.uint8)).save(inverted)
    with pytest.warns(UserWarning, match="inverted") as said:
        AnomalyDataset(root, "test", size=32).check()
    assert [str(inverted) in str(w.message) for w in said] == [True]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the data set as generated: no warning
        AnomalyDataset(tiny_cookies, "test", size=32).check()


def test_a_defect_smaller_than_a_model_pixel_is_not_resized_away(
    tiny_cookies: Path, tmp_path: Path
) -> None:
    """A 1 px defect of a 512 px mask at 64 px: nearest neighbour reads one pixel of each 8x8
    block and missed it, so the defective image's mask came out empty and its defect left the
    pixel metrics. The model pixel it touches is marked instead, with a warning naming the file;
    a defect that nearest neighbour keeps is resized as before, without a word."""
    a = np.zeros((512, 512), np.uint8)
    a[101, 203] = 255  # neither is a pixel nearest neighbour reads (8 i + 4)
    path = tmp_path / "speck.png"
    Image.fromarray(a).save(path)
    with pytest.warns(UserWarning, match="smaller than one pixel at --size 64") as said:
        mask = load_mask(path, 64)
    assert [str(path) in str(w.message) for w in said] == [True]
    want = torch.zeros(64, 64)
    want[101 // 8, 203 // 8] = 1
    assert torch.equal(mask, want)
    a[96:112, 200:216] = 255  # a 16 px defect: nearest neighbour keeps it
    Image.fromarray(a).save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mask = load_mask(path, 64)
    near = torch.nn.functional.interpolate(
        torch.from_numpy(a > 0).float()[None, None], size=(64, 64), mode="nearest-exact"
    )[0, 0]
    assert torch.equal(mask, near) and mask.sum() == 4
    # the same through a data set: the defective image keeps a non-empty mask at model size
    root = _cookies(tiny_cookies, tmp_path / "d")
    speck = _masks(root)[0]
    b = np.zeros(Image.open(speck).size[::-1], np.uint8)
    b[1, 1] = 255
    Image.fromarray(b).save(speck)
    ds = AnomalyDataset(root, "test", size=8)
    i = next(i for i, s in enumerate(ds.samples) if s.mask_path == str(speck))
    with pytest.warns(UserWarning, match=re.escape(str(speck))):
        assert ds[i]["mask"].sum() == 1


def test_a_32_bit_tiff_is_described_as_32_bit(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 6), 100_000, np.int32), "I").save(tmp_path / "i.tif")
    Image.fromarray(np.full((4, 6), 1000, np.uint16)).save(tmp_path / "s.png")
    Image.fromarray(np.full((4, 6), 1000, np.uint16)).save(tmp_path / "s.tif")
    assert image_kind(tmp_path / "i.tif")["bits"] == 32
    assert image_kind(tmp_path / "s.png")["bits"] == 16
    assert image_kind(tmp_path / "s.tif")["bits"] == 16
    said = unlike(image_kind(tmp_path / "i.tif"), {"bits": [8]}, 3, 64)
    assert said[0].startswith("32-bit") and "clipped" in said[0]


def _sized(path: Path, width: int, height: int) -> str:
    Image.new("RGB", (width, height), (90, 80, 70)).save(path)
    return str(path)


def test_train_images_of_differing_aspect_ratios_are_named(tmp_path: Path) -> None:
    square = _sized(tmp_path / "square.png", 40, 40)
    wide = _sized(tmp_path / "wide.png", 110, 20)
    paths = [square, _sized(tmp_path / "a.png", 50, 40), wide]
    with pytest.warns(UserWarning, match="aspect ratios") as said:
        assert summarize(paths)["aspect"] == [1.0, 5.5]
    assert len(said) == 1 and square in str(said[0].message) and wide in str(said[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # within 2x of each other: nothing to say
        summarize([square, _sized(tmp_path / "b.png", 70, 40)])
