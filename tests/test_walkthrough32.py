"""Session 32's additions and fixes: each test fails without its change."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from anomaly.config import Config


def _trained(data, factory, method: str, size: int) -> Path:
    """A `method` run at `size` px on `data`, in a new folder of `factory`."""
    from anomaly.pipeline import train_run

    run = factory.mktemp(method) / "run"
    config = Config.for_method(method, data=str(data), size=size, device="cpu")
    train_run(config, run, progress=False)
    return run


@pytest.fixture(scope="module")
def meandiff_32(tiny_cookies, tmp_path_factory):
    """A meandiff run at 32 px on the tiny cookies, whose masks are 64 px."""
    return _trained(tiny_cookies, tmp_path_factory, "meandiff", 32)


def test_pixel_size_values():
    from anomaly.pixel_eval import FULL, parse_pixel_size

    assert parse_pixel_size("full") == parse_pixel_size(" FULL ") == FULL
    assert parse_pixel_size("512") == 512 and parse_pixel_size("16") == 16
    for bad in ("8", "0", "-256", "9000", "256px", "", "5_12", "+64", "٦٤"):
        with pytest.raises(ValueError, match="--pixel-size .*from 16 to 8192"):
            parse_pixel_size(bad)


def test_maps_and_masks_at_a_size_that_is_not_square(tmp_path):
    from PIL import Image

    from anomaly.pixel_eval import maps_at, masks_at

    maps = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    assert maps_at(maps, (6, 10)).shape == (2, 6, 10)
    mask = np.zeros((6, 10), np.uint8)
    mask[2:4, 3:8] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    got = masks_at([None, tmp_path / "m.png"], (6, 10))
    assert got.dtype == np.uint8 and not got[0].any()
    assert np.array_equal(got[1], mask > 0)  # the mask itself, not resized
    with pytest.raises(ValueError, match="m.png: its mask is 10x6, not 12x6"):
        masks_at([tmp_path / "m.png"], (6, 12))


def test_full_size_needs_one_mask_size_and_names_two_that_differ(tmp_path):
    from PIL import Image

    from anomaly.pixel_eval import full_size

    for name, side in (("a.png", 64), ("b.png", 64), ("c.png", 48)):
        Image.fromarray(np.zeros((side, side), np.uint8)).save(tmp_path / name)
    assert full_size([None, tmp_path / "a.png", None, tmp_path / "b.png"]) == (64, 64)
    assert full_size([None, None]) is None
    with pytest.raises(ValueError) as err:
        full_size([tmp_path / "a.png", tmp_path / "c.png"])
    said = str(err.value)
    assert "a.png is 64x64" in said and "c.png is 48x48" in said and "--pixel-size 512" in said


def test_check_memory_refuses_what_the_machine_cannot_hold():
    from anomaly.pixel_eval import check_memory

    check_memory(100, (1024, 1024), None)  # unknown: not checked
    check_memory(100, (1024, 1024), 5 * 2**30)
    with pytest.raises(
        ValueError, match=r"100 images at 1024x1024 need about 4\.7 GiB.*512 MiB is available"
    ):
        check_memory(100, (1024, 1024), 2**29)


def test_score_full_pixel_size_compares_at_the_masks_own_size(meandiff_32, tiny_cookies, tmp_path):
    """`score --pixel-size full`: pixel metrics as MVTec AD's evaluation computes them (maps at
    the masks' 64 px, masks as drawn), recorded in metrics.json; the default stays 256."""
    import torch
    import torch.nn.functional as F

    from anomaly.data import AnomalyDataset
    from anomaly.data.masks import read_mask
    from anomaly.metrics import aupro, pixel_auroc
    from anomaly.pipeline import score_run

    run = tmp_path / "md"
    shutil.copytree(meandiff_32, run)
    pred, metrics = score_run(run, overlays=False, pixel_size="full")
    assert metrics["pixel_metrics_size"] == [64, 64]
    assert json.loads((run / "metrics.json").read_text())["pixel_metrics_size"] == [64, 64]
    test = AnomalyDataset(tiny_cookies, "test", size=32)
    mask_of = {s.path: s.mask_path for s in test.samples}
    masks = np.stack(
        [read_mask(mask_of[p]) if mask_of.get(p) else np.zeros((64, 64), bool) for p in pred.paths]
    )
    maps = F.interpolate(
        torch.from_numpy(pred.maps.astype(np.float32))[:, None],
        size=(64, 64),
        mode="bilinear",
        align_corners=False,
    )[:, 0].numpy()
    assert metrics["pixel_auroc"] == pytest.approx(pixel_auroc(masks, maps), abs=1e-12)
    assert metrics["aupro"] == pytest.approx(aupro(masks, maps), abs=1e-12)
    _, default = score_run(run, overlays=False)
    assert default["pixel_metrics_size"] == 256
    assert default["aupro"] != metrics["aupro"]  # another size, another ground truth


def _two_mask_sizes(tiny_cookies, tmp_path) -> Path:
    """A copy of the tiny cookies with one defective image and its mask at 48 px (the others
    64 px): each mask fits its image, so only `--pixel-size full` has to refuse it."""
    from PIL import Image

    data = tmp_path / "data"
    shutil.copytree(tiny_cookies, data)
    mask = min((data / "ground_truth").rglob("*.png"))
    kind, stem = mask.parent.name, mask.stem.removesuffix("_mask")
    image = data / "test" / kind / f"{stem}.png"
    for path in (mask, image):
        Image.open(path).resize((48, 48)).save(path)
    return data


def test_score_full_refuses_masks_of_two_sizes_before_any_work(meandiff_32, tiny_cookies, tmp_path):
    from anomaly.cli import main
    from anomaly.pipeline import score_run

    data = _two_mask_sizes(tiny_cookies, tmp_path)
    run = tmp_path / "md"
    shutil.copytree(meandiff_32, run)
    before = sorted(p.name for p in run.iterdir())
    out = tmp_path / "scores"
    args = ["score", "--run", str(run), "--data", str(data), "--out", str(out)]
    assert main([*args, "--pixel-size", "full", "--no-overlays"]) == 2
    assert sorted(p.name for p in run.iterdir()) == before and not out.exists()
    assert main([*args, "--pixel-size", "48x", "--no-overlays"]) == 2  # refused at once too
    _, metrics = score_run(run, data=data, out=out, overlays=False)  # the default: one size
    assert metrics["pixel_metrics_size"] == 256


def test_api_pixel_size_as_text_is_the_number_and_every_size_is_checked_for_memory(
    meandiff_32, tmp_path, monkeypatch
):
    """A review: `score_run(pixel_size="64")` compared at 6 x 4 pixels (the string's digits),
    "Full" failed on int("F"), and only "full" was checked against the memory available."""
    from anomaly import pipeline
    from anomaly.pipeline import score_run

    run = tmp_path / "md"
    shutil.copytree(meandiff_32, run)
    assert score_run(run, overlays=False, pixel_size="64")[1]["pixel_metrics_size"] == 64
    assert score_run(run, overlays=False, pixel_size="Full")[1]["pixel_metrics_size"] == [64, 64]
    monkeypatch.setattr(pipeline, "available_memory", lambda: 2**20)
    with pytest.raises(
        ValueError, match="at 4096x4096 need about .*give --pixel-size 32, the maps. own size"
    ):
        score_run(run, overlays=False, pixel_size=4096)


def test_benchmark_full_refuses_masks_of_two_sizes_before_training(tiny_cookies, tmp_path):
    from anomaly.benchmark import run_benchmark

    data = _two_mask_sizes(tiny_cookies, tmp_path)
    out = tmp_path / "bench"
    with pytest.raises(ValueError, match="needs one size for the whole test set"):
        run_benchmark(str(data), methods=["meandiff"], out=str(out), smoke=True, pixel_size="full")
    assert not out.exists()


def test_a_nul_byte_in_an_untrusted_split_is_a_changed_image(meandiff_32, tmp_path):
    import warnings

    from anomaly.runs import RunDir
    from anomaly.train_images import warn_changed_training

    run = tmp_path / "md"
    shutil.copytree(meandiff_32, run)
    split = json.loads((run / "split.json").read_text())
    split["train"][0] = split["train"][0] + "\u0000x"
    (run / "split.json").write_text(json.dumps(split))
    data = json.loads((run / "config.json").read_text())["data"]
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        warn_changed_training(RunDir(run), data)
    assert any("missing or changed" in str(w.message) for w in said)


def test_score_summary_says_a_pixel_size_other_than_the_default():
    from anomaly.decision import score_summary

    labels, scores = np.array([0, 1]), np.array([0.1, 0.9])
    base = {"image_auroc": 1.0, "pixel_auroc": 0.9, "aupro": 0.8}
    assert "pixel metrics at" not in score_summary(
        labels, scores, base | {"pixel_metrics_size": 256}
    )
    said = score_summary(labels, scores, base | {"pixel_metrics_size": [700, 900]})
    assert "aupro 0.800  (pixel metrics at 900x700)" in said


def test_score_names_training_images_changed_since_the_run_was_trained(
    tiny_cookies, tmp_path, recwarn
):
    """A reproducibility audit (helper): `score` on a run's own data folder, made again with
    another seed or edited since training, scored and replaced the run's scores without a word,
    though split.json records each training image's SHA-256 (`train --like` refuses)."""
    from PIL import Image

    from anomaly.pipeline import score_run, train_run

    data = tmp_path / "data"
    shutil.copytree(tiny_cookies, data)
    run = tmp_path / "md"
    config = Config.for_method("meandiff", data=str(data), size=32, device="cpu")
    train_run(config, run, progress=False)
    score_run(run, overlays=False)
    assert not [w for w in recwarn if "changed since it was trained" in str(w.message)]
    image = min((data / "train" / "good").glob("*.png"))
    pixels = np.array(Image.open(image))
    pixels[:8, :8] = 0
    Image.fromarray(pixels).save(image)
    with pytest.warns(
        UserWarning, match=r"1 of the \d+ images .* changed since it was trained"
    ) as said:
        score_run(run, overlays=False)
    assert str(image) in str(said[0].message)
    image.unlink()  # missing is said the same way
    with pytest.warns(UserWarning, match="missing or changed"):
        score_run(run, overlays=False)


def test_changed_training_check_reads_nothing_outside_the_data_folder(meandiff_32, tmp_path):
    """split.json is untrusted input: a path it names outside the data folder is counted as
    changed, never read (a FIFO there would hang the command)."""
    import os
    import warnings

    from anomaly.runs import RunDir
    from anomaly.train_images import warn_changed_training

    run = tmp_path / "md"
    shutil.copytree(meandiff_32, run)
    split = json.loads((run / "split.json").read_text())
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    split["train"][0] = str(fifo)
    (run / "split.json").write_text(json.dumps(split))
    data = json.loads((run / "config.json").read_text())["data"]
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        warn_changed_training(RunDir(run), data)
    assert any(f"first: {fifo}" in str(w.message) for w in said)


def test_benchmark_pixel_size_reaches_every_row_and_its_command(tiny_cookies, tmp_path):
    from anomaly.benchmark import run_benchmark
    from anomaly.cli import main

    out = tmp_path / "bench"
    rows = run_benchmark(
        str(tiny_cookies), methods=["meandiff"], out=str(out), smoke=True, pixel_size="full"
    )
    assert rows[0]["pixel_metrics_size"] == [64, 64]
    result = json.loads((out / "benchmark.json").read_text())
    assert result["pixel_size"] == "full" and "--pixel-size full" in result["command"]
    assert json.loads((out / "meandiff" / "metrics.json").read_text())["aupro"] == rows[0]["aupro"]
    for bad in (["--pixel-size", "7"], ["--pixel-size", "full", "--curve", "train-size"]):
        fresh = tmp_path / f"bench{len(bad)}"
        args = ["benchmark", "--data", str(tiny_cookies), "--out", str(fresh), "--smoke", *bad]
        assert main(args) == 2 and not fresh.exists()


# --- a QA engineer's threshold walkthrough (helper) ------------------------------------------------


def test_suggested_smallest_alpha_is_accepted_for_every_count():
    """The refusal suggested 1/(n+1) rounded to 4 digits, often just below it (n = 8: 0.1111),
    and the same check refused the suggestion (87 of n = 1..199)."""
    from anomaly.metrics import conformal_n_needed, smallest_alpha, threshold_conformal

    for n in range(1, 5000):
        text = smallest_alpha(n)
        assert conformal_n_needed(float(text)) <= n, n
        assert float(text) <= 1 / (n + 1) * 1.001  # and not needlessly larger
    assert smallest_alpha(8) == "0.1112" and smallest_alpha(19) == "0.05"
    with pytest.raises(ValueError, match=r"or use alpha >= 0\.1112"):
        threshold_conformal(np.arange(8.0), 0.1)
    threshold_conformal(np.arange(8.0), float(smallest_alpha(8)))  # the suggestion works


@pytest.fixture(scope="module")
def patchknn_64(tiny_cookies, tmp_path_factory):
    return _trained(tiny_cookies, tmp_path_factory, "patchknn", 64)


def test_a_quantile_above_one_is_told_as_a_percentage(patchknn_64, tmp_path):
    from anomaly.calibration import set_threshold

    run = tmp_path / "pk"
    shutil.copytree(patchknn_64, run)
    with pytest.raises(ValueError) as err:
        set_threshold(run, "normal-quantile", 99)
    assert "for the 99 % quantile, give 0.99" in str(err.value)
    assert "would reject most" not in str(err.value)
    with pytest.raises(ValueError, match="would reject most of them"):
        set_threshold(run, "normal-quantile", 0.2)
    for value in (5, 1.0000001, 400):  # 0.05 and 0.01 would be refused too: no suggestion
        with pytest.raises(ValueError) as err:
            set_threshold(run, "normal-quantile", value)
        assert "give" not in str(err.value) and "at most 1" in str(err.value)


def test_threshold_says_training_images_when_none_were_held_out(tiny_cookies, tmp_path, capsys):
    from anomaly.cli import main
    from anomaly.pipeline import train_run

    run = tmp_path / "v0"
    config = Config.for_method(
        "patchknn", data=str(tiny_cookies), size=64, device="cpu", val_fraction=0.0
    )
    with pytest.warns(UserWarning, match="no validation split"):
        train_run(config, run, progress=False)
    assert main(["threshold", "--run", str(run)]) == 0
    out = capsys.readouterr().out
    assert "good training images (it held out none" in out and "held-out good images" not in out


def test_a_run_copied_without_its_model_is_told_to_restore_it(patchknn_64, tmp_path, capsys):
    """A finished run without model.pt was told its training never finished an epoch and to
    --resume (refused: no last.pt) or train again (which replaces the threshold's model)."""
    from anomaly.cli import main

    run = tmp_path / "nomodel"
    shutil.copytree(patchknn_64, run)
    (run / "model.pt").unlink()
    image = str(min((Path(json.loads((run / "config.json").read_text())["data"])).rglob("*.png")))
    assert main(["predict", "--run", str(run), "--no-overlays", image]) == 2
    err = capsys.readouterr().err
    assert "the file is gone" in err and "Restore model.pt from a copy of the run" in err
    assert "never finished" not in err and "--resume" not in err


def test_the_guarantee_warnings_chance_is_exact_far_in_the_tail():
    """scipy's betabinom.sf bottoms out near 1e-16: 50 of 50 good images rejected against a 5 %
    conformal threshold on 20 printed a chance of 1e-16; the exact one is 6.2e-18."""
    from anomaly.decision import guarantee_broken
    from anomaly.metrics import threshold_conformal

    t = threshold_conformal(np.arange(20.0), 0.05)
    said = guarantee_broken(np.zeros(50), np.full(50, 100.0), t)
    assert "chance of 6e-18" in said


def test_many_images_unlike_the_training_ones_in_one_way_are_one_warning(tmp_path):
    """30 greyscale images for a colour run printed 30 identical warnings, one per file."""
    from PIL import Image

    from anomaly.data.image_kind import summarize
    from anomaly.data.image_unlike import warn_unlike

    colour = tmp_path / "colour.png"
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(colour)
    grey = []
    for i in range(5):
        grey.append(tmp_path / f"g{i}.png")
        Image.fromarray(np.full((32, 32), 90, np.uint8)).save(grey[-1])
    out = io.StringIO()
    said = warn_unlike(grey, summarize([colour]), 3, 32, stream=out)
    assert len(said) == 1 and said[0].startswith("warning: 5 images (")
    assert "g2.png and 2 more), each: greyscale" in said[0] and out.getvalue() == said[0] + "\n"
    assert len(warn_unlike(grey[:3], summarize([colour]), 3, 32, stream=out)) == 3


def test_rate_interval_is_clopper_pearson_and_threshold_prints_it():
    """A QA engineer defends a measured false-reject rate with its interval, not a bare count."""
    from scipy.stats import beta

    from anomaly.decision import rate_interval
    from anomaly.threshold_text import _interval

    assert rate_interval(0, 50) == (0.0, pytest.approx(1 - 0.025 ** (1 / 50)))
    lo, hi = rate_interval(3, 40)
    assert lo == pytest.approx(beta.ppf(0.025, 3, 38)) and hi == pytest.approx(
        beta.ppf(0.975, 4, 37)
    )
    assert rate_interval(40, 40)[1] == 1.0 and rate_interval(40, 40)[0] > 0.9
    with pytest.raises(ValueError):
        rate_interval(5, 4)
    assert _interval(1, 50) == " (95 % interval of the rate 0.05-10.7 %)"  # rounded outwards
    assert _interval(1000, 1000) == " (95 % interval of the rate 99.6-100.0 %)"
    assert _interval(1, 100000) == " (95 % interval of the rate 0.00-0.01 %)"


def test_a_user_set_quantile_on_a_handful_of_images_is_noted(patchknn_64, tmp_path, capsys):
    """train's and predict's note that a 0.99 quantile of a handful of images is about their
    largest was not said when the user set that quantile with `threshold` (held-out images or
    a folder of 3 good images)."""
    from anomaly.cli import main

    run = tmp_path / "pk"
    shutil.copytree(patchknn_64, run)
    assert main(["threshold", "--run", str(run), "--rule", "normal-quantile"]) == 0
    assert "quantile of only" in capsys.readouterr().out
    folder = tmp_path / "good3"
    folder.mkdir()
    data = Path(json.loads((run / "config.json").read_text())["data"])
    for p in sorted((data / "test" / "good").glob("*.png"))[:3]:
        shutil.copy(p, folder / p.name)
    args = ["threshold", "--run", str(run), "--rule", "normal-quantile", "--value", "0.99"]
    assert main([*args, "--good-images", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"quantile of only 3 good images in {folder}" in out and "Add good images" in out
    assert f"--good-images {folder}" in out


def test_f1_rule_without_defects_says_the_fix():
    from anomaly.metrics import threshold_f1

    with pytest.raises(ValueError, match=r"all 3 are good\. Score a test set .* --rule conformal"):
        threshold_f1([0, 0, 0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="all 2 are defective"):
        threshold_f1([1, 1], [1.0, 2.0])


def test_one_image_is_said_in_the_singular():
    from anomaly.decision import few_held_out
    from anomaly.metrics import threshold_normal_quantile

    t = threshold_normal_quantile([0.5], q=0.99)
    t.params["set_by"] = "train"
    said = few_held_out(t, "RUN")
    assert "only 1 held-out good image, which is that image's score" in said


# --- runs and exports of an older version (an upgrade walkthrough, helper) ------------------------


def test_an_export_of_the_package_as_of_2026_12_01_passes_the_op_check():
    """Exports of 006acaa wrote a Gemm; today's reader refused them as not written by export."""
    from anomaly.onnx_checks import foreign_parts

    assert foreign_parts({("", "Gemm"), ("", "Conv")}, []) == ""
    assert foreign_parts({("", "Loop")}, []) == "'Loop'"  # what no export writes: still named


def test_export_again_over_an_older_versions_export_of_the_same_model_is_quiet(
    tiny_cookies, tmp_path
):
    """Its config metadata lacked fields added since (at their defaults), so exporting the same
    run again warned that the file "held an export of another model"."""
    import warnings

    import onnx
    from helpers import patchknn_export

    from anomaly.export import export_onnx

    run = tmp_path / "pk"
    path = patchknn_export(tiny_cookies, run)
    for drop_record in (False, True):  # 2026-12-03 on / 2026-12-01: no model_sha256 either
        model = onnx.load(str(path))
        for prop in list(model.metadata_props):
            if prop.key == "config":  # as an older version wrote it: fewer fields
                config = json.loads(prop.value)
                config.pop("search_refine"), config.pop("decode")
                prop.value = json.dumps(config)
            if prop.key == "model_sha256" and drop_record:
                model.metadata_props.remove(prop)
        onnx.save(model, str(path))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            export_onnx(run, path)
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == "model_sha256":  # another model.pt's export: still said
            prop.value = "0" * 64
        if prop.key == "config":
            prop.value = json.dumps({**json.loads(prop.value), "size": 32})
    onnx.save(model, str(path))
    with pytest.warns(UserWarning, match="held an export of another model"):
        export_onnx(run, path)


def test_score_says_when_overlay_names_are_taken_by_files_it_did_not_write(meandiff_32, tmp_path):
    """A run scored by an older version (whose overlays carry no mark and no record): today's
    overlays went to <name>_<index>.png beside the old pictures without a word, so the plain
    names showed the old model's pictures."""
    from PIL import Image

    from anomaly.pipeline import score_run

    run = tmp_path / "md"
    shutil.copytree(meandiff_32, run)
    pred, _ = score_run(run, overlays=True)
    (run / "overlays" / ".written.json").unlink()
    for path in (run / "overlays").glob("*.png"):  # as an older version left them: no mark
        Image.open(path).convert("RGB").save(path)
    with pytest.warns(UserWarning, match=rf"{len(pred)} overlay names are taken by files") as said:
        score_run(run, overlays=True)
    assert "Move those files away" in str(said[0].message)


def test_a_lost_guarantee_names_the_whole_command_that_chooses_it_again():
    """Every other message gives a full command; this one said `python -m anomaly threshold`."""
    from anomaly.metrics import Threshold
    from anomaly.threshold_text import choose_again, threshold_words

    folder = {"source": "folder", "folder": "my good"}
    t = Threshold(1.5, "conformal", {"alpha": 0.05, "earlier_model": True, "calibration": folder})
    said = threshold_words(t, "runs/x")
    assert said.endswith(
        "choose it again with `python -m anomaly threshold --run runs/x --rule conformal "
        "--value 0.05 --good-images 'my good'`"
    )
    assert choose_again(Threshold(2.5, "manual", {})) == (
        "python -m anomaly threshold --run RUN --rule manual --value 2.5"
    )
    # the explorer's rules are not --rule's: its value again, as a manual threshold (a review)
    for rule in ("explorer", "cost-optimal"):
        assert choose_again(Threshold(2.25, rule, {}), "r").endswith("--rule manual --value 2.25")
    hyphen = Threshold(8.5, "normal-quantile", {"q": 0.99})  # as threshold_file.RULES reads it
    assert choose_again(hyphen, "r").endswith("--rule normal-quantile --value 0.99")
    exact = Threshold(1.0, "conformal", {"alpha": 0.0123456789})  # every digit, not 0.0123457
    assert choose_again(exact, "r").endswith("--value 0.0123456789")
    quantile = Threshold(2.5, "normal_quantile", {"q": 0.99, "calibration": {"source": "held_out"}})
    assert choose_again(quantile, "r").endswith("--rule normal-quantile --value 0.99")
    assert choose_again(Threshold(2.5, "f1", {}), "r").endswith("--rule f1")


def test_a_generator_refusal_names_the_settings_that_differ(tmp_path):
    """make-cookies said "made with other settings" but not which (a reproducibility audit)."""
    from anomaly.data import make_cookies
    from anomaly.data.generated import settings_changed

    make_cookies(tmp_path / "c", preset="tiny", seed=5, size=32)
    with pytest.raises(ValueError, match=r"other settings \(seed 5 -> 7\); choose another"):
        make_cookies(tmp_path / "c", preset="tiny", seed=7, size=32)
    said = settings_changed({"counts": {"a": 1}, "seed": 1}, {"counts": {"a": 2}, "seed": 1})
    assert said == 'counts {"a": 1} -> {"a": 2}'


def test_train_like_says_when_a_reproduced_run_was_made_by_other_versions(tiny_cookies, tmp_path):
    """--like said "the run is reproduced" and nothing of versions.json's code +changes (the
    reproducibility audit): a byte-identical model from other code is worth knowing."""
    from anomaly.pipeline import train_run
    from anomaly.rerun import same_model_words

    config = Config.for_method("meandiff", data=str(tiny_cookies), size=32, device="cpu")
    for name in ("a", "b"):
        train_run(config, tmp_path / name, progress=False)
    assert same_model_words(tmp_path / "a", tmp_path / "b").endswith("the run is reproduced")
    versions = tmp_path / "b" / "versions.json"
    record = json.loads(versions.read_text())
    record["code"] = "0123abc+changes"
    versions.write_text(json.dumps(record))
    said = same_model_words(tmp_path / "a", tmp_path / "b")
    assert "the run is reproduced; made by other versions all the same: code" in said
    assert "-> '0123abc+changes'" in said


def test_versions_records_the_data_sets_image_counts(tmp_path):
    """make-photos --good/--defect changes the test set's size, which no run file recorded."""
    from anomaly.data import make_cookies
    from anomaly.run_versions import data_manifest

    make_cookies(tmp_path / "c", preset="tiny", seed=1, size=32)
    made = json.loads((tmp_path / "c" / "manifest.json").read_text())["counts"]
    assert data_manifest(tmp_path / "c")["counts"] == made and made


def test_an_export_without_its_rule_is_told_to_be_exported_again():
    """An older export names no rule: predict --onnx said "use --rule conformal for one", which
    cannot be applied to an ONNX file (the upgrade walkthrough)."""
    from anomaly.metrics import Threshold
    from anomaly.threshold_text import threshold_words

    said = threshold_words(Threshold(3.0, "exported", {}))
    assert "export the run again to carry its rule" in said and "--rule conformal" not in said
    assert threshold_words(Threshold(3.0, "exported", {}), "runs/my pk").endswith(
        "(python -m anomaly export --run 'runs/my pk')"
    )


def test_warnings_of_files_read_in_threads_are_kept_apart_from_the_main_threads(tmp_path):
    """`named_warnings` swapped process-wide state (`catch_warnings`) while threads decoded
    files: two overlapping in threads left a dead recorder in place, and every later warning of
    the command was lost (score's overlay warning, in a test run of the whole file); a warning
    of the main thread raised meanwhile was named as a file's."""
    import threading
    import warnings

    from anomaly.data.image_kind import named_warnings

    entered, release = threading.Event(), threading.Event()
    second_in, first_out = threading.Event(), threading.Event()

    def first():
        with named_warnings(tmp_path / "a.png"):
            entered.set()
            second_in.wait(5)
        first_out.set()

    def second():
        entered.wait(5)
        with named_warnings(tmp_path / "b.png"):
            second_in.set()
            first_out.wait(5)
            release.wait(5)
            warnings.warn("from the file", UserWarning, stacklevel=1)

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for t in threads:
            t.start()
        first_out.wait(5)
        warnings.warn("the main thread's own", UserWarning, stacklevel=1)  # b.png is being read
        release.set()
        for t in threads:
            t.join(5)
        warnings.warn("after the threads", UserWarning, stacklevel=1)
    texts = [str(w.message) for w in said]
    assert "the main thread's own" in texts and "after the threads" in texts
    assert f"{tmp_path / 'b.png'}: from the file" in texts


def test_pillows_warnings_filter_leaves_a_users_own_filters_first(tmp_path):
    """The "always" filter for Pillow's warnings went in front of the process's filters and
    overrode a user's own simplefilter("ignore") (a review): it is appended now."""
    import warnings

    from PIL import Image

    from anomaly.data import image_kind as ik

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ik.image_kind(tmp_path / "a.png")
        assert warnings.filters[0][0] == "ignore"  # the user's, still first


def test_a_photo_suite_refusal_names_the_sets_that_differ(tmp_path):
    from anomaly.data import make_photos

    make_photos(tmp_path / "p", tiny=True, sets=["moon"])
    with pytest.raises(ValueError, match=r"other settings \(sets moon -> moon, page\)"):
        make_photos(tmp_path / "p", tiny=True, sets=["moon", "page"])


# --- a researcher's full-resolution walkthrough (helper) --------------------------------------------


def test_full_refuses_a_good_image_of_another_size_than_the_masks(
    meandiff_32, tiny_cookies, tmp_path
):
    """Only the masks' sizes were checked: a good image of another size was scored at the
    masks' size without a word, not at its own as MVTec AD's evaluation does."""
    from PIL import Image

    from anomaly.pipeline import score_run

    data = tmp_path / "data"
    shutil.copytree(tiny_cookies, data)
    good = min((data / "test" / "good").glob("*.png"))
    Image.open(good).resize((96, 96)).save(good)
    run = tmp_path / "md"
    shutil.copytree(meandiff_32, run)
    with pytest.raises(ValueError, match=rf"images and masks, but .*{good.name} is 96x96"):
        score_run(run, data=data, out=tmp_path / "o", overlays=False, pixel_size="full")


def test_memory_words_when_even_the_default_does_not_fit_and_when_memory_runs_out(
    meandiff_32, tmp_path, monkeypatch
):
    from anomaly import pipeline
    from anomaly.pixel_eval import check_memory
    from anomaly.runs import RunError

    with pytest.raises(ValueError, match=r"need about 3 MiB of memory, and 1 MiB is available: "):
        check_memory(1, (256, 256), 2**20)
    with pytest.raises(ValueError, match="free memory, or score the test images in smaller sets"):
        check_memory(1, (256, 256), 2**20)
    run = tmp_path / "md"
    shutil.copytree(meandiff_32, run)

    def no_memory(*args, **kwargs):  # as numpy's _ArrayMemoryError, a MemoryError
        raise MemoryError("Unable to allocate 34.3 MiB for an array")

    def torch_out_of_memory(*args, **kwargs):  # torch's CPU allocator says it otherwise
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate")

    monkeypatch.setattr(pipeline, "available_memory", lambda: None)  # a ulimit it cannot see
    monkeypatch.setattr("anomaly.metrics.evaluate", no_memory)
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(RunError, match="ran out of memory .* no scores were written: give a"):
        pipeline.score_run(run, overlays=False, pixel_size=2048)
    with pytest.raises(RunError, match="no scores were written: free memory"):  # the default
        pipeline.score_run(run, overlays=False)
    monkeypatch.setattr("anomaly.metrics.evaluate", torch_out_of_memory)
    with pytest.raises(RunError, match="ran out of memory"):
        pipeline.score_run(run, overlays=False, pixel_size="full")
    assert sorted(p.name for p in run.iterdir()) == before


def test_benchmark_checks_memory_before_training(tiny_cookies, tmp_path, monkeypatch):
    from anomaly import benchmark

    monkeypatch.setattr("anomaly.safe_files.available_memory", lambda: 2**20)  # read there
    out = tmp_path / "bench"
    with pytest.raises(ValueError, match=r"need about .* of memory, and 1 MiB is available"):
        benchmark.run_benchmark(
            str(tiny_cookies), methods=["meandiff"], out=str(out), smoke=True, pixel_size=4096
        )
    assert not out.exists()


def test_full_needs_no_one_size_where_there_are_no_masks(tmp_path):
    """No mask file: no pixel metrics, so images of several sizes are no reason to refuse."""
    from PIL import Image

    from anomaly.pixel_eval import full_size

    for name, side in (("a.png", 64), ("b.png", 80)):
        Image.fromarray(np.zeros((side, side), np.uint8)).save(tmp_path / name)
    assert full_size([None, None], [tmp_path / "a.png", tmp_path / "b.png"]) is None


def test_tracing_quiets_torchs_warnings_only(tmp_path, monkeypatch):
    """trace_to_onnx ignored every warning of the process while tracing, so a thread decoding
    the next images meanwhile lost Pillow's (the filters are process-wide)."""
    import warnings

    import torch

    from anomaly.detectors import ort_sessions

    def export(*args, **kwargs):
        warnings.warn("tracer", torch.jit.TracerWarning, stacklevel=1)
        warnings.warn_explicit(
            "legacy exporter", DeprecationWarning, "x.py", 1, module="torch.onnx"
        )
        warnings.warn_explicit(
            "a decoding thread's", UserWarning, "Image.py", 1, module="PIL.Image"
        )

    monkeypatch.setattr(torch.onnx, "export", export)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        ort_sessions.trace_to_onnx(torch.nn.Identity(), torch.zeros(1, 3, 4, 4), tmp_path / "m")
    assert [str(w.message) for w in said] == ["a decoding thread's"]


# --- an automation engineer's walkthrough (helper) ----------------------------------------------------


def test_a_file_size_limit_is_named_with_the_file_and_the_fix(tmp_path):
    """`ulimit -f` during train gave torch's "unexpected pos" traceback; score's, export's and
    threshold's writes an unnamed "[Errno 27] File too large"."""
    import subprocess
    import sys

    code = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)); "
        "import torch; from anomaly.safe_files import atomic_save, atomic_bytes; "
        "from anomaly.runs import RunError\n"
        "for f in (lambda: atomic_save({'w': torch.zeros(100000)}, sys.argv[1] + '/m.pt'), "
        "lambda: atomic_bytes(bytes(100000), sys.argv[1] + '/b.bin')):\n"
        "    try:\n        f()\n    except RunError as e:\n        print(e)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=False
    )
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stderr
    assert len(lines) == 2 and all("larger than this process may write" in x for x in lines)
    assert lines[0].startswith(f"{tmp_path}/m.pt:") and "ulimit -f" in lines[0]
    assert not list(tmp_path.iterdir())  # no temporary file left


def test_a_cut_pipe_after_the_work_is_done_is_no_error(patchknn_64, tmp_path):
    """`threshold ... | head -1` saved the threshold, then exited 2 with "[Errno 32] Broken
    pipe"; `predict ... 2>&1 | head -1` died of an uncaught BrokenPipeError on stderr."""
    import subprocess
    import sys

    run = tmp_path / "pk"
    shutil.copytree(patchknn_64, run)
    command = [sys.executable, "-m", "anomaly", "threshold", "--run", str(run)]
    proc = subprocess.Popen(
        [*command, "--rule", "normal-quantile"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    proc.stdout.close()  # the reader is gone before a word is written (`... 2>&1 | head -0`)
    assert proc.wait(120) == 141  # as Unix tools end on a cut pipe: not 2, not a traceback
    assert json.loads((run / "threshold.json").read_text())["rule"] == "normal_quantile"
