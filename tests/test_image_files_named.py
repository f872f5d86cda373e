"""Images that Pillow warns about, refuses, or cannot read from at all: one line naming the file
and the fix, never Pillow's source line or a wait for ever."""

from __future__ import annotations

import os
import shutil

import pytest
from helpers import copy_run
from PIL import Image

from anomaly.cli import main
from anomaly.data import image_kind


@pytest.fixture
def run(scored_ae_run, tmp_path):
    return copy_run(scored_ae_run, tmp_path / "run")


def _image(tiny_cookies, tmp_path, name="big.png"):
    path = tmp_path / name
    shutil.copy(min((tiny_cookies / "test/good").glob("*.png")), path)
    return path


def test_a_very_large_image_is_named_with_the_fix(run, tiny_cookies, tmp_path, monkeypatch, capsys):
    image = _image(tiny_cookies, tmp_path)  # 64 x 64: 4096 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # Pillow warns above, refuses above 2x
    monkeypatch.setattr(image_kind, "_SAID", set())
    main(["predict", "--run", str(run), str(image)])
    said = [line for line in capsys.readouterr().err.splitlines() if str(image) in line]
    assert len(said) == 1 and said[0].startswith(f"warning: {image}: Image size (4096 pixels)")
    assert said[0].endswith("decoding it takes much memory and time: shrink it")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)
    assert main(["predict", "--run", str(run), str(image)]) == 2
    out = capsys.readouterr()
    assert "too large to decode safely" in out.out + out.err and "Re-save" not in out.out + out.err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_named_pipe_is_refused_not_waited_on(run, tmp_path, capsys):
    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)
    assert main(["predict", "--run", str(run), str(pipe)]) == 2
    out = capsys.readouterr()
    assert f"{pipe} is not a file" in out.out + out.err


def test_a_jpeg_mask_is_read_at_half_brightness_and_named(tiny_cookies, tmp_path):
    import numpy as np

    from anomaly.data import AnomalyDataset
    from anomaly.data.masks import read_mask

    data = tmp_path / "data"
    shutil.copytree(tiny_cookies, data)
    png = min((data / "ground_truth").rglob("*_mask.png"))
    drawn = read_mask(png)
    jpeg = png.with_suffix(".jpg")
    Image.open(png).convert("L").save(jpeg, quality=75)
    png.unlink()
    noisy = np.asarray(Image.open(jpeg)) > 0  # every non-zero pixel: the compression's grey too
    assert noisy.sum() > drawn.sum() * 1.2
    assert abs(int(read_mask(jpeg).sum()) - int(drawn.sum())) <= 0.1 * drawn.sum()
    with pytest.warns(UserWarning, match=f"{jpeg} is a JPEG mask: compression leaves faint grey"):
        AnomalyDataset(data, "test", size=64)


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_good_folder_in_capitals_is_named(tiny_cookies, tmp_path, split):
    from anomaly.data import AnomalyDataset, DataError

    data = tmp_path / "data"
    shutil.copytree(tiny_cookies, data)
    (data / split / "good").rename(data / split / "Good")
    with pytest.raises(DataError, match=r"Good: folder names are exact.*Rename it to .*/good"):
        AnomalyDataset(data, split, size=64)


def test_images_directly_in_test_are_named(tiny_cookies, tmp_path):
    from anomaly.data import AnomalyDataset

    data = tmp_path / "data"
    shutil.copytree(tiny_cookies, data)
    shutil.copy(min((data / "test/good").glob("*.png")), data / "test" / "loose.png")
    with pytest.warns(UserWarning, match=r"loose.png lies directly in test/ and is not read"):
        AnomalyDataset(data, "test", size=64)


def test_a_very_large_image_gets_a_shrunk_overlay(monkeypatch):
    import numpy as np

    from anomaly import overlays, predict

    monkeypatch.setattr(overlays, "OVERLAY_SIDE", 50)
    assert overlays.overlay_size(64, 100) == (32, 50) and overlays.overlay_size(40, 50) == (40, 50)
    scale = overlays.EvidenceScale(0.0, 1.0)
    amap = np.zeros((8, 8), np.float32)
    amap[2:4, 2:4] = 2.0  # evidence 2: painted red
    picture = overlays.evidence_overlay(np.full((64, 100, 3), 0.5, np.float32), amap, scale)
    assert picture.shape == (32, 50, 3) and overlays.strong_red_fraction(picture) > 0
    own = predict.overlay_tensor(np.full((64, 100, 1), 0.5, np.float32))
    assert tuple(own.shape) == (3, 32, 50) and abs(float(own.mean()) - 0.5) < 1e-3


def test_an_image_of_one_flat_colour_is_named(run, tiny_cookies, tmp_path, capsys):
    import numpy as np

    transparent = tmp_path / "transparent.png"
    Image.fromarray(np.zeros((64, 64, 4), np.uint8)).save(transparent)  # alpha 0 everywhere
    clipped = tmp_path / "float.tif"
    Image.fromarray(np.full((64, 64), 200.0, np.float32)).save(clipped)  # 0-255 in a float file
    image = _image(tiny_cookies, tmp_path, "ordinary.png")
    code = main(["predict", "--run", str(run), str(transparent), str(clipped), str(image)])
    said = capsys.readouterr()
    flat = [line for line in said.err.splitlines() if "of it is one flat colour" in line]
    assert len(flat) == 2 and str(transparent) in flat[0] and str(clipped) in flat[1]
    # nothing to inspect: no verdict (a PASS sent an empty frame down the line), exit 2
    rows = [line.split("\t") for line in said.out.splitlines()]
    assert [r[2] for r in rows] == ["ERROR", "ERROR", rows[2][2]] and rows[2][2] != "ERROR"
    assert code == 2 and "gets no verdict (ERROR, not PASS)" in flat[0]


def test_a_float_image_partly_out_of_range_is_named(run, tmp_path, capsys):
    import numpy as np

    grey = np.linspace(0.0, 1.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    inside = tmp_path / "inside.tif"
    Image.fromarray(grey).save(inside)  # 0-1: read as it is, nothing said
    partly = tmp_path / "partly.tif"
    Image.fromarray(grey * 4).save(partly)  # 0-4: three quarters of it above white
    main(["predict", "--run", str(run), str(inside), str(partly)])
    said = capsys.readouterr()
    named = [line for line in said.err.splitlines() if "lie outside 0-1" in line]
    assert len(named) == 1 and str(partly) in named[0]  # the 0-1 image is not among them
    assert "75.0% of its values" in named[0] and "0 to 4" in named[0]
    assert said.out.count("PASS") + said.out.count("REJECT") == 2  # still scored


def test_a_float_image_with_nan_pixels_is_refused_by_name(run, tmp_path, capsys):
    import numpy as np

    a = np.full((64, 64), 0.5, np.float32)
    a[:8] = np.nan
    path = tmp_path / "nan.tif"
    Image.fromarray(a).save(path)
    assert main(["predict", "--run", str(run), str(path)]) == 2
    said = capsys.readouterr()
    assert f"{path}: 512 of its 4096 pixel values are NaN" in said.out + said.err
    assert "Traceback" not in said.out + said.err
