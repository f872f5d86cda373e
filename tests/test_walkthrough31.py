"""Session 31's fixes: each test fails without its fix."""

from __future__ import annotations

import pytest
from helpers import deploy_copy, fresh_python, patchknn_export

from anomaly.config import Config


def test_predict_onnx_says_when_trains_threshold_rests_on_a_handful(tiny_cookies, tmp_path, capsys):
    """`predict --run` repeated train's note that its threshold rests on a handful of held-out
    images (session 30); `predict --onnx` of the same run's export said nothing: the export
    left out the params that tell train's threshold (set_by, on_training_images)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from anomaly.cli import main
    from anomaly.pipeline import train_run

    run = tmp_path / "pk"
    config = Config.for_method("patchknn", data=str(tiny_cookies), size=64, device="cpu")
    train_run(config, run, progress=False)
    assert main(["export", "--run", str(run)]) == 0
    image = str(min((tiny_cookies / "test" / "good").glob("*.png")))
    assert main(["predict", "--run", str(run), "--no-overlays", image]) == 0
    said = capsys.readouterr().err.splitlines()
    assert main(["predict", "--onnx", str(run / "model.onnx"), "--no-overlays", image]) == 0
    err = capsys.readouterr().err
    note = next(line for line in said if "quantile of only" in line)
    assert f"{note}; then export the run again: python -m anomaly export --run {run}" in err
    # onnx_predict.py copies deployed before it refuse params they do not know (a review):
    # train's mark is a metadata key of its own, which they pass over
    import json

    from anomaly.onnx_predict import OnnxDetector

    meta = OnnxDetector(run / "model.onnx").meta
    known = "alpha q false_reject_rate escape_rate n n_normal rank guarantee earlier_model"
    assert set(json.loads(meta["threshold_params"])) <= {*known.split(), "in_sample"}
    assert meta["threshold_train"] == "held_out"


def test_onnx_predict_py_runs_from_the_shell_without_the_package(tiny_cookies, tmp_path):
    """Deployed without the package, the copied file had no command line: a user wrote a
    script to score a folder. `python onnx_predict.py MODEL FOLDER` prints a row per image,
    and a damaged file is a row of its own (ERROR) with why on stderr, and exit status 2."""
    import shutil

    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import anomaly.onnx_checks
    import anomaly.onnx_predict
    from anomaly.export import predict_onnx

    model = patchknn_export(tiny_cookies, tmp_path / "pk")
    deployed = deploy_copy(tmp_path / "deployed").parent
    folder = tmp_path / "to check"
    folder.mkdir()
    files = sorted((tiny_cookies / "test" / "good").glob("*.png"))[:2]
    for f in files:
        shutil.copy(f, folder / f.name)
    (folder / "zz cut.png").write_bytes(files[0].read_bytes()[:60])
    code = (
        "import sys, runpy; sys.modules['anomaly'] = None; "
        f"sys.argv = ['onnx_predict.py', {str(model)!r}, {str(folder)!r}]; "
        "runpy.run_path('onnx_predict.py', run_name='__main__')"
    )
    done = fresh_python(code, deployed)
    rows = [line.split("\t") for line in done.stdout.splitlines()]
    scores, _ = predict_onnx(model, files)
    threshold = anomaly.onnx_predict.OnnxDetector(model).threshold
    want = [
        [
            str(folder / f.name),
            anomaly.onnx_checks.score_text(float(s), threshold),
            "REJECT" if s >= threshold else "PASS",
        ]
        for f, s in zip(files, scores)
    ]
    assert done.returncode == 2, done.stderr
    assert rows == [*want, [str(folder / "zz cut.png"), "-", "ERROR"]]
    assert f"threshold {threshold!r} (normal_quantile" in done.stderr
    assert "zz cut.png: cannot read this image" in done.stderr


def test_score_computes_pixel_metrics_at_one_size_for_every_method(tiny_cookies, tmp_path):
    """A metrics audit: pixel AUROC and AUPRO were computed at each method's own size, against
    masks resized to it, so rows of one table had other ground truths (AUPRO up to 0.23 apart
    from the masks' own 256 px). `score` now brings maps and masks to EVAL_SIZE first."""
    from anomaly.metrics import aupro, pixel_auroc
    from anomaly.pipeline import score_run, train_run
    from anomaly.pixel_eval import EVAL_SIZE, at_eval_size

    run = tmp_path / "pk"
    config = Config.for_method("patchknn", data=str(tiny_cookies), size=48, device="cpu")
    train_run(config, run, progress=False)
    pred, metrics = score_run(run)
    assert pred.maps.shape[-1] == 48 and metrics["pixel_metrics_size"] == EVAL_SIZE
    masks = {str(p): None for p in pred.paths}
    for mask in (tiny_cookies / "ground_truth").rglob("*_mask.png"):
        kind, stem = mask.parent.name, mask.name.removesuffix("_mask.png")
        masks[str(tiny_cookies / "test" / kind / f"{stem}.png")] = str(mask)
    pixels = at_eval_size(pred, [masks[str(p)] for p in pred.paths])
    assert pixels.masks.shape == pixels.maps.shape == (len(pred), EVAL_SIZE, EVAL_SIZE)
    assert metrics["pixel_auroc"] == pytest.approx(pixel_auroc(pixels.masks, pixels.maps))
    assert metrics["aupro"] == pytest.approx(aupro(pixels.masks, pixels.maps))
    assert metrics["aupro"] != pytest.approx(aupro(pred.masks, pred.maps), abs=1e-6)


def test_the_curves_aupro_leaves_out_defects_without_a_mask(tiny_cookies, tmp_path):
    """The train-size curve scored a defective image without a mask file as all-normal pixels
    (`score` leaves it out): its AUPRO was another number than `score`'s for the same model."""
    import shutil

    from anomaly.benchmark_curves import _aupro
    from anomaly.data import AnomalyDataset
    from anomaly.detectors import get_detector
    from anomaly.metrics import evaluate
    from anomaly.pixel_eval import at_eval_size

    data = tmp_path / "nomask"
    shutil.copytree(tiny_cookies, data)
    shutil.rmtree(next((data / "ground_truth").iterdir()))
    with pytest.warns(UserWarning, match="no mask"):
        test = AnomalyDataset(data, "test", size=48)
    config = Config.for_method("patchknn", data=str(data), size=48, device="cpu")
    detector = get_detector("patchknn")(config)
    detector.fit(AnomalyDataset(data, "train", size=48), progress=False)
    pred = detector.predict(test)
    assert pred.mask_known is not None and not pred.mask_known.all()
    want = evaluate(at_eval_size(pred, [s.mask_path for s in test.samples]))["aupro"]
    assert _aupro(pred, test) == pytest.approx(want)


def test_score_prints_three_decimals_and_suite_means_need_every_set():
    """A metrics audit: `score` printed 0.99951 as a bare "1" (`.3g`), and a suite's mean pixel
    metric skipped sets without one, under a "sets" count that included them."""
    from anomaly.benchmark_tables import summarize
    from anomaly.decision import score_summary

    metrics = {"image_auroc": 0.99951, "image_auroc_ci": [0.9951, 1.0], "pixel_auroc": 0.9}
    line = score_summary([0, 1], [0.1, 0.9], metrics).splitlines()[1]
    assert line.startswith("image_auroc 1.000 (95 % interval 1.00-1.00)  pixel_auroc 0.900")
    rows = [
        {"suite": "s", "method": "m", "set": "a", "image_auroc": 0.9, "pixel_auroc": 0.99},
        {"suite": "s", "method": "m", "set": "b", "image_auroc": 0.7, "pixel_auroc": None},
    ]
    (summary,) = summarize(rows)
    assert summary["sets"] == 2 and summary["mean_image_auroc"] == pytest.approx(0.8)
    assert summary["mean_pixel_auroc"] is None


def test_a_runs_dataset_keeps_its_split_after_a_good_image_is_removed(tiny_cookies, tmp_path):
    """A walkthrough: after one photo was removed from good/, `load_run(run).dataset(root,
    "test")` split good/ anew by the holdout rule and put a trained image among the test
    images (its AUROC was not `score`'s); it now reads the run's split.json, as `score` does."""
    import shutil

    import anomaly
    from anomaly.pipeline import score_run, train_run

    data = tmp_path / "mine"
    (data / "good").mkdir(parents=True)
    goods = sorted((tiny_cookies / "train" / "good").glob("*.png"))[:10]
    for f in goods:
        shutil.copy(f, data / "good" / f.name)
    shutil.copytree(tiny_cookies / "test" / "crack", data / "crack")
    run = tmp_path / "run"
    config = Config.for_method("patchknn", data=str(data), size=48, device="cpu")
    train_run(config, run, progress=False)
    (data / "good" / goods[0].name).unlink()  # before the first test image: the rule shifts
    pred, _ = score_run(run)
    test = anomaly.load_run(run).dataset(data, "test")
    assert sorted(test.paths) == sorted(pred.paths)


def test_notebook_07s_helpers_take_a_plain_folder_and_never_reuse_a_run_of_other_data(
    tiny_cookies, tmp_path, monkeypatch
):
    """A walkthrough with notebook 07's helpers on one's own photos (the plain layout: good/
    and a folder per defect kind): `own.train` reused the stand-in's run, trained on other
    data, saying only "using the trained run"; `own.loader_checks` failed (FileNotFoundError:
    train/good); `own.folder_tree` counted Thumbs.db and .DS_Store as images."""
    import shutil
    from dataclasses import replace

    from anomaly import notebook as nb
    from anomaly import notebook_photos as own
    from anomaly import pipeline

    mine = tmp_path / "mine"
    shutil.copytree(tiny_cookies / "train" / "good", mine / "good")
    shutil.copytree(tiny_cookies / "test" / "crack", mine / "crack")
    for name in ("Thumbs.db", ".DS_Store", "._000.png"):  # ._: a macOS sidecar, sorted first
        (mine / "good" / name).write_bytes(b"not a picture")
    n = len(list((tiny_cookies / "train" / "good").glob("*.png")))
    assert f"good/{'':<19} {n:>4} images, 1 other files (not read)" in own.folder_tree(mine)
    found = dict(own.loader_checks(mine))
    assert len(found) == 3 and "not caught" not in found.values(), found
    monkeypatch.setenv(nb.HOME_ENV, str(tmp_path / "home"))
    p = replace(own.photo_settings(nb.settings(smoke=True)), run=tmp_path / "runs" / "coins")
    cheap = Config.for_method("meandiff", data=str(tiny_cookies), size=32)
    pipeline.train_run(cheap, tmp_path / "runs" / "mine", progress=False)  # other data's
    with pytest.raises(ValueError, match=r"holds a run trained on .*cookies.*, not on .*mine"):
        own.train(p, mine)


def _sixteen(path, peak: int, seed: int = 0, shape=(40, 48)):
    """A 16-bit greyscale PNG whose values reach `peak` (4095: a camera's 12-bit data)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    a = (rng.random(shape) * peak).astype(np.uint16)
    a.flat[0] = peak
    Image.fromarray(a).save(path)  # mode I;16
    return path


def test_12_bit_data_in_16_bit_files_is_named_beside_full_range_ones(tmp_path):
    """A walkthrough with a monochrome camera: 12-bit data saved in 16-bit files (0-4095 of
    0-65535) beside full-range 16-bit files was never named (the same part scored PASS or
    REJECT by how it was saved), and a run trained on 12-bit data scored a full-range image at
    42.9 without a word. Now train names the mixture, split.json records the largest values,
    and an image far outside them is named, as predict names other unlike images."""
    import io
    import warnings

    from anomaly.data.image_kind import image_kind, summarize
    from anomaly.data.image_unlike import unlike, warn_mixed, warn_unlike
    from anomaly.onnx_checks import is_images_record

    twelve = [_sixteen(tmp_path / f"a{i}.png", 4095, i) for i in range(3)]
    full = [_sixteen(tmp_path / f"b{i}.png", 65535, i) for i in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        said = warn_mixed(twelve + full, 1, 32)
    assert len(said) == 1 and "3 of the 6 training images" in said[0]
    assert "values only up to 4095 of 65535, others up to 65535" in said[0]
    assert "a0.png" in said[0] and "b0.png" not in said[0]
    record = summarize(twelve)
    assert record["peak"] == [4095, 4095] and is_images_record(record)
    assert not is_images_record({**record, "peak": [4095, 70000]})
    assert warn_unlike([twelve[1]], record, 1, 32, io.StringIO()) == []
    (told,) = warn_unlike([full[0]], record, 1, 32, io.StringIO())
    assert "values up to 65535 of 65535, the training images' up to 4095:" in told
    assert unlike(image_kind(twelve[0], peak=True), summarize(full), 1, 32)  # the other way


def test_16_bit_images_are_drawn_as_the_model_reads_them_not_white(tmp_path):
    """score's overlays, the explorer's gallery and its report drew every 16-bit image white:
    `read_rgb` converted it to RGB, which clips every value above 255."""
    import numpy as np
    from PIL import Image

    from anomaly.data.image_kind import read_rgb

    path = _sixteen(tmp_path / "part.png", 65535)
    drawn = read_rgb(path)
    assert drawn.shape == (40, 48, 3) and drawn.dtype == np.uint8
    assert 60 < drawn.mean() < 200  # uniform noise over the full range: mid-grey, not white
    want = np.round(np.asarray(Image.open(path), dtype=np.float32) / 65535 * 255)
    np.testing.assert_array_equal(drawn[..., 0], want.astype(np.uint8))


def test_a_16_bit_batchs_fix_says_65535_not_its_largest_value():
    """predict_batch told a uint16 batch to divide by "the largest value": 12-bit data divided
    by 4095 scored 42.9 for a good part the files (divided by 65535) scored 6.1."""
    import torch

    from anomaly.detectors.inputs import check_batch

    config = Config.for_method("meandiff", size=8, channels=1)
    batch = torch.full((1, 1, 8, 8), 4095, dtype=torch.int16)
    with pytest.raises(ValueError, match=r"images.float\(\) / 65535 for 16-bit pixels"):
        check_batch(config, batch, "meandiff")
    with pytest.raises(ValueError, match=r"divide 0-255 values by 255 and 16-bit ones by 65535"):
        check_batch(config, batch.float(), "meandiff")


def test_a_mask_of_another_size_and_a_damaged_image_are_named_at_once(tiny_cookies, tmp_path):
    """`score` stopped at a mask of another size than its image, then, run again, at a damaged
    image: each problem took another run to find. Both are named in one error now."""
    import shutil

    from PIL import Image

    from anomaly.data import AnomalyDataset, DataError

    data = tmp_path / "d"
    shutil.copytree(tiny_cookies, data)
    mask = min((data / "ground_truth" / "crack").glob("*.png"))
    Image.open(mask).resize((10, 10)).save(mask)
    broken = min((data / "test" / "good").glob("*.png"))
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError) as caught:
        AnomalyDataset(data, "test", size=32)
    said = str(caught.value)
    assert said.startswith(str(broken)) and f"Not usable either: {mask}" in said


def test_maps_and_masks_at_the_evaluation_size(tmp_path):
    """`pixel_eval`: a larger map (auto's 448 px) is shrunk with antialiasing, a smaller one
    enlarged; a mask is read from its file at 256 px, a 1 px defect kept; no mask: zeros."""
    import numpy as np
    from PIL import Image

    from anomaly.pixel_eval import EVAL_SIZE, maps_at, masks_at

    big = np.zeros((1, 448, 448), np.float32)
    big[0, ::2] = 1.0  # stripes one pixel wide: antialiased, they average out
    shrunk = maps_at(big)
    assert shrunk.shape == (1, EVAL_SIZE, EVAL_SIZE) and np.ptp(shrunk[0, 8:-8, 8:-8]) < 0.2
    assert np.allclose(maps_at(np.full((2, 64, 64), 3.0, np.float32)), 3.0)
    speck = np.zeros((1024, 1024), np.uint8)
    speck[500, 700] = 255
    Image.fromarray(speck).save(tmp_path / "m.png")
    masks = masks_at([str(tmp_path / "m.png"), None])
    assert masks.dtype == np.uint8 and masks[0].sum() >= 1 and masks[1].sum() == 0


def test_review_of_the_session_16_bit_big_endian_and_peaks_only_where_asked(tmp_path):
    """A review: getextrema refuses big-endian 16-bit TIFFs (I;16B), and image_kind then gave
    None, which switched every check of the training images off; and every 16-bit image was
    decoded in full just for its kind, even for runs without the record."""
    import numpy as np
    from PIL import Image

    from anomaly.data.image_kind import image_kind, summarize

    a = np.full((12, 16), 4000, ">u2")
    Image.frombytes("I;16B", (16, 12), a.tobytes()).save(tmp_path / "be.tif")
    assert image_kind(tmp_path / "be.tif", peak=True)["peak"] == 4000
    assert "peak" not in image_kind(tmp_path / "be.tif")  # not decoded unless asked
    assert summarize([tmp_path / "be.tif"])["peak"] == [4000, 4000]


def test_review_of_the_session_onnx_paths_and_integer_batches(tmp_path):
    """A review: "" stood for the working folder (every image in it scored), a file given with
    its folder was scored twice, other files of a folder were left out without a word; and an
    int64 batch of 8-bit values was told to divide by 65535 (near black, scored silently)."""
    import shutil

    import torch

    from anomaly.detectors.inputs import check_batch
    from anomaly.onnx_checks import image_paths

    (tmp_path / "a.png").write_bytes(b"x")
    shutil.copy(tmp_path / "a.png", tmp_path / "b.PNG")
    (tmp_path / "notes.txt").write_text("x")
    assert image_paths("") == [""]
    with pytest.warns(UserWarning, match=r"skipping 1 other files \('notes.txt'\)"):
        both = image_paths([tmp_path / "a.png", tmp_path])
    assert both == [tmp_path / "a.png", tmp_path / "b.PNG"]
    config = Config.for_method("meandiff", size=8, channels=1)
    with pytest.raises(ValueError, match=r"images.float\(\) / 255 for 8-bit values"):
        check_batch(config, torch.randint(0, 256, (1, 1, 8, 8)), "meandiff")


def test_review_of_the_session_a_nan_score_is_no_pass_from_the_shell(monkeypatch, capsys):
    """A review: `python onnx_predict.py` printed PASS for a NaN score (a damaged graph) and
    exited 0, where `predict --onnx` says REJECT and names it."""
    import math

    import anomaly.onnx_predict as op

    class Fake:
        threshold, meta, threshold_params = 1.0, {}, None

        def __init__(self, path):
            pass

    monkeypatch.setattr(op, "OnnxDetector", Fake)
    monkeypatch.setattr(op, "predict_each", lambda d, images: [("x.png", math.nan, None, None)])
    assert op.main(["m.onnx", "x.png"]) == 2
    out, err = capsys.readouterr()
    assert out.split("\t") == ["x.png", "-", "ERROR\n"] and "its score is nan" in err


def test_a_deployed_onnx_predict_uses_its_onnx_checks_beside_an_older_package(tmp_path):
    """A review: with an older anomaly package installed, `from anomaly import onnx_checks`
    found one without the new checks, and the copy beside the file was never tried
    (AttributeError on loading)."""

    old = tmp_path / "old" / "anomaly"
    old.mkdir(parents=True)
    (old / "__init__.py").write_text("")
    (old / "onnx_checks.py").write_text(  # as at b210740: array_fault, but not escaped
        "def graph_ops(data): return set(), []\ndef array_fault(x, want): return None\n"
    )
    here = deploy_copy(tmp_path / "deployed").parent
    code = "import onnx_predict as o; print(o._checks.__file__)"
    done = fresh_python(code, here, {"PYTHONPATH": str(tmp_path / "old"), "PATH": "/usr/bin:/bin"})
    assert done.stdout.strip() == str(here / "onnx_checks.py"), done.stderr


def test_a_check_of_readmes_trust_claims(tiny_cookies, tmp_path, capsys):
    """A helper tested README's trust claims as a user would. predict printed a file name's
    control characters raw in its per-image warnings and errors; `threshold --rule manual`
    saved a threshold on a model from the middle of its training (every other rule refused,
    but normal-quantile and f1 told to train again or to score, which both refuse it); a pipe
    in place of val_scores.json read as a missing file; score wrote its files before refusing
    a linked overlays/; one bare array given to predict_onnx was split into its rows."""
    import os
    import shutil

    import torch
    from PIL import Image

    from anomaly.calibration import set_threshold
    from anomaly.cli import main
    from anomaly.onnx_checks import image_paths
    from anomaly.pipeline import score_run, train_run
    from anomaly.runs import RunError

    run = tmp_path / "ae"
    config = Config.for_method("ae", data=str(tiny_cookies), size=32, epochs=1, device="cpu")
    train_run(config, run, progress=False)
    folder = tmp_path / "cc"
    folder.mkdir()
    good = min((tiny_cookies / "test" / "good").glob("*.png"))
    Image.open(good).convert("L").save(folder / "g\x1b[31mred.png")  # greyscale: warned
    (folder / "bad\x07.png").write_bytes(b"x")
    assert main(["predict", "--run", str(run), "--no-overlays", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and "g\\x1b[31mred.png" in err
    # a pipe where val_scores.json goes: named as such
    scores = run / "val_scores.json"
    scores.rename(tmp_path / "kept.json")
    os.mkfifo(scores)
    with pytest.raises(RunError, match=r"val_scores.json is not a file \(a pipe"):
        set_threshold(run, "normal-quantile")
    scores.unlink()
    # a model from the middle of its training: every rule, manual too, points to --resume
    model = (run / "model.pt").read_bytes()
    payload = torch.load(run / "model.pt", weights_only=True)
    torch.save({**payload, "complete": False}, run / "model.pt")
    for rule, value in (("manual", 0.3), ("normal-quantile", None), ("f1", None)):
        with pytest.raises(RunError, match=r"interrupted in the middle of its training.*--resume"):
            set_threshold(run, rule, value)
    (run / "model.pt").write_bytes(model)
    shutil.copy(tmp_path / "kept.json", scores)
    # a linked overlays/: refused before anything is written
    (tmp_path / "elsewhere").mkdir()
    shutil.rmtree(run / "overlays", ignore_errors=True)
    (run / "overlays").symlink_to(tmp_path / "elsewhere")
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file()}
    with pytest.raises(RunError, match="overlays is a symbolic link"):
        score_run(run)
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file()} == before
    # one array [C, S, S]: one image, not its rows
    array = torch.zeros(3, 8, 8).numpy()
    assert len(image_paths(array)) == 1 and len(image_paths(array[None].repeat(2, 0))) == 2


def test_a_kmeans_runs_note_does_not_suggest_its_ignored_val_fraction():
    """kmeans ignores its own --val-fraction (it holds out what its --from run held out), yet
    train's note on a handful of held-out images told it to raise --val-fraction."""
    from anomaly.decision import few_held_out
    from anomaly.metrics import Threshold

    t = Threshold(9.0, "normal_quantile", {"set_by": "train", "n_normal": 3, "q": 0.99})
    assert "(--val-fraction)" in few_held_out(t, "runs/x")
    assert "(--val-fraction of its --from run" in few_held_out(t, "runs/x", Config(method="kmeans"))
    assert "\x1b" not in few_held_out(t, "runs/\x1b[2Jx")  # a path typed or found: escaped


def test_review_of_the_trust_fixes_resumed_runs_and_terminal_lines(tiny_cookies, tmp_path, capsys):
    """A review of the trust fixes: a `--resume` killed in its first epoch (or still running)
    keeps the earlier model's val_scores.json, so the interrupted-run check, which looked only
    for a missing val_scores.json, let `--rule manual` through and others blamed a "copied"
    file; a run killed before its first epoch was saved was told to --resume, which refuses;
    a file name's new line or C1 control (U+009B) still reached stderr raw; a pipe named
    overlays/ was refused only after score wrote its files."""
    import os
    import shutil
    import subprocess
    import sys

    import torch
    from PIL import Image

    from anomaly.calibration import set_threshold
    from anomaly.cli import main
    from anomaly.pipeline import score_run, train_run
    from anomaly.runs import RunError

    run = tmp_path / "ae"
    config = Config.for_method("ae", data=str(tiny_cookies), size=32, epochs=1, device="cpu")
    train_run(config, run, progress=False)
    model = (run / "model.pt").read_bytes()
    payload = torch.load(run / "model.pt", weights_only=True)
    torch.save({**payload, "complete": False, "resumed": 1}, run / "model.pt")  # another SHA
    with pytest.raises(RunError, match=r"middle of its training.*--resume"):
        set_threshold(run, "manual", 0.5)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".lock").write_text(f'{{"pid": {sleeper.pid}, "command": "train"}}')
        with pytest.raises(RunError, match="is in use"):
            set_threshold(run, "normal-quantile")
    finally:
        sleeper.kill()
        (run / ".lock").unlink()
    (run / "last.pt").unlink()
    with pytest.raises(RunError, match=r"before its first epoch was saved whole; train it again"):
        set_threshold(run, "manual", 0.5)
    (run / "model.pt").write_bytes(model)
    folder = tmp_path / "names"
    folder.mkdir()
    good = min((tiny_cookies / "test" / "good").glob("*.png"))
    Image.open(good).convert("L").save(folder / "gr\u009bay.png")
    (folder / "bro\nken.png").write_bytes(b"x")
    assert main(["predict", "--run", str(run), "--no-overlays", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "\u009b" not in err and "bro\\nken.png" in err and "\nken.png" not in err
    shutil.rmtree(run / "overlays", ignore_errors=True)
    os.mkfifo(run / "overlays")
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file()}
    with pytest.raises(RunError, match="overlays is a file where"):
        score_run(run)
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file()} == before


def test_a_suggested_command_writes_a_control_character_as_an_escape():
    """A suggested command quoted a path with shlex alone: an escape sequence in a run's or a
    file's name reached the terminal raw inside the quotes. It is now bash's $'...' quoting,
    which a shell reads back to the same name."""
    import shutil
    import subprocess

    from anomaly.terminal import shell_word

    names = ["runs/\x1b[2Jx", "a'b\\c\x07", "plain dir", "x\u009by", "new\nline"]
    assert all("\x1b" not in shell_word(n) and "\n" not in shell_word(n) for n in names)
    assert shell_word("plain dir") == "'plain dir'"
    if shutil.which("bash"):
        for name in names:
            said = ["bash", "-c", "printf %s " + shell_word(name)]
            assert subprocess.run(said, capture_output=True, text=True, check=True).stdout == name


def test_a_deployment_walkthrough_of_the_command_line(tiny_cookies, tmp_path):
    """A walkthrough on a line PC without the package: a PNG damaged or half-written got a
    score and a verdict from the ONNX path (exif_transpose decoded it inside a suppressed
    error: half the rows black), where predict --run names it; a score just under the
    threshold printed as the same six digits with PASS; a sub-folder was called "not image
    files"; a 225-megapixel PNG was told to be given as a PNG."""
    from PIL import Image

    from anomaly.onnx_checks import image_paths, score_text
    from anomaly.onnx_predict import ExportError, read_file

    good = min((tiny_cookies / "test" / "good").glob("*.png"))
    data = good.read_bytes()
    cut = tmp_path / "zerotail.png"
    cut.write_bytes(data[: len(data) // 2] + bytes(len(data) - len(data) // 2))
    with pytest.raises(
        ExportError, match="zerotail.png: this PNG ends in zero bytes before its end"
    ):
        read_file(cut, 64)
    assert score_text(9.086479, 9.08648) == "9.086479" and score_text(8.75, 9.08648) == "8.75"
    (tmp_path / "sub").mkdir()
    with pytest.warns(UserWarning, match=r"skipping 1 folders, not searched \('sub/'\)"):
        image_paths(tmp_path)
    Image.MAX_IMAGE_PIXELS, was = 1000, Image.MAX_IMAGE_PIXELS
    try:
        with pytest.raises(ExportError, match="shrink it, for example to 4000 pixels"):
            read_file(good, 64)
    finally:
        Image.MAX_IMAGE_PIXELS = was


def test_onnx_predict_py_alone_from_the_shell_says_one_line(tmp_path):
    """Run from the shell without onnx_checks.py beside it, onnx_predict.py refused with an
    ImportError traceback: now one line and exit status 1."""
    import shutil

    import anomaly.onnx_predict

    shutil.copy(anomaly.onnx_predict.__file__, tmp_path / "onnx_predict.py")
    code = (
        "import sys, runpy; sys.modules['anomaly'] = None; "
        "sys.argv = ['onnx_predict.py', 'm.onnx', 'x.png']; "
        "runpy.run_path('onnx_predict.py', run_name='__main__')"
    )
    done = fresh_python(code, tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr  # as its other errors
    assert done.stderr.startswith("error: onnx_predict.py needs onnx_checks.py of its own version")


def test_train_reads_each_training_images_kind_once(tiny_cookies, tmp_path, monkeypatch):
    """The record of the training images (`summarize`) and the warnings on unlike ones
    (`warn_mixed`) each read every file's kind: a 16-bit image was decoded twice for its
    peak. `train` reads them once (`read_kinds`) for both."""
    from collections import Counter

    from anomaly.data import image_kind
    from anomaly.pipeline import train_run

    real, reads = image_kind.image_kind, Counter()
    monkeypatch.setattr(
        image_kind, "image_kind", lambda p, *a, **k: reads.update([str(p)]) or real(p, *a, **k)
    )
    config = Config.for_method("meandiff", data=str(tiny_cookies), size=32, device="cpu")
    train_run(config, tmp_path / "run", progress=False)
    assert reads and set(reads.values()) == {1}
