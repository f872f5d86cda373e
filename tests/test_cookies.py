"""The procedural cookie data set: layout, masks, manifest, determinism, argument checks."""

import json

import numpy as np
import pytest
from PIL import Image

from anomaly.data.cookies import GENERATOR_VERSION, KINDS, PRESETS, make_cookies, render_cookie


@pytest.fixture(scope="module")
def tiny(tiny_cookies):
    """The session's tiny set (conftest: preset tiny, seed 0, 64 px) and its manifest."""
    return tiny_cookies, json.loads((tiny_cookies / "manifest.json").read_text())


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_layout_and_counts_match_the_preset(tiny):
    root, manifest = tiny
    counts = PRESETS["tiny"]
    assert len(list((root / "train/good").glob("*.png"))) == counts["train"]
    assert len(list((root / "test/good").glob("*.png"))) == counts["good"]
    for kind in KINDS:
        assert len(list((root / "test" / kind).glob("*.png"))) == counts[kind]
        assert len(list((root / "ground_truth" / kind).glob("*_mask.png"))) == counts[kind]
    assert not (root / "ground_truth/good").exists()
    assert manifest["counts"] == {
        "train/good": 8,
        "test/good": 4,
        "test/crack": 2,
        "test/mustard": 2,
        "test/plastic": 2,
    }
    assert manifest["generator_version"] == GENERATOR_VERSION
    assert (manifest["preset"], manifest["seed"], manifest["size"]) == ("tiny", 0, 64)


def test_images_and_masks(tiny):
    root, manifest = tiny
    for rel, entry in manifest["images"].items():
        image = Image.open(root / rel)
        assert image.mode == "RGB" and image.size == (64, 64)
        if entry["kind"] == "good":
            assert entry["mask"] is None and entry["defect_area"] == 0
            continue
        assert entry["mask"] == f"ground_truth/{entry['kind']}/{rel[-7:-4]}_mask.png"
        mask = Image.open(root / entry["mask"])
        assert mask.mode == "L" and mask.size == image.size
        values = np.asarray(mask)
        assert set(np.unique(values)) == {0, 255}
        assert entry["defect_area"] == int((values == 255).sum()) > 0
        assert entry["area_fraction"] == pytest.approx(entry["defect_area"] / 64**2, abs=1e-6)


def test_same_seed_same_bytes_other_seed_other_cookies(tiny, tmp_path):
    root, manifest = tiny
    assert make_cookies(tmp_path / "again", preset="tiny", seed=0, size=64) == manifest
    make_cookies(tmp_path / "other", preset="tiny", seed=1, size=64)
    first, again, other = _files(root), _files(tmp_path / "again"), _files(tmp_path / "other")
    assert first == again
    assert (root / "manifest.json").read_bytes() == (tmp_path / "again/manifest.json").read_bytes()
    images = [rel for rel in first if "ground_truth" not in rel]
    assert all(first[rel] != other[rel] for rel in images)
    assert len({first[rel] for rel in images}) == len(images)  # every cookie differs


def test_images_do_not_depend_on_the_preset(tiny, tmp_path):
    root, _ = tiny
    make_cookies(tmp_path, preset="toy", seed=0, size=64)
    assert _files(tmp_path)["train/good/003.png"] == _files(root)["train/good/003.png"]
    assert len(_files(tmp_path)) == 31 + 7


def test_root_with_other_data_is_refused_unless_overwrite(tmp_path):
    manifest = make_cookies(tmp_path, preset="tiny", seed=0, size=64)
    assert make_cookies(tmp_path, preset="tiny", seed=0, size=64) == manifest  # same: fine
    with pytest.raises(ValueError, match="overwrite=True"):
        make_cookies(tmp_path, preset="tiny", seed=2, size=64)
    (tmp_path / "notes.txt").write_text("mine")
    make_cookies(tmp_path, preset="tiny", seed=2, size=64, overwrite=True)
    assert (tmp_path / "notes.txt").exists()
    assert json.loads((tmp_path / "manifest.json").read_text())["seed"] == 2


def test_folder_with_other_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already holds"):
        make_cookies(tmp_path, preset="tiny", size=64)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"preset": "huge"}, "unknown preset"),
        ({"size": 16}, "32 to 4096"),
        ({"size": 64.5}, "32 to 4096"),
        ({"size": 100_000}, "32 to 4096"),
        ({"difficulty": 0}, "positive"),
        ({"difficulty": float("inf")}, "positive finite"),
        ({"seed": -1}, "non-negative"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_cookies(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("kind", ["good", *KINDS])
def test_large_image(kind):
    image, mask = render_cookie(np.random.default_rng(3), size=512, kind=kind)
    assert image.shape == (512, 512, 3) and image.dtype == np.uint8
    assert mask.shape == (512, 512) and mask.any() == (kind != "good")
    assert 0.3 < (image.mean(2) < 180).mean() < 0.8  # a cookie on a light table


def test_same_cookie_at_any_size():
    small, _ = render_cookie(np.random.default_rng(5), size=64)
    large, _ = render_cookie(np.random.default_rng(5), size=256)
    shrunk = np.asarray(Image.fromarray(large).resize((64, 64), Image.BILINEAR), float)
    assert np.abs(shrunk - small).mean() < 12


def test_difficulty_makes_smaller_fainter_defects():
    def areas(difficulty):
        return [
            render_cookie(np.random.default_rng(i), 128, kind, difficulty)[1].sum()
            for kind in KINDS
            for i in range(3)
        ]

    easy, hard = areas(1.0), areas(4.0)
    assert np.mean(hard) < 0.6 * np.mean(easy)
    assert min(hard) > 0


def test_make_cookies_shows_its_progress(tmp_path, capsys):
    """`make-cookies` at --size 4096 ran minutes without a word (half a minute per image)."""
    from anomaly.cli import main

    assert main(["make-cookies", str(tmp_path / "c"), "--preset", "tiny", "--size", "32"]) == 0
    err = capsys.readouterr().err
    assert "cookies: 100%" in err and "18/18" in err  # one step per image
