"""benchmarks/peers.py without anomalib (its own methods and the backbone): what it refuses
before fitting anything, the images everyone trains on, and masks that are not there."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def peers(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    for name in ("peers", "peers_models"):
        sys.modules.pop(name, None)
    import peers

    return peers


def _run(peers, data, out, *more):
    flags = ["--size", "32", "--rounds", "1", "--timing-images", "4", "--threads", "1"]
    return peers.main([str(data), "--out", str(out), *flags, *more])


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--rounds", "0"], "--rounds must be at least 1"),
        (["--timing-images", "0"], "--timing-images must be at least 1"),
        (["--methods", ","], "--methods names no method"),
        (["--patchknn-set", "size=128"], "size is set by --size"),
        (["--patchknn-set", "search_clusters=0.5"], "search_clusters takes an int value"),
        (["--patchknn-set", "runtime=onnx"], "choose one of torch, onnxruntime, auto"),
        (["--patchcore-coreset", "0"], "--patchcore-coreset must be in (0, 1]"),
    ],
)
def test_bad_options_are_refused_before_any_fit(peers, tiny_cookies, tmp_path, capsys, flags, said):
    """They failed after minutes of fitting (no median of no rounds; a reshape of no images), or
    as a TypeError from inside Config."""
    with pytest.raises(SystemExit) as stop:
        _run(peers, tiny_cookies, tmp_path / "out", "--methods", "patchknn", *flags)
    assert stop.value.code == 2 and said in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_test_set_of_one_kind_is_refused_with_the_fix(peers, tiny_cookies, tmp_path, capsys):
    data = tmp_path / "onlygood"
    shutil.copytree(tiny_cookies, data)
    shutil.rmtree(data / "ground_truth")
    for kind in (data / "test").iterdir():
        if kind.name != "good":
            shutil.rmtree(kind)
    assert _run(peers, data, tmp_path / "out", "--methods", "patchknn") == 2
    assert "all" in (err := capsys.readouterr().err) and "add the other kind to test/" in err


def test_pixel_metrics_leave_out_images_without_a_mask(peers, tiny_cookies, tmp_path, capsys):
    """A defective test image without its mask file was scored against an all-zero mask: every
    defect pixel of it counted as normal."""
    from anomaly.metrics import aupro, pixel_auroc
    from anomaly.pixel_eval import EVAL_SIZE, maps_at

    data = tmp_path / "nomask"
    shutil.copytree(tiny_cookies, data)
    gone = min((data / "ground_truth").rglob("*.png"))
    gone.unlink()
    assert _run(peers, data, tmp_path / "out", "--methods", "patchknn") == 0
    assert "1 defective test images have no mask file" in capsys.readouterr().err
    row = json.loads((tmp_path / "out" / "peers.json").read_text())["rows"][0]
    images, masks, _labels, known, _ = peers.load_test(data, 32)
    assert known.sum() == len(known) - 1
    predict, _, _ = peers.fit_ours("patchknn", data, 32, _args(peers, tmp_path), {})
    _scores, maps = predict(images)
    maps = maps_at(maps)  # pixel metrics at one size for every method, as `score`'s
    assert masks.shape == maps.shape == (len(known), EVAL_SIZE, EVAL_SIZE)
    assert row["pixel_auroc"] == pytest.approx(pixel_auroc(masks[known], maps[known]))
    assert row["aupro"] == pytest.approx(aupro(masks[known], maps[known]))
    assert row["pixel_auroc"] != pytest.approx(pixel_auroc(masks, maps))


def _args(peers, tmp_path):
    import argparse

    return argparse.Namespace(patchknn_set={}, seed=0, out=str(tmp_path), batch=8)


def test_anomalib_gets_the_images_and_pixels_the_project_trains_on(peers, tiny_cookies, tmp_path):
    """anomalib's Folder read train/good recursively (a sub-folder of test images leaked into
    its training set), took other extensions, and turned 16-bit PNGs white. It now gets the
    project's own list, decoded by the project's reader."""
    from peers_models import staged_train
    from PIL import Image

    from anomaly.data import AnomalyDataset
    from anomaly.data.folder import read_image

    data = tmp_path / "data"
    shutil.copytree(tiny_cookies, data)
    good = data / "train" / "good"
    sixteen = min(good.glob("*.png"))
    grey = np.asarray(Image.open(sixteen).convert("L"), np.uint16) * 257  # 16-bit, same picture
    Image.fromarray(grey).save(sixteen)
    (good / "batch2").mkdir()
    for p in sorted((data / "test" / "good").glob("*.png"))[:2]:
        shutil.copy(p, good / "batch2" / p.name)  # not read by the project: not trained on
    staged = tmp_path / "staged"
    n = staged_train(data, staged)
    paths = AnomalyDataset(data, "train", cache=False).paths
    written = sorted((staged / "train" / "good").iterdir())
    assert n == len(paths) == len(written) and not any(p.is_dir() for p in written)
    for path, copy in zip(paths, written):
        ours = np.round(read_image(path) * 255)
        theirs = np.asarray(Image.open(copy), np.float64)
        if ours.shape[-1] == 1:
            theirs = theirs[..., :1]
        assert np.abs(theirs - ours).max() <= 0.5
    assert (
        np.asarray(Image.open(written[[Path(p) for p in paths].index(sixteen)])).mean() < 250
    )  # not white


def test_a_method_giving_nan_scores_is_said_and_the_others_still_measured(
    peers, tiny_cookies, tmp_path, capsys, monkeypatch
):
    """A model whose scores are NaN stopped the script after all the fits (image_auroc refuses
    them): its row now says so and the others are measured and timed."""
    fit = peers.fit_ours

    def broken(method, *args):
        predict, wall, cpu = fit(method, *args)
        if method != "patchknn-onnx":
            return predict, wall, cpu

        def nan(x):
            scores, maps = predict(x)
            return np.full_like(scores, np.nan), maps

        return nan, wall, cpu

    monkeypatch.setattr(peers, "fit_ours", broken)
    assert _run(peers, tiny_cookies, tmp_path / "out", "--methods", "patchknn,patchknn-onnx") == 0
    rows = json.loads((tmp_path / "out" / "peers.json").read_text())["rows"]
    by = {r["method"]: r for r in rows}
    assert by["patchknn"]["image_auroc"] > 0.5 and by["patchknn-onnx"]["cpu_ms_median"] > 0
    assert "image_auroc" not in by["patchknn-onnx"]
    n = len(peers.load_test(tiny_cookies, 32)[0])
    said = f"patchknn-onnx: {n} of {n} image scores NaN or infinite, so no accuracy"
    assert by["patchknn-onnx"]["note"] in said and said in capsys.readouterr().out


def test_cpu_time_is_split_into_user_and_system(peers, tiny_cookies, tmp_path, capsys):
    """The backbone's CPU time moved 1.6x with what else ran in the process, nearly all of it
    system time (page faults for torch's buffers): the split and a user-time ratio are given."""
    out = tmp_path / "out"
    assert _run(peers, tiny_cookies, out, "--methods", "backbone,patchknn") == 0
    by = {r["method"]: r for r in json.loads((out / "peers.json").read_text())["rows"]}
    for r in by.values():
        assert len(r["user_ms"]) == len(r["system_ms"]) == len(r["cpu_ms"]) == 1  # --rounds 1
        assert r["user_ms"][0] + r["system_ms"][0] == pytest.approx(r["cpu_ms"][0], rel=0.1, abs=1)
        assert r["system_ms_median"] == r["system_ms"][0]
    assert by["backbone"]["user_ratio"] == pytest.approx(1.0)
    want = by["patchknn"]["user_ms"][0] / by["backbone"]["user_ms"][0]
    assert by["patchknn"]["user_ratio"] == pytest.approx(want)
    assert "| of it system ms | user-time ratio |" in capsys.readouterr().out


def test_the_suite_summary_gives_both_ratios(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import peers_summary

    for name, (ratio, user) in {"a": (0.3, 0.5), "b": (0.4, 0.6), "c": (0.5, None)}.items():
        row = {"method": "patchknn", "image_auroc": 0.9, "ratio": ratio, "user_ratio": user}
        (tmp_path / name).mkdir()
        (tmp_path / name / "peers.json").write_text(json.dumps({"rows": [row]}))
    runs, _ = peers_summary.load_runs(tmp_path)
    line = peers_summary.summary_table(runs).splitlines()[2]
    assert line.endswith("| 0.40 | 0.55 |"), line


def test_a_comparison_records_its_settings_and_the_summary_says_when_they_differ(
    peers, tiny_cookies, tmp_path, monkeypatch, capsys
):
    """A walkthrough (session 39): peers.json held no FastFlow epochs, coreset, seed, threads or
    versions, so a run of 1 epoch read as anomalib's defaults, and peers_summary averaged a
    32 px run of 1 round with 224 px ones without a word."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import peers_summary

    assert _run(peers, tiny_cookies, tmp_path / "a", "--methods", "patchknn") == 0
    saved = json.loads((tmp_path / "a" / "peers.json").read_text())
    assert saved["settings"]["fastflow_epochs"] == 10 and "seed" in saved["settings"]
    assert saved["versions"]["torch"] and "FastFlow 10 epochs" in capsys.readouterr().out
    other = {**saved, "settings": {**saved["settings"], "size": 224}}
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "peers.json").write_text(json.dumps(other))
    with pytest.warns(UserWarning, match="ran with different settings"):
        peers_summary.load_runs(tmp_path)


def test_missing_weights_are_said_before_anything_is_made(
    peers, tiny_cookies, tmp_path, monkeypatch, capsys
):
    """A walkthrough (session 39): without the MobileNetV2 weights the comparison ended in a
    traceback after making its --out folder, advising backbone='efficientnet_lite0', which none
    of the peers can use."""
    import anomaly.mobilenet

    def missing():
        raise FileNotFoundError("needs the weights (or use backbone='efficientnet_lite0').")

    monkeypatch.setattr(anomaly.mobilenet, "mobilenet_v2_weights", missing)
    with pytest.raises(SystemExit) as stop:
        _run(peers, tiny_cookies, tmp_path / "out", "--methods", "backbone")
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "needs the weights" in err and "efficientnet" not in err
    assert not (tmp_path / "out").exists()
