"""AnomalyDataset: both layouts, the item contract, image conversions, and clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from anomaly.data.folder import AnomalyDataset, DataError, load_image, load_mask

S = 8  # image side in these tests; datasets use size=S so values come back unresized


def _save(path: Path, image: Image.Image | np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image.save(path)
    return path


def _rgb(seed: int, side: int = S) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)


def _square_mask(side: int = S) -> np.ndarray:
    m = np.zeros((side, side), np.uint8)
    m[2:5, 3:6] = 255
    return m


@pytest.fixture
def mvtec(tmp_path: Path) -> Path:
    root = tmp_path / "mvtec"
    for i in range(4):
        _save(root / "train/good" / f"{i:03d}.png", _rgb(i))
    _save(root / "test/good/000.png", _rgb(10))
    _save(root / "test/crack/000.png", _rgb(11))
    _save(root / "test/crack/001.png", _rgb(12))
    _save(root / "test/dent/000.png", _rgb(13))
    _save(root / "ground_truth/crack/000_mask.png", _square_mask())
    _save(root / "ground_truth/dent/000.png", _square_mask())  # <stem>.png is accepted too
    return root


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    root = tmp_path / "plain"
    for i in range(10):
        _save(root / "good" / f"{i:03d}.png", _rgb(i))
    _save(root / "scratch/a.png", _rgb(20))
    _save(root / "scratch/b.png", _rgb(21))
    _save(root / "masks/scratch/a_mask.png", _square_mask())
    return root


def _one_image(tmp_path: Path, image: Image.Image, channels: int) -> torch.Tensor:
    _save(tmp_path / "d/train/good/x.png", image)
    return AnomalyDataset(tmp_path / "d", "train", size=image.size[0], channels=channels)[0][
        "image"
    ]


# --- layouts ------------------------------------------------------------------------------------


def test_mvtec_layout(mvtec: Path) -> None:
    train = AnomalyDataset(mvtec, "train", size=S)
    assert train.layout == "mvtec" and len(train) == 4
    assert train.defects == ["good"] * 4 and train.labels.tolist() == [0] * 4
    assert not train.has_masks
    test = AnomalyDataset(mvtec, "test", size=S)
    assert [Path(p).relative_to(mvtec).as_posix() for p in test.paths] == [
        "test/good/000.png",
        "test/crack/000.png",
        "test/crack/001.png",
        "test/dent/000.png",
    ]
    assert test.labels.tolist() == [0, 1, 1, 1]
    assert test.defects == ["good", "crack", "crack", "dent"]
    assert test.has_masks and test.counts() == {"good": 1, "crack": 2, "dent": 1}
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in test.paths)
    expected = torch.from_numpy(_square_mask() > 0).float()
    assert torch.equal(test[1]["mask"], expected)
    assert torch.equal(test[3]["mask"], expected)
    assert test[2]["mask"].sum() == 0  # defect without a mask file
    assert test[0]["mask"].sum() == 0  # good
    assert test.samples[1].mask_path.endswith("000_mask.png") and test.samples[2].mask_path is None
    assert "crack 2" in repr(test)


def test_plain_layout_split_rule(plain: Path) -> None:
    train = AnomalyDataset(plain, "train", size=S)
    test = AnomalyDataset(plain, "test", size=S)
    assert train.layout == test.layout == "folder"
    test_good = [Path(p).name for p, d in zip(test.paths, test.defects) if d == "good"]
    assert test_good == ["004.png", "009.png"]  # every 5th good image, by name
    assert len(train) == 8 and "004.png" not in {Path(p).name for p in train.paths}
    assert test.defects == ["good", "good", "scratch", "scratch"]
    assert test.labels.tolist() == [0, 0, 1, 1]
    assert test.has_masks and test[2]["mask"].sum() == 9 and test[3]["mask"].sum() == 0
    assert AnomalyDataset(plain, "test", size=S).paths == test.paths  # deterministic
    assert len(AnomalyDataset(plain, "train", size=S, holdout=0.5)) == 5


def test_plain_layout_small_and_ground_truth_masks(tmp_path: Path) -> None:
    root = tmp_path / "p"
    for i in range(3):
        _save(root / "good" / f"{i}.png", _rgb(i))
    _save(root / "hole/h1.png", _rgb(5))
    _save(root / "ground_truth/hole/h1.png", _square_mask())
    test = AnomalyDataset(root, "test", size=S)
    assert test.defects == ["good", "hole"]  # at least one good image in test
    assert test[1]["mask"].sum() == 9
    assert len(AnomalyDataset(root, "train", size=S)) == 2


# --- the item contract ----------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_item_contract_and_collate(mvtec: Path, channels: int) -> None:
    ds = AnomalyDataset(mvtec, "test", size=12, channels=channels)
    item = ds[1]
    assert set(item) == {"image", "mask", "label", "defect", "path", "mask_known"}
    assert item["mask_known"] is True  # a defect with its mask file
    assert item["image"].shape == (channels, 12, 12) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (12, 12) and item["mask"].dtype == torch.float32
    assert isinstance(item["label"], int) and isinstance(item["defect"], str)
    assert isinstance(item["path"], str)
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, channels, 12, 12)
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert set(batch["mask"].unique().tolist()) <= {0.0, 1.0}
    assert batch["mask"][0].sum() == 0 and batch["mask"][1].sum() > 0
    assert batch["label"].tolist() == [0, 1, 1, 1] and batch["defect"][0] == "good"
    assert batch["path"] == ds.paths


def test_mask_resize_nearest_and_zero_one_masks(tmp_path: Path) -> None:
    m = np.zeros((8, 8), np.uint8)
    m[:4, :4] = 1  # masks saved as 0/1 instead of 0/255
    path = _save(tmp_path / "m.png", m)
    out = load_mask(path, size=4)
    assert out.shape == (4, 4) and out.sum() == 4 and out[:2, :2].all()


def test_subset_and_cache(mvtec: Path) -> None:
    ds = AnomalyDataset(mvtec, "train", size=S)
    first = ds[0]["image"]
    assert ds[0]["image"] is first  # cached: the same tensor comes back
    view = ds.subset([3, 1])
    assert len(view) == 2 and view.paths == [ds.paths[3], ds.paths[1]]
    assert view.labels.tolist() == [0, 0] and view.split == "train" and view.size == S
    assert view.subset(np.array([1]))[0]["image"] is ds[1]["image"]  # the cache is shared
    assert len(ds) == 4  # the parent is unchanged
    fresh = AnomalyDataset(mvtec, "train", size=S, cache=False)
    again = fresh[0]["image"]
    assert again is not fresh[0]["image"] and torch.equal(again, first)


# --- conversions --------------------------------------------------------------------------------


def test_grayscale_L(tmp_path: Path) -> None:
    a = np.full((4, 4), 100, np.uint8)
    rgb = _one_image(tmp_path, Image.fromarray(a, "L"), channels=3)
    assert rgb.shape == (3, 4, 4) and torch.allclose(rgb, torch.full_like(rgb, 100 / 255))
    assert torch.allclose(
        load_image(tmp_path / "d/train/good/x.png", None, 1), torch.tensor(100 / 255)
    )


def test_rgb_to_gray_and_rgb(tmp_path: Path) -> None:
    a = np.zeros((4, 4, 3), np.uint8)
    a[..., 0], a[..., 1], a[..., 2] = 255, 128, 0
    rgb = _one_image(tmp_path, Image.fromarray(a, "RGB"), channels=3)
    assert torch.allclose(rgb[:, 0, 0], torch.tensor([1.0, 128 / 255, 0.0]))
    gray = load_image(tmp_path / "d/train/good/x.png", None, channels=1)
    assert gray.shape == (1, 4, 4)
    assert torch.allclose(gray, torch.tensor(0.299 + 0.587 * 128 / 255), atol=1e-5)


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 0] = 255  # red
    a[:2, :, 3] = 255  # top half opaque, bottom half fully transparent
    rgb = _one_image(tmp_path, Image.fromarray(a, "RGBA"), channels=3)
    assert rgb.shape == (3, 4, 4)
    assert torch.allclose(rgb[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(rgb[:, 3, 0], torch.ones(3))


def test_palette(tmp_path: Path) -> None:
    im = Image.new("P", (4, 4), 1)
    im.putpalette([0, 0, 0, 10, 20, 30] + [0] * (254 * 3))
    rgb = _one_image(tmp_path, im, channels=3)
    assert torch.allclose(rgb[:, 0, 0], torch.tensor([10, 20, 30]) / 255)


def test_sixteen_bit(tmp_path: Path) -> None:
    a = np.array([[0, 32768], [65535, 65535]], np.uint16)
    im = Image.fromarray(a)
    assert im.mode.startswith("I;16")
    gray = _one_image(tmp_path, im, channels=1)
    assert gray.shape == (1, 2, 2)
    assert torch.allclose(gray[0], torch.tensor([[0.0, 32768 / 65535], [1.0, 1.0]]))
    rgb = _one_image(tmp_path, im, channels=3)
    assert rgb.shape == (3, 2, 2) and rgb.max() == 1.0


def test_resize_is_bilinear_and_in_range(tmp_path: Path) -> None:
    path = _save(tmp_path / "big.png", _rgb(0, side=32))
    x = load_image(path, size=8, channels=3)
    assert x.shape == (3, 8, 8) and 0 <= x.min() and x.max() <= 1
    assert x.std() < torch.from_numpy(_rgb(0, side=32) / 255).std()  # antialiased: smoother


# --- bad input ------------------------------------------------------------------------------------


def _raises(match: str):
    return pytest.raises(DataError, match=re.escape(match))


def test_missing_root(tmp_path: Path) -> None:
    with _raises("nowhere"):
        AnomalyDataset(tmp_path / "nowhere")


def test_missing_good_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with _raises("good/"):
        AnomalyDataset(tmp_path / "empty")
    _save(tmp_path / "m/test/good/0.png", _rgb(0))
    with _raises(str(Path("train") / "good")):
        AnomalyDataset(tmp_path / "m", "train")


def test_folder_of_categories_suggests_one(mvtec: Path) -> None:
    with _raises("mvtec"):
        AnomalyDataset(mvtec.parent)


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "d/train/good").mkdir(parents=True)
    with _raises(str(Path("train") / "good")):
        AnomalyDataset(tmp_path / "d")
    _save(tmp_path / "d/train/good/0.png", _rgb(0))
    _save(tmp_path / "d/test/good/0.png", _rgb(0))
    (tmp_path / "d/test/crack").mkdir()
    with _raises("crack"):
        AnomalyDataset(tmp_path / "d", "test")


def test_unreadable_image(mvtec: Path) -> None:
    (mvtec / "train/good/bad.png").write_bytes(b"this is not a png")
    with _raises("bad.png"):
        AnomalyDataset(mvtec, "train")


def test_truncated_image(mvtec: Path) -> None:
    path = _save(mvtec / "train/good/cut.png", _rgb(0, side=64))
    path.write_bytes(path.read_bytes()[:200])
    with _raises("cut.png"):
        ds = AnomalyDataset(mvtec, "train", size=S)
        ds.check()


def test_mask_without_image(mvtec: Path) -> None:
    _save(mvtec / "ground_truth/crack/007_mask.png", _square_mask())
    with _raises("007_mask.png") as e:
        AnomalyDataset(mvtec, "test")
    assert "007.*" in str(e.value)
    _save(mvtec / "ground_truth/gone/000_mask.png", _square_mask())
    (mvtec / "ground_truth/crack/007_mask.png").unlink()
    with _raises("gone"):
        AnomalyDataset(mvtec, "test")


def test_mask_size_differs(mvtec: Path) -> None:
    _save(mvtec / "ground_truth/crack/001_mask.png", _square_mask(side=S * 2))
    with _raises("001_mask.png"):
        AnomalyDataset(mvtec, "test")


def test_stray_files_warn(mvtec: Path) -> None:
    for name in ("notes.txt", ".DS_Store", "Thumbs.db", "._000.png"):  # ._: macOS metadata
        (mvtec / "train/good" / name).write_text("x")
    (mvtec / "train/good/.ipynb_checkpoints").mkdir()  # hidden entries are skipped quietly
    with pytest.warns(UserWarning, match="notes.txt") as record:
        ds = AnomalyDataset(mvtec, "train", size=S)
    message = str(record[0].message)
    # Windows' thumbnail cache too (it was told "save others as PNG to use them": session 31)
    assert ".DS_Store" not in message and "._000" not in message and ".ipynb" not in message
    assert "Thumbs.db" not in message
    assert len(ds) == 4


def test_bad_arguments(mvtec: Path) -> None:
    with pytest.raises(DataError, match="split"):
        AnomalyDataset(mvtec, "val")
    with pytest.raises(DataError, match="channels"):
        AnomalyDataset(mvtec, channels=2)
