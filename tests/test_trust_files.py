"""Image files as a user has them: every still-image type read alike whether named or found in a
folder, each entry a folder listing skips named, photos turned by their EXIF orientation, and an
exported ONNX file's metadata checked before it is used."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_config
from PIL import Image

from anomaly.calibration import good_images
from anomaly.cli import main
from anomaly.data.files import DataError
from anomaly.data.folder import AnomalyDataset, load_image, load_mask, read_image
from anomaly.data.image_kind import image_kind
from anomaly.export import preprocess
from anomaly.pipeline import train_run
from anomaly.predict import expand_images, predict_images

ORIENTATION = 0x0112  # EXIF: 6 = turn 90 degrees clockwise to show


@pytest.fixture(scope="module")
def meandiff_run(tiny_cookies, tmp_path_factory):
    run = tmp_path_factory.mktemp("trust_files") / "md"
    train_run(tiny_config(tiny_cookies, "meandiff", channels=3), run, progress=False)
    return run


def _cookie(root: Path, kind: str = "good", i: int = 0) -> Image.Image:
    with Image.open(sorted((root / "test" / kind).glob("*.png"))[i]) as im:
        return im.convert("RGB")


def _new_images(root: Path, folder: Path) -> Path:
    """a.png, d.webp, e.gif, notes.txt and batch2/x.png (a crack) in `folder`."""
    (folder / "batch2").mkdir(parents=True)
    _cookie(root).save(folder / "a.png")
    _cookie(root, "crack").save(folder / "d.webp", lossless=True)
    _cookie(root, i=1).save(folder / "e.gif")
    _cookie(root, "crack", 1).save(folder / "batch2" / "x.png")
    (folder / "notes.txt").write_text("taken on line 2")
    return folder


# --- 1. every still-image type, and every skipped entry named -----------------------------------
def test_predict_folder_reads_webp_and_gif_and_names_what_it_skips(
    meandiff_run, tiny_cookies, tmp_path, capsys
):
    folder = _new_images(tiny_cookies, tmp_path / "new")
    assert main(["predict", "--run", str(meandiff_run), str(folder)]) == 0  # something scored
    out, err = capsys.readouterr()
    scored = [line.split("\t")[0] for line in out.splitlines() if "\t" in line]
    assert scored == [str(folder / n) for n in ("a.png", "d.webp", "e.gif")]
    assert err.count("warning:") == 1 and "notes.txt" in err and "batch2/" in err
    assert f"add --recursive, or pass each itself, e.g. {folder / 'batch2'}" in err


def test_a_folder_without_images_is_an_error_naming_what_it_holds(meandiff_run, tmp_path):
    (tmp_path / "new" / "batch2").mkdir(parents=True)
    (tmp_path / "new" / "notes.txt").write_text("x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the error says it all: no warning besides
        results, _ = predict_images(meandiff_run, [tmp_path / "new"], tmp_path / "overlays")
    error = results[0]["error"]
    assert "is a folder with no images" in error and "notes.txt" in error and "batch2/" in error
    (tmp_path / "data" / "train" / "good" / "day1").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no images in this folder.* It holds 1 folder \(day1/\)"):
        AnomalyDataset(tmp_path / "data", "train")


def test_named_files_follow_the_folder_rule(meandiff_run, tiny_cookies, tmp_path):
    folder = _new_images(tiny_cookies, tmp_path / "new")
    named = [folder / "d.webp", folder / "notes.txt"]
    assert expand_images(named) == named
    results, _ = predict_images(meandiff_run, named, tmp_path / "overlays")
    assert "score" in results[0]  # a WebP named is scored, as in its folder
    assert "notes.txt: not an image file" in results[1]["error"] and ".webp" in results[1]["error"]


def test_animated_gif_is_refused_and_named(meandiff_run, tiny_cookies, tmp_path):
    frames = [_cookie(tiny_cookies, i=i) for i in range(2)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(DataError, match=r"anim.gif: .*an animation of 2 frames"):
        read_image(tmp_path / "anim.gif")
    results, _ = predict_images(meandiff_run, [tmp_path / "anim.gif"], tmp_path / "overlays")
    assert "an animation" in results[0]["error"]


def test_training_and_good_images_list_folders_alike(tiny_cookies, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_cookies, data)
    good = data / "train" / "good"
    _cookie(tiny_cookies).save(good / "extra.webp", lossless=True)
    (good / "day2").mkdir()
    with pytest.warns(UserWarning, match=r"skipping 1 folder \(day2/\)"):
        train = AnomalyDataset(data, "train", size=64)
    with pytest.warns(UserWarning, match=r"skipping 1 folder \(day2/\)"):
        listed = good_images(good)
    assert sorted(train.paths) == sorted(map(str, listed)) and any(
        p.endswith("extra.webp") for p in train.paths
    )


def test_many_skipped_entries_are_counted(tmp_path):
    for i in range(25):
        (tmp_path / f"{i:02d}.json").write_text("{}")
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with pytest.warns(UserWarning, match="25 files of a type not read") as record:
        good_images(tmp_path)
    assert "00.json" in str(record[0].message) and "and 5 more" in str(record[0].message)


def test_a_folder_of_images_only_says_nothing(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert good_images(tmp_path) == [tmp_path / "a.png"]


# --- 2. EXIF orientation --------------------------------------------------------------------------
def _phone_photo(path: Path, shown: Image.Image) -> None:
    """`shown` saved as a phone does: stored turned a quarter, with the tag that turns it back."""
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    shown.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif)


def test_exif_orientation_gives_the_image_as_shown(tiny_cookies, tmp_path):
    shown = _cookie(tiny_cookies, "crack").resize((64, 48))  # wider than high, as displayed
    _phone_photo(tmp_path / "photo.jpg", shown)
    with Image.open(tmp_path / "photo.jpg") as im:
        assert im.size == (48, 64)  # stored sideways
    a = read_image(tmp_path / "photo.jpg")
    assert a.shape == (48, 64, 3)
    assert np.abs(a - np.asarray(shown, np.float32) / 255).mean() < 0.03  # as shown, not turned
    assert image_kind(tmp_path / "photo.jpg")["aspect"] == pytest.approx(64 / 48)
    # the ONNX preprocessing turns it alike
    np.testing.assert_allclose(
        preprocess(tmp_path / "photo.jpg", 32, 3), load_image(tmp_path / "photo.jpg", 32), atol=1e-4
    )
    from anomaly.explorer.runs import read_image as explorer_image  # the gallery's, uint8

    assert explorer_image(tmp_path / "photo.jpg").shape == (48, 64, 3)


def test_mask_drawn_as_shown_fits_a_phone_photo(tiny_cookies, tmp_path):
    root = tmp_path / "plain"
    for kind in ("good", "crack", "masks/crack"):
        (root / kind).mkdir(parents=True)
    for i in range(3):
        _cookie(tiny_cookies, i=i).resize((64, 48)).save(root / "good" / f"{i}.png")
    _phone_photo(root / "crack" / "p.jpg", _cookie(tiny_cookies, "crack").resize((64, 48)))
    mask = np.zeros((48, 64), np.uint8)
    mask[:, :8] = 255  # the left edge as displayed
    Image.fromarray(mask).save(root / "masks" / "crack" / "p_mask.png")
    ds = AnomalyDataset(root, "test", size=32)  # was: "mask is 64x48 but its image ... is 48x64"
    item = ds[[s.defect for s in ds.samples].index("crack")]
    assert item["image"].shape == (3, 32, 32)
    assert load_mask(root / "masks" / "crack" / "p_mask.png", None).shape == (48, 64)


def test_score_overlays_show_the_photo_as_scored(tiny_cookies, tmp_path):
    from anomaly.data.image_kind import read_rgb  # what overlays draws its pictures on

    _phone_photo(tmp_path / "photo.jpg", _cookie(tiny_cookies).resize((64, 48)))
    assert read_rgb(str(tmp_path / "photo.jpg")).shape == (48, 64, 3)


# --- 3. an exported ONNX file's metadata ----------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tiny_cookies, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from anomaly.config import Config
    from anomaly.export import export_onnx

    run = tmp_path_factory.mktemp("trust_onnx") / "pk"
    config = Config.for_method("patchknn", data=str(tiny_cookies), size=32, device="cpu")
    train_run(config, run, progress=False)
    return export_onnx(run, run / "model.onnx")


def _edited(src: Path, dest: Path, key: str, value: str) -> Path:
    import onnx

    model = onnx.load(str(src))
    entry = next((p for p in model.metadata_props if p.key == key), None)
    if entry is None:
        entry = model.metadata_props.add()
        entry.key = key
    entry.value = value
    onnx.save(model, str(dest))
    return dest


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        ("size", "48", "its graph takes images of shape [1, 3, 32, 32]"),
        ("channels", "1", "its metadata says [1, 1, 32, 32]"),
        ("size", "big", "its metadata size is 'big'"),
        ("channels", "7", "channels 7 (1 or 3)"),
        ("map_range", "[1]", "map_range is '[1]', not [low, high]"),
        ("map_range", "[NaN, 1]", "not [low, high]"),
        ("threshold", "abc", "its metadata threshold is 'abc'"),
        ("threshold", "inf", "not a finite number"),
        ("threshold_rule", "\x1b[2J", "threshold_rule"),
        # decoding a JPEG at another scale gave other scores without a word (session 30)
        ("draft_size", "1", "draft_size '1' are not what export writes"),
        ("draft_size", "999999", "draft_size '999999'"),
        ("draft_size", "²", "draft_size '²'"),
    ],
)
def test_edited_onnx_metadata_is_one_clear_error(
    exported, tiny_cookies, tmp_path, capsys, key, value, said
):
    path = _edited(exported, tmp_path / "edited.onnx", key, value)
    image = str(min((tiny_cookies / "test" / "good").glob("*.png")))
    assert main(["predict", "--onnx", str(path), image]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ") and said in err and "export the run again" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
