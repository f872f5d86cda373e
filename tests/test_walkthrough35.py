"""Session 35's walkthroughs: what a researcher with the public benchmarks on disk met (soft
mask edges, KolektorSDD's `_GT` / `_label` masks, a data set passed one level too deep, MVTec
LOCO AD's folders of masks and its validation/good/)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly.data import masks as masks_module
from anomaly.data.files import DataError
from anomaly.data.folder import AnomalyDataset
from anomaly.data.masks import read_mask


def _soft_mask() -> tuple[np.ndarray, np.ndarray]:
    """A disk drawn at 512 px and shrunk to 64 px with a smoothing filter (dozens of grey levels
    on its rim), and the same disk shrunk by nearest neighbour (two values)."""
    yy, xx = np.mgrid[:512, :512]
    disk = Image.fromarray(((yy - 256) ** 2 + (xx - 256) ** 2 < 160**2).astype(np.uint8) * 255)
    soft = np.asarray(disk.resize((64, 64), Image.BILINEAR))
    return soft, np.asarray(disk.resize((64, 64), Image.NEAREST)) > 0


def test_a_soft_edged_mask_is_read_as_one_sees_it_and_named_once_a_folder(tmp_path: Path):
    a, seen = _soft_mask()
    assert np.unique(a).size > 8
    for name in ("000_mask.png", "001_mask.png"):
        Image.fromarray(a).save(tmp_path / name)
    masks_module._SOFT_SAID.clear()
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        first, second = read_mask(tmp_path / "000_mask.png"), read_mask(tmp_path / "001_mask.png")
    assert np.array_equal(first, second)
    assert first.sum() < (a > 0).sum()  # non-zero: the rim as defect
    assert (first != seen).sum() <= 0.05 * seen.sum()  # the disk as nearest neighbour has it
    words = [str(w.message) for w in said if "soft edges" in str(w.message)]
    assert len(words) == 1 and "000_mask.png" in words[0] and f"{first.sum()} px" in words[0]
    # the same soft mask saved as 16-bit, and as grey RGB, reads the same
    Image.fromarray(a.astype(np.uint16) * 257).save(tmp_path / "wide.png")
    Image.fromarray(np.stack([a] * 3, -1)).save(tmp_path / "rgb.png")
    assert np.array_equal(read_mask(tmp_path / "wide.png"), first)
    assert np.array_equal(read_mask(tmp_path / "rgb.png"), first)


def test_a_soft_masks_dim_regions_keep_their_cores(tmp_path: Path) -> None:
    """One cut at half the mask's maximum dropped a thin scratch a resize dimmed to 40, alone or
    running out of a blob; a label map's 127 beside its 255 was cut away (reviews)."""
    a = np.zeros((512, 512), np.uint8)
    a[50:200, 50:200] = 255
    a[300:480, 400] = 255  # a 1 px scratch
    a[200:300, 120] = 255  # and one out of the blob
    Image.fromarray(a).resize((128, 128), Image.BILINEAR).save(tmp_path / "thin.png")
    thin = read_mask(tmp_path / "thin.png")
    assert thin[75:120, 95:105].any(axis=1).all() and thin[20:45, 20:45].all()
    assert thin[52:73, 26:34].any(axis=1).all()  # the scratch out of the blob, every row
    b = np.zeros((40, 40), np.uint8)
    b[2:17, 2:17], b[20:35, 20:35], b[20:35, 5:20] = 85, 255, 127  # labels, 127 touching 255
    Image.fromarray(b).save(tmp_path / "levels.png")
    assert read_mask(tmp_path / "levels.png").sum() == 3 * 15 * 15  # every label


@pytest.mark.parametrize(
    "values",
    [
        (0, 1, 2),  # label indices: every kind a defect
        (0, 15, 30),  # faint masks
        (0, 255),  # MVTec AD's two values
    ],
)
def test_masks_without_soft_edges_keep_every_non_zero_pixel(tmp_path: Path, values) -> None:
    a = np.zeros((12, 12), np.uint8)
    for i, v in enumerate(values):
        a[i * 4 : i * 4 + 4, 2:10] = v
    Image.fromarray(a).save(tmp_path / "m.png")
    assert np.array_equal(read_mask(tmp_path / "m.png"), a > 0)
    red = np.zeros((12, 12, 3), np.uint8)  # red on black, anti-aliased: any channel non-zero
    red[2:10, 2:10, 0] = 255
    red[1, 2:10, 0] = 40
    Image.fromarray(red).save(tmp_path / "red.png")
    assert np.array_equal(read_mask(tmp_path / "red.png"), red.any(-1))


def _mvtec(root: Path, tiny_cookies: Path) -> Path:
    shutil.copytree(tiny_cookies, root)
    (root / "manifest.json").unlink(missing_ok=True)
    return root


def _a_defect(root: Path) -> tuple[str, Path, Path]:
    mask = min((root / "ground_truth").glob("*/*_mask.png"))
    kind = mask.parent.name
    image = next((root / "test" / kind).glob(mask.name.replace("_mask", "")[:-4] + ".*"))
    return kind, image, mask


@pytest.mark.parametrize("suffix", ["_GT", "_label"])
def test_kolektor_masks_beside_their_images_are_refused_and_match_in_ground_truth(
    tiny_cookies: Path, tmp_path: Path, suffix: str
) -> None:
    root = _mvtec(tmp_path / "d", tiny_cookies)
    _kind, image, mask = _a_defect(root)
    beside = image.with_name(image.stem + suffix + ".png")
    shutil.copy(mask, beside)
    with pytest.raises(DataError, match="would be read as defective images") as e:
        AnomalyDataset(root, "test", size=32)
    assert beside.name in str(e.value)
    beside.unlink()
    mask.rename(mask.with_name(image.stem + suffix + ".png"))  # ground_truth/<kind>/000_GT.png
    ds = AnomalyDataset(root, "test", size=32)
    s = next(s for s in ds.samples if s.path == str(image))
    assert s.mask_path == str(mask.with_name(image.stem + suffix + ".png"))


def test_a_soft_edged_gt_mask_beside_its_image_is_refused(tiny_cookies: Path, tmp_path: Path):
    """KolektorSDD's masks resized with a smoothing filter have dozens of greys: as 'not black
    and white' they were scored as defective images (a review)."""
    root = _mvtec(tmp_path / "d", tiny_cookies)
    _, image, mask = _a_defect(root)
    m = Image.open(mask).convert("L")
    soft = m.resize((m.width * 4, m.height * 4), Image.NEAREST).resize(m.size, Image.BILINEAR)
    assert len(soft.getcolors()) > 8
    soft.save(image.with_name(image.stem + "_GT.png"))
    with pytest.raises(DataError, match="_GT.png \\(mask of"):
        AnomalyDataset(root, "test", size=32)


def test_a_mask_among_the_good_images_is_refused(tiny_cookies: Path, tmp_path: Path) -> None:
    root = _mvtec(tmp_path / "d", tiny_cookies)
    good = min((root / "train" / "good").glob("*.png"))
    _, _, mask = _a_defect(root)
    photo = good.with_name(good.stem + "_label.png")  # a photo of the part's label: an image
    shutil.copy(good, photo)
    assert len(AnomalyDataset(root, "train", size=32)) == len(list(good.parent.iterdir()))
    photo.unlink()
    shutil.copy(mask, good.with_name(good.stem + "_GT.png"))  # black and white: a mask
    with pytest.raises(DataError, match="would be read as a defect-free image") as e:
        AnomalyDataset(root, "train", size=32)
    assert good.stem + "_GT.png" in str(e.value)
    plain = tmp_path / "plain"
    shutil.copytree(root / "train" / "good", plain / "good")
    with pytest.raises(DataError, match="A good image needs no mask"):
        AnomalyDataset(plain, "train", size=32)


def test_masks_loose_in_train_are_said_to_be_masks(tiny_cookies: Path, tmp_path: Path) -> None:
    root = _mvtec(tmp_path / "d", tiny_cookies)
    _, image, mask = _a_defect(root)
    shutil.copy(image, root / "train" / "10000.png")
    shutil.copy(mask, root / "train" / "10000_GT.png")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        AnomalyDataset(root, "train", size=32)
    words = " ".join(str(w.message) for w in said)
    assert "10000_GT.png lies directly in train/, named as a mask" in words
    assert "10000.png lies directly" in words and "marks a defect is a defective image" in words
    assert "10000_GT.png" not in words.split("named as a mask")[1]  # not told to move it


@pytest.mark.parametrize("split", ["test", "train"])
def test_a_data_sets_split_folder_passed_as_the_data_set_is_refused(
    tiny_cookies: Path, tmp_path: Path, split: str
) -> None:
    root = _mvtec(tmp_path / "bottle", tiny_cookies)
    with pytest.raises(DataError, match=f"is the {split}/ folder of the data set") as e:
        AnomalyDataset(root / split, "train", size=32)
    assert f"Pass {root}:" in str(e.value)
    mine = tmp_path / "x" / split  # a plain data set of the user's named so, beside train/
    shutil.copytree(root / "test", mine)
    shutil.copytree(root / "train" / "good", mine / "good", dirs_exist_ok=True)
    (tmp_path / "x" / ("train" if split == "test" else "test")).mkdir()
    assert len(AnomalyDataset(mine, "train", size=32)) > 0


def test_loco_folders_of_masks_read_as_their_union(tiny_cookies: Path, tmp_path: Path) -> None:
    from anomaly.pixel_eval import full_size, masks_at

    root = _mvtec(tmp_path / "loco", tiny_cookies)
    _kind, image, mask = _a_defect(root)
    whole = np.asarray(Image.open(mask)) > 0
    folder = mask.parent / image.stem  # ground_truth/<kind>/000/000.png, 001.png
    folder.mkdir()
    top, bottom = whole.copy(), whole.copy()
    rows = np.nonzero(whole.any(1))[0]
    cut = rows[len(rows) // 2]
    top[cut:], bottom[:cut] = False, False
    assert top.any() and bottom.any()
    Image.fromarray(top.astype(np.uint8) * 255).save(folder / "000.png")
    Image.fromarray(bottom.astype(np.uint8) * 255).save(folder / "001.png")
    for other in mask.parent.glob("*_mask.png"):  # every image of the kind: a folder of masks
        if other != mask:
            (mask.parent / other.name.replace("_mask.png", "")).mkdir()
            shutil.move(other, mask.parent / other.name.replace("_mask.png", "") / "000.png")
    mask.unlink()
    ds = AnomalyDataset(root, "test", size=whole.shape[0])
    i, s = next((i, s) for i, s in enumerate(ds.samples) if s.path == str(image))
    assert s.mask_path == str(folder)
    assert np.array_equal(read_mask(s.mask_path), whole)
    assert np.array_equal(ds[i]["mask"].numpy() > 0, whole)
    assert np.array_equal(masks_at([s.mask_path], whole.shape)[0], whole.astype(np.uint8))
    assert full_size([s.mask_path]) == whole.shape
    (folder / "001.png").unlink()
    (folder / "000.png").unlink()
    with pytest.raises(DataError, match="no mask files in this folder"):
        AnomalyDataset(root, "test", size=32)


def test_validation_good_is_named_with_how_to_use_it(tiny_cookies: Path, tmp_path: Path):
    root = _mvtec(tmp_path / "loco", tiny_cookies)
    shutil.copytree(root / "test" / "good", root / "validation" / "good")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        AnomalyDataset(root, "train", size=32)
    words = " ".join(str(w.message) for w in said)
    assert "validation/good/ is not read" in words and "--good-images" in words


def test_the_package_imports_and_benchmarks_without_unix_only_functions() -> None:
    """Windows has no os.register_at_fork, os.getloadavg or `resource`: importing the detectors
    failed there (so did every command), and the benchmark could not start."""
    from helpers import fresh_python

    code = """
import os, sys
import numpy, onnxruntime, PIL, torch, torchvision  # they may use these at import: not ours
del os.register_at_fork, os.getloadavg
sys.modules["resource"] = None  # import resource: ImportError
import anomaly.detectors, anomaly.benchmark
from anomaly.benchmark import _load, _peak_mb
from anomaly.benchmark_tables import _load_line
assert _peak_mb() is None and _load() is None
print(_load_line(None, None))
"""
    done = fresh_python(code)
    assert done.returncode == 0, done.stderr
    assert "load average: not known on this system" in done.stdout


def test_a_record_saved_with_a_byte_order_mark_reads(tmp_path: Path) -> None:
    """Notepad and PowerShell 5 save a hand-edited threshold.json with a BOM (and CRLF): it was
    refused as "not a record this package wrote"."""
    from anomaly.safe_files import load_record

    path = tmp_path / "threshold.json"
    path.write_bytes(b'\xef\xbb\xbf{\r\n  "value": 9.5\r\n}\r\n')
    assert load_record(path) == {"value": 9.5}


def test_a_mask_matches_its_image_whatever_the_unicode_form_of_the_name(
    tiny_cookies: Path, tmp_path: Path
) -> None:
    import unicodedata

    root = _mvtec(tmp_path / "d", tiny_cookies)
    _, image, mask = _a_defect(root)
    composed = image.with_name(unicodedata.normalize("NFC", "Keks_ü") + image.suffix)
    image.rename(composed)
    decomposed = unicodedata.normalize("NFD", "Keks_ü") + "_mask.png"  # as macOS writes it
    mask.rename(mask.with_name(decomposed))
    ds = AnomalyDataset(root, "test", size=32)
    assert next(s for s in ds.samples if s.path == str(composed)).mask_path.endswith(decomposed)


def test_the_copied_reader_skips_windows_folder_files(tmp_path: Path) -> None:
    from anomaly.onnx_checks import image_paths

    Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "a.png")
    for name in ("Thumbs.db", "desktop.ini"):
        (tmp_path / name).write_bytes(b"\0")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert [Path(p).name for p in image_paths(tmp_path)] == ["a.png"]
    assert not said, [str(w.message) for w in said]


def test_a_path_starting_with_tilde_is_the_home_folders(
    tiny_cookies: Path, tmp_path: Path, monkeypatch
) -> None:
    """`--out=~/runs/x` (no shell expands ~ after =), notebooks and config files: a folder named
    "~" was made in the working folder, a trap for `rm -rf ~`."""
    from anomaly import predict_images
    from anomaly.cli import main

    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    shutil.copytree(tiny_cookies, home / "ck")
    flags = ["--method", "meandiff", "--size", "32"]
    assert main(["train", "--data=~/ck", "--out=~/runs/md", *flags]) == 0
    assert (home / "runs" / "md" / "model.pt").is_file() and not (work / "~").exists()
    image = next((home / "ck" / "test" / "good").iterdir())
    rows, _ = predict_images("~/runs/md", [f"~/ck/test/good/{image.name}"], overlays=False)
    assert rows[0].get("error") is None and rows[0]["verdict"] in ("PASS", "REJECT"), rows
    assert AnomalyDataset("~/ck", "test", size=32).root == home / "ck"
    assert not (work / "~").exists()
    shutil.copy(image, work / "~draft.png")  # an editor's file: no user "draft.png"
    assert main(["predict", "--run", str(home / "runs" / "md"), "~draft.png", "--no-overlays"]) == 0


def test_the_explorer_page_is_written_when_the_package_has_no_notebooks(
    tmp_path: Path, monkeypatch
) -> None:
    """Installed from a wheel, the package has no notebooks/: `explore` said the page was
    missing and to install from a clone."""
    import nbformat

    from anomaly.explorer import server

    monkeypatch.delenv(server.APP_ENV, raising=False)
    monkeypatch.setattr(server, "APP_NOTEBOOK", tmp_path / "gone" / "explorer_app.ipynb")
    path = server.app_notebook()
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert "app()" in nb.cells[-1].source and path.name == "explorer_app.ipynb"
    monkeypatch.setenv(server.APP_ENV, str(tmp_path / "mine.ipynb"))  # named, but not there
    with pytest.raises(FileNotFoundError, match="ANOMALY_EXPLORER_APP names the notebook"):
        server.app_notebook()


# --- a web service around the Python API (a helper's walkthrough) ---------------------------


@pytest.fixture(scope="module")
def md_run(tiny_cookies: Path, tmp_path_factory) -> Path:
    from anomaly.cli import main

    run = tmp_path_factory.mktemp("svc") / "md"
    args = ["train", "--data", str(tiny_cookies), "--method", "meandiff", "--size", "32"]
    assert main([*args, "--out", str(run)]) == 0
    return run


def test_uploads_score_as_their_files_do_and_are_named_as_given(
    md_run: Path, tiny_cookies: Path, tmp_path: Path, monkeypatch
) -> None:
    """A service holds an upload in memory: predict_images took paths only, and decoding it by
    hand for predict_batch moved scores by up to a quarter of the threshold."""
    import io
    import tempfile

    from anomaly import predict_images

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    files = sorted((tiny_cookies / "test").glob("*/*.png"))[:3]
    want, _ = predict_images(md_run, files, overlays=False)
    jpeg = io.BytesIO()
    Image.open(files[2]).save(jpeg, "JPEG", quality=95)
    named = io.BytesIO(files[0].read_bytes())
    named.name = "/client/side/part-17.png"
    uploads = [named, Image.open(files[1]), io.BytesIO(jpeg.getvalue()), io.BytesIO(b"not png")]
    got, _ = predict_images(md_run, uploads, overlays=False)
    assert [r["path"] for r in got] == ["part-17.png", files[1].name, "upload-2", "upload-3"]
    assert got[0]["score"] == want[0]["score"] and got[1]["score"] == want[1]["score"]
    assert abs(got[2]["score"] - want[2]["score"]) < 0.2 * abs(want[2]["score"])  # a JPEG
    assert got[3]["error"].startswith("upload-3") and "tmp" not in got[3]["error"], got[3]
    assert list((tmp_path / "tmp").iterdir()) == []  # the staged files are gone
    empty, _ = predict_images(md_run, [io.BytesIO(b"")], overlays=False)
    assert "error" in empty[0]  # an empty upload: an error row, not a crash


def test_a_kept_detector_scores_as_its_run_and_notices_a_new_model(
    md_run: Path, tiny_cookies: Path, tmp_path: Path
) -> None:
    from anomaly import load_run, predict_images
    from anomaly.runs import RunError
    from anomaly.threshold_file import model_sha256

    run = Path(shutil.copytree(md_run, tmp_path / "md"))
    det = load_run(run)
    assert det.run == run and det.model_sha256 == model_sha256(run / "model.pt")
    files = sorted((tiny_cookies / "test").glob("*/*.png"))[:2]
    want, _ = predict_images(run, files, overlays=False)
    got, _ = predict_images(det, files, overlays=False)
    assert [r["score"] for r in got] == [r["score"] for r in want]
    (run / "model.pt").write_bytes((run / "model.pt").read_bytes() + b"\0")  # another model
    with pytest.raises(RunError, match="is another than the one this detector was loaded"):
        predict_images(det, files, overlays=False)


def test_unlike_images_are_warned_of_and_said_in_their_results(
    md_run: Path, tiny_cookies: Path, tmp_path: Path
) -> None:
    """The words went to stderr by print: a service could neither log them nor tie them to a
    request."""
    from anomaly import predict_images

    grey = tmp_path / "grey.png"
    Image.open(min((tiny_cookies / "test" / "good").iterdir())).convert("L").save(grey)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        rows, _ = predict_images(md_run, [grey], overlays=False)
    assert "greyscale" in rows[0]["unlike"], rows
    assert any("grey.png" in str(w.message) and "greyscale" in str(w.message) for w in said)


def test_predict_batch_warns_of_an_empty_frame_and_no_overlay_is_drawn_without_overlays(
    md_run: Path, tiny_cookies: Path, monkeypatch
) -> None:
    import torch

    from anomaly import load_run, predict, predict_images

    det = load_run(md_run)
    batch = torch.rand(3, 3, 32, 32)
    batch[1] = 0.5  # a blank grey frame
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        det.predict_batch(batch)
    words = [str(w.message) for w in said if "flat colour" in str(w.message)]
    assert len(words) == 1 and "image 1 of the batch of 3" in words[0], words
    assert said[0].filename == __file__  # the caller's line

    def no_overlay(a):
        raise AssertionError("an overlay's picture was made for overlays=False")

    monkeypatch.setattr(predict, "overlay_tensor", no_overlay)
    good = sorted((tiny_cookies / "test" / "good").iterdir())
    rows, _ = predict_images(md_run, good, overlays=False)
    assert all("score" in r for r in rows)


def test_a_notebook_scores_again_a_run_its_metrics_predate(tiny_cookies: Path, tmp_path: Path):
    """Notebook 07 showed a run's pixel metrics from before they were computed at one size for
    every method, beside README's new ones (a helper's audit of the numbers)."""
    import json

    from anomaly.notebook_setup import Settings, ensure_run
    from anomaly.runs import RunDir

    s = Settings(True, "tiny", 32, 1, tmp_path / "data", tmp_path / "runs")
    run = RunDir(ensure_run(s, "meandiff", tiny_cookies))
    assert run.has_current_metrics()
    old = {k: v for k, v in run.metrics().items() if k != "pixel_metrics_size"}
    run.file(run.METRICS).write_text(json.dumps(old))
    assert run.has_metrics() and not run.has_current_metrics()
    assert ensure_run(s, "meandiff", tiny_cookies) == run.path and run.has_current_metrics()


def test_a_run_on_an_encoders_features_moves_with_its_encoder(tiny_cookies: Path, tmp_path: Path):
    """`--backbone encoder:RUN` recorded RUN's absolute path: copied with its encoder to another
    machine, the run could not be used (a packaging walkthrough)."""
    from helpers import tiny_config

    from anomaly import load_run
    from anomaly.pipeline import train_run
    from anomaly.runs import RunError

    here, there = tmp_path / "here", tmp_path / "there"
    train_run(tiny_config(tiny_cookies, "ae", epochs=1), here / "ae", progress=False)
    config = tiny_config(tiny_cookies, "patchknn", backbone=f"encoder:{here / 'ae'}")
    train_run(config, here / "pk", progress=False)
    shutil.copytree(here, there)
    shutil.rmtree(here)
    with pytest.warns(UserWarning, match="is not there; using .*there/ae beside it"):
        det = load_run(there / "pk")
    assert det.run == there / "pk"
    model = there / "ae" / "model.pt"
    model.write_bytes(model.read_bytes() + b"\0")  # another model beside it: not taken
    with pytest.raises(RunError, match="or put a copy of it beside"):
        load_run(there / "pk")


def test_uploads_as_services_hand_them_over(md_run: Path, tiny_cookies: Path, tmp_path: Path):
    """A review of the change: a PIL image lost its EXIF turn; a stream left at its end (Flask's
    save) read as empty; a client's 300-character or NUL name failed the whole call; raw bytes
    were dumped in the error; an async upload said 'coroutine never awaited'."""
    import asyncio
    import io

    from PIL import ImageOps

    from anomaly import predict_images

    file = min((tiny_cookies / "test" / "good").iterdir())
    turned = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter
    Image.open(file).transpose(Image.Transpose.ROTATE_90).save(turned, exif=exif, quality=95)
    want, _ = predict_images(md_run, [turned], overlays=False)
    stream = io.BytesIO(file.read_bytes())
    stream.read()  # saved once by the web framework: at its end
    stream.name = "x" * 300 + "\0.png"
    got, _ = predict_images(md_run, [Image.open(turned), stream], overlays=False)
    assert got[0]["score"] == pytest.approx(want[0]["score"], rel=1e-6)
    assert "score" in got[1] and len(got[1]["path"]) <= 150 and "\0" not in got[1]["path"]
    assert ImageOps.exif_transpose(Image.open(turned)).size == Image.open(file).size
    with pytest.raises(TypeError, match=r"wrap it, io.BytesIO\(data\)"):
        predict_images(md_run, [file.read_bytes()], overlays=False)

    class AsyncUpload:
        async def read(self):
            return file.read_bytes()

    with pytest.raises(TypeError, match="upload.file"):
        predict_images(md_run, [AsyncUpload()], overlays=False)
    asyncio.run(AsyncUpload().read())  # (no coroutine left unawaited)


def test_an_uploads_unlike_warning_names_the_upload(md_run: Path, tiny_cookies: Path):
    import io

    from anomaly import predict_images

    grey = io.BytesIO()
    Image.open(min((tiny_cookies / "test" / "good").iterdir())).convert("L").save(grey, "PNG")
    grey.name = "grey-upload.png"
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        rows, _ = predict_images(md_run, [grey], overlays=False)
    words = [str(w.message) for w in said if "greyscale" in str(w.message)]
    assert words and words[0].startswith("grey-upload.png:"), words
    assert "greyscale" in rows[0]["unlike"]


def test_a_kept_detector_still_finds_its_run_after_a_chdir(
    md_run: Path, tiny_cookies: Path, tmp_path: Path, monkeypatch
) -> None:
    from anomaly import load_run, predict_images

    monkeypatch.chdir(md_run.parent)
    det = load_run(md_run.name)  # a relative path
    monkeypatch.chdir(tmp_path)
    rows, _ = predict_images(det, [min((tiny_cookies / "test" / "good").iterdir())], overlays=False)
    assert "score" in rows[0]


def test_loco_folders_beside_mask_files_and_stray_folders(tiny_cookies: Path, tmp_path: Path):
    root = _mvtec(tmp_path / "loco", tiny_cookies)
    _, image, mask = _a_defect(root)
    folder = mask.parent / image.stem  # this image's masks as a folder, the others as files
    folder.mkdir()
    shutil.move(mask, folder / "000.png")
    ds = AnomalyDataset(root, "test", size=32)
    masked = {s.path: s.mask_path for s in ds.samples if s.label}
    assert masked[str(image)] == str(folder) and all(masked.values())
    (mask.parent / "._001_mask.png").write_bytes(b"\0\5\26\7")  # macOS's sidecar: no mask
    assert len(AnomalyDataset(root, "test", size=32)) == len(ds)
    (mask.parent / "999").mkdir()  # a folder of masks for no image
    with pytest.raises(DataError, match="999: this folder of masks matches no image"):
        AnomalyDataset(root, "test", size=32)


# --- a camera's hot folder (a helper's walkthrough) -------------------------------------------


def _zero_tail(src: Path, dest: Path, kept: float) -> Path:
    """`src` as a camera that sets the file's size first leaves it part-way: zeros after."""
    data = src.read_bytes()
    k = int(len(data) * kept)
    dest.write_bytes(data[:k] + b"\0" * (len(data) - k))
    return dest


def test_files_still_being_written_get_an_error_row_from_both_readers(
    md_run: Path, tiny_cookies: Path, tmp_path: Path
) -> None:
    """A JPEG filled in after its size was set decoded without a word (its zeros as grey, a
    REJECT); such a PNG stopped `predict --onnx` with a SyntaxError traceback."""
    from anomaly import predict_images
    from anomaly.onnx_checks import unfinished
    from anomaly.onnx_predict import ExportError, read_file

    src = min((tiny_cookies / "test" / "good").iterdir())
    whole = tmp_path / "whole.jpg"
    Image.open(src).resize((256, 256)).save(whole, quality=95)
    padded = tmp_path / "padded.jpg"  # whole, then zeros: some cameras pad so
    padded.write_bytes(whole.read_bytes() + b"\0" * 4096)
    filling = _zero_tail(whole, tmp_path / "filling.jpg", 0.3)
    png = tmp_path / "whole.png"
    Image.open(src).save(png)
    filling_png = _zero_tail(png, tmp_path / "filling.png", 0.5)
    assert unfinished(whole, "JPEG") is None and unfinished(padded, "JPEG") is None
    assert "still being written" in unfinished(filling, "JPEG")
    assert unfinished(png, "PNG") is None and "PNG ends" in unfinished(filling_png, "PNG")
    rows, _ = predict_images(md_run, [whole, padded, filling, filling_png], overlays=False)
    assert "score" in rows[0] and "score" in rows[1], rows
    assert "still being written" in rows[2]["error"] and "still being written" in rows[3]["error"]
    for path in (filling, filling_png):
        with pytest.raises(ExportError, match=f"{path.name}: .*still being written"):
            read_file(path, 32)
    trailing = tmp_path / "motion.jpg"  # a motion photo: a video after the picture, then zeros
    trailing.write_bytes(whole.read_bytes() + np.random.default_rng(0).bytes(50_000) + b"\0" * 64)
    assert unfinished(trailing, "JPEG") is None


def test_a_cameras_one_file_name_is_named_in_constant_time(tmp_path: Path) -> None:
    from anomaly.predict import OverlayNames, overlay_name

    path = Path("hot") / "frame.jpg"
    plain, fast = set(), OverlayNames()
    names = [overlay_name(path, fast) for _ in range(400)]
    assert names == [overlay_name(path, plain) for _ in range(400)]  # the same names
    assert names[:3] == ["frame_overlay.png", "hot_frame_overlay.png", "hot_frame_2_overlay.png"]
    tried = []
    real_contains = OverlayNames.__contains__
    OverlayNames.__contains__ = lambda self, x: tried.append(x) or real_contains(self, x)
    try:
        overlay_name(path, fast)
    finally:
        OverlayNames.__contains__ = real_contains
    assert len(tried) <= 3  # not one look per earlier name


def test_partial_copies_are_skipped_without_a_word(md_run: Path, tiny_cookies: Path, tmp_path):
    from anomaly import predict_images
    from anomaly.onnx_checks import image_paths

    hot = tmp_path / "hot"
    hot.mkdir()
    shutil.copy(min((tiny_cookies / "test" / "good").iterdir()), hot / "a.png")
    for name in ("b.png.part", "c.jpg.crdownload", "d.tmp", "e.png~", "f.png.filepart"):
        (hot / name).write_bytes(b"\x89PNG half")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        rows, _ = predict_images(md_run, hot, overlays=False)
        assert [Path(p).name for p in image_paths(hot)] == ["a.png"]
    assert [Path(r["path"]).name for r in rows] == ["a.png"]
    assert not [w for w in said if "skipping" in str(w.message)], [str(w.message) for w in said]


def test_no_more_decoding_processes_than_batches_after_the_first(tiny_cookies: Path) -> None:
    """Under spawn (macOS, Windows) each worker imports torch again: a run trained with
    --workers 2 took 8 s to predict one image, 3 s without (a packaging walkthrough)."""
    from anomaly.config import Config
    from anomaly.pipeline import decoding_loader

    data = AnomalyDataset(tiny_cookies, "test", size=32)
    config = Config.for_method("meandiff").replace(workers=2, batch_size=2)
    assert len(data) >= 6
    assert decoding_loader(data.subset([0, 1]), config).num_workers == 0  # one batch
    assert decoding_loader(data.subset(range(3)), config).num_workers == 1
    assert decoding_loader(data.subset(range(6)), config).num_workers == 2


def test_the_explorer_of_a_moved_run_says_how_to_show_its_images(tiny_cookies, tmp_path):
    from anomaly.cli import main
    from anomaly.explorer import ThresholdExplorer

    data, run = tmp_path / "ck", tmp_path / "md"
    shutil.copytree(tiny_cookies, data)
    assert (
        main(
            ["train", "--data", str(data), "--method", "meandiff", "--size", "32"]
            + ["--out", str(run)]
        )
        == 0
    )
    assert main(["score", "--run", str(run), "--no-overlays"]) == 0
    data.rename(tmp_path / "elsewhere")
    title = ThresholdExplorer([str(run)]).gallery.title.value
    assert (
        "images not found under" in title
        and f"score --run {run} --data NEW_PATH --out {run}" in title
    )


def test_metrics_record_how_masks_were_read(md_run: Path, tmp_path: Path) -> None:
    """An upgrade walkthrough: a run scored on soft-edged masks before 2026-12-05 and again after
    gave another AUPRO, with nothing recorded to tell the two apart."""
    from anomaly.data.masks import MASK_READING
    from anomaly.pipeline import score_run

    run = Path(shutil.copytree(md_run, tmp_path / "md"))
    _, metrics = score_run(run, overlays=False)
    assert metrics["mask_reading"] == MASK_READING == 2


def test_the_rule_is_taken_as_threshold_json_and_the_messages_spell_it(md_run, tmp_path):
    """The messages and threshold.json say normal_quantile; --rule took normal-quantile only
    (a README review)."""
    from anomaly.cli import main

    run = Path(shutil.copytree(md_run, tmp_path / "md"))
    assert (
        main(["threshold", "--run", str(run), "--rule", "normal_quantile", "--value", "0.9"]) == 0
    )
    assert json.loads((run / "threshold.json").read_text())["rule"] == "normal_quantile"


def test_a_faint_separate_scratch_beside_a_bright_blob_is_kept(tmp_path: Path) -> None:
    """A floor of an eighth of the whole mask's maximum dropped a scratch that a tenfold
    downscale had dimmed to 22 beside a 255 blob (a third review); each region has its own."""
    from PIL import ImageDraw

    from anomaly.data.masks import soft_cut

    big = Image.new("L", (2000, 2000))
    draw = ImageDraw.Draw(big)
    draw.ellipse((200, 200, 800, 800), fill=255)
    draw.line((1200, 300, 1800, 1700), fill=255, width=1)
    small = big.resize((200, 200), Image.BILINEAR)
    a, got = np.asarray(small), soft_cut(small, tmp_path / "m.png")
    assert a[:, 110:].max() < 32 and got[:, 110:].sum() > 0.3 * (a[:, 110:] > 0).sum()


def test_a_whole_jpeg_with_stray_bytes_between_segments_is_whole(tmp_path: Path) -> None:
    import io

    from anomaly.onnx_checks import unfinished

    out = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 120, 150)).save(out, "JPEG")
    data = out.getvalue()
    app0_end = 4 + int.from_bytes(data[4:6], "big")  # SOI, then APP0's length
    odd = data[:app0_end] + b"\0" * 4 + data[app0_end:] + b"\0" * 512  # libjpeg reads it
    (tmp_path / "odd.jpg").write_bytes(odd)
    assert Image.open(tmp_path / "odd.jpg").convert("RGB").size == (64, 48)
    assert unfinished(tmp_path / "odd.jpg", "JPEG") is None


def test_a_service_bounds_decoding_with_pillows_pixel_limit(md_run, tiny_cookies, monkeypatch):
    """README: a service that must bound its memory sets PIL.Image.MAX_IMAGE_PIXELS; an image
    of over twice that many pixels gets an error row (a 12000 px PNG decoded to 4.9 GB)."""
    import PIL.Image

    from anomaly import predict_images

    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    image = min((tiny_cookies / "test" / "good").iterdir())  # 64 x 64: 4096 > 2 x 1000
    rows, _ = predict_images(md_run, [image], overlays=False)
    assert "too large to decode safely" in rows[0]["error"]
