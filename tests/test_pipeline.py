"""Training, run folders, checkpoints, resume and the CLI, end to end on the tiny cookie set."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from helpers import tiny_config

from anomaly.calibration import set_threshold
from anomaly.cli import main
from anomaly.config import Config
from anomaly.pipeline import load_run, score_run, train_run
from anomaly.runs import RunError, load_checkpoint


@pytest.fixture(scope="module")
def ae_run(tiny_cookies, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "ae"
    train_run(tiny_config(tiny_cookies), run, progress=False)
    score_run(run)
    return run


def auroc_of_scores(rows) -> float:
    """scikit-learn's image AUROC of a run's scores.csv rows: what its metrics.json must say."""
    from sklearn.metrics import roc_auc_score

    return roc_auc_score([int(r["label"]) for r in rows], [float(r["score"]) for r in rows])


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_folder_holds_what_reproduces_it(ae_run):
    for name in (
        "config.json",
        "split.json",
        "versions.json",
        "model.pt",
        "history.csv",
        "threshold.json",
        "val_scores.json",
        "scores.csv",
        "metrics.json",
        "predictions.npz",
    ):
        assert (ae_run / name).exists(), name
    split = json.loads((ae_run / "split.json").read_text())
    assert split["val"] and not set(split["val"]) & set(split["train"])
    history = read_csv(ae_run / "history.csv")
    assert [int(r["epoch"]) for r in history] == [1, 2]
    assert json.loads((ae_run / "versions.json").read_text())["torch"]
    assert list(ae_run.glob("overlays/*.png"))


def test_scores_csv_and_metrics(ae_run):
    rows = read_csv(ae_run / "scores.csv")
    assert {"path", "label", "defect", "score"} <= set(rows[0])
    labels = [int(r["label"]) for r in rows]
    assert labels == sorted(labels), "normal rows first, then defective, as the original table"
    metrics = json.loads((ae_run / "metrics.json").read_text())
    for key in ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "aupro"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["image_auroc"] == pytest.approx(auroc_of_scores(rows), abs=1e-12)
    assert set(metrics["per_defect"]) == {"crack", "mustard", "plastic"}


def test_same_seed_same_scores(tiny_cookies, ae_run, tmp_path):
    train_run(tiny_config(tiny_cookies), tmp_path / "again", progress=False)
    score_run(tmp_path / "again", overlays=False)
    assert (tmp_path / "again" / "scores.csv").read_text() == (ae_run / "scores.csv").read_text()


def test_checkpoint_round_trip_gives_same_scores(ae_run, tiny_cookies):
    from anomaly.data import AnomalyDataset
    from anomaly.detectors import Predictions

    detector = load_run(ae_run)
    test = AnomalyDataset(tiny_cookies, "test", size=64, channels=1)
    again = detector.predict(test)
    saved = Predictions.load(ae_run / "predictions.npz")
    np.testing.assert_array_equal(again.scores, saved.scores)


def test_wrong_checkpoint_says_which_run_and_what_differs(ae_run, tiny_cookies):
    from anomaly.detectors import get_detector

    unet = get_detector("unet")(tiny_config(tiny_cookies, method="unet"))
    with pytest.raises(RunError, match=r"(?s)ae.*method: checkpoint has 'ae', asked for 'unet'"):
        load_checkpoint(ae_run, unet)
    bigger = get_detector("ae")(tiny_config(tiny_cookies, size=128))
    with pytest.raises(RunError, match="size: checkpoint has 64, asked for 128"):
        load_checkpoint(ae_run, bigger)


def test_foreign_or_broken_checkpoint(tmp_path, ae_run):
    import shutil

    import torch

    run = tmp_path / "broken"
    shutil.copytree(ae_run, run)
    (run / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RunError, match="not a readable anomaly checkpoint"):
        load_run(run)
    torch.save({"weights": 1}, run / "model.pt")
    with pytest.raises(RunError, match="was not written by anomaly"):
        load_run(run)


def test_resume_continues_to_the_same_result(tiny_cookies, tmp_path):
    full = tmp_path / "full"
    train_run(tiny_config(tiny_cookies, epochs=3), full, progress=False)
    part = tmp_path / "part"
    train_run(tiny_config(tiny_cookies, epochs=1), part, progress=False)
    config = Config.load(part / "config.json")
    config.epochs = 3
    config.save(part / "config.json")
    train_run(config, part, resume=True, progress=False)
    assert len(read_csv(part / "history.csv")) == 3
    np.testing.assert_allclose(
        [float(r["train_loss"]) for r in read_csv(part / "history.csv")],
        [float(r["train_loss"]) for r in read_csv(full / "history.csv")],
        rtol=1e-5,
    )


def test_refuses_to_overwrite_a_trained_run(ae_run, tiny_cookies):
    with pytest.raises(RunError, match="already holds a trained run"):
        train_run(tiny_config(tiny_cookies), ae_run, progress=False)


def test_thresholds_are_saved_and_used_by_predict(ae_run, capsys):
    from anomaly.metrics import Threshold

    t = set_threshold(ae_run, "f1")
    assert Threshold.load(ae_run / "threshold.json").value == pytest.approx(t.value)
    set_threshold(ae_run, "manual", 1e9)
    image = sorted((ae_run.parent.parent).glob("**/test/crack/*.png"))
    rows = read_csv(ae_run / "scores.csv")
    assert main(["predict", "--run", str(ae_run), rows[-1]["path"]]) == 0
    assert "\tPASS" in capsys.readouterr().out  # nothing reaches an absurdly high threshold
    set_threshold(ae_run, "manual", -1.0)
    assert main(["predict", "--run", str(ae_run), rows[0]["path"]]) == 0
    assert "\tREJECT" in capsys.readouterr().out
    q = set_threshold(ae_run, "normal-quantile", 1.0)
    val = json.loads((ae_run / "val_scores.json").read_text())["scores"]
    assert q.value == pytest.approx(max(val))
    del image


def test_cli_train_score_and_kmeans(tiny_cookies, tmp_path, capsys):
    run = tmp_path / "unet"
    args = [
        "--data",
        str(tiny_cookies),
        "--size",
        "64",
        "--epochs",
        "1",
        "--width",
        "8",
        "--channels",
        "1",
        "--device",
        "cpu",
    ]
    assert main(["train", "--method", "unet", "--out", str(run), *args]) == 0
    assert main(["score", "--run", str(run), "--no-overlays"]) == 0
    assert "image_auroc" in capsys.readouterr().out
    km = tmp_path / "km"
    assert (
        main(["train", "--method", "kmeans", "--from", str(run), "--out", str(km), "--k", "2"]) == 0
    )
    assert main(["score", "--run", str(km), "--no-overlays"]) == 0
    metrics = json.loads((km / "metrics.json").read_text())
    assert metrics["pixel_auroc"] is not None
    assert metrics["image_auroc"] == pytest.approx(auroc_of_scores(read_csv(km / "scores.csv")))


def test_cli_errors_are_one_line_with_the_fix(tmp_path, capsys):
    assert (
        main(
            [
                "train",
                "--data",
                str(tmp_path / "nowhere"),
                "--method",
                "ae",
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "nowhere" in err and "Traceback" not in err
    assert main(["score", "--run", str(tmp_path / "missing")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # argparse lists the registered methods
        main(["train", "--data", str(tmp_path), "--method", "nosuch", "--out", str(tmp_path / "r")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'nosuch'" in err and "patchknn" in err


def test_kmeans_scores_standardised_flattened_bottleneck(tiny_cookies, tmp_path):
    import torch

    from anomaly.detectors.kmeans import KMeansDetector

    run = tmp_path / "ae"
    train_run(tiny_config(tiny_cookies, epochs=1), run, progress=False)
    km_run = tmp_path / "km"
    train_run(
        tiny_config(
            tiny_cookies, method="kmeans", source_run=str(run), k=2, kmeans_features="flat"
        ),
        km_run,
        progress=False,
    )
    km = load_run(km_run, device="cpu")
    images = torch.rand(3, 1, 64, 64)
    vectors = km.source.features(images).flatten(1)
    assert km.mean.shape == vectors.shape[1:] and bool((km.scale > 0).all())
    expected = torch.cdist((vectors - km.mean) / km.scale, km.centers).min(1).values
    scores, maps = km.predict_batch(images)
    assert torch.allclose(scores, expected, atol=1e-4)
    assert maps.shape == (3, 64, 64)

    state = km.state_dict()
    del state["mean"]
    with pytest.raises(RuntimeError, match="train it again"):
        KMeansDetector(km.config).load_state_dict(state)


# --- one home for settings (issue 11 item 1) -------------------------------------------------------
def test_for_method_gives_the_cli_defaults_and_overrides():
    from anomaly.config import METHOD_DEFAULTS, NEW_RUNS

    ae = Config.for_method("ae", size=96, seed=None)
    assert ae.method == "ae" and ae.size == 96 and ae.seed == 0
    assert ae.corrupt == METHOD_DEFAULTS["ae"]["corrupt"] == 0.5 and ae.loss == "ssim"
    patchknn = Config.for_method("patchknn")
    assert METHOD_DEFAULTS["patchknn"] and all(
        getattr(patchknn, k) == v for k, v in METHOD_DEFAULTS["patchknn"].items()
    )
    assert patchknn.size != Config().size and patchknn.channels == 3
    assert Config.for_method("kmeans") == Config(method="kmeans", **NEW_RUNS)
    with pytest.raises(ValueError, match="unknown config fields"):
        Config.for_method("ae", sizee=3)


def test_every_config_field_is_a_train_flag_with_honest_defaults():
    from dataclasses import fields

    from anomaly.cli import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    dests = {a.dest: a for a in train._actions}
    for f in fields(Config):
        assert f.name in dests, f"Config.{f.name} has no train flag"
        assert dests[f.name].help, f"--{f.name} has no help"
    assert "default by --method: ae 0.5; unet, vae 0.0;" in dests["corrupt"].help
    assert "patchknn" in dests["method"].choices and "--from" in dests["source_run"].option_strings
    args = train.parse_args(["--out", "r", "--batch-size", "3", "--lr", "0.01"])
    assert args.batch_size == 3 and args.lr == 0.01 and args.epochs is None


def test_validate_names_the_flag():
    with pytest.raises(ValueError, match="--batch-size 0: must be at least 1"):
        Config(batch_size=0).validate()
    with pytest.raises(ValueError, match="--lr 0.0: must be greater than 0"):
        Config(lr=0.0).validate()
    with pytest.raises(ValueError, match="--channels 2"):
        Config(channels=2).validate()
    assert Config.for_method("ae").validate() == Config.for_method("ae")


# --- wiring of the other helpers' pieces -----------------------------------------------------------
def test_threshold_conformal_from_the_cli(ae_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(ae_run, run)
    assert main(["threshold", "--run", str(run), "--rule", "conformal", "--value", "0.5"]) == 0
    saved = json.loads((run / "threshold.json").read_text())
    assert saved["rule"] == "conformal" and saved["params"]["alpha"] == 0.5
    assert "guarantee: false-reject rate <= 50" in capsys.readouterr().out  # said, not only saved
    image = read_csv(run / "scores.csv")[0]["path"]
    assert main(["predict", "--run", str(run), image]) == 0
    assert "(conformal): guarantee: false-reject rate <= 50" in capsys.readouterr().err
    assert main(["threshold", "--run", str(run), "--rule", "manual", "--value", "1"]) == 0
    assert "no guarantee" in capsys.readouterr().out
    assert main(["threshold", "--run", str(run), "--rule", "conformal", "--value", "0.01"]) == 2
    assert "needs at least" in capsys.readouterr().err  # the helper's message, not a traceback


def test_make_photos_never_writes_into_a_users_folder(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "photo.jpg").write_bytes(b"mine")
    assert main(["make-photos", str(mine), "--overwrite"]) == 2
    assert (
        mine / "photo.jpg"
    ).read_bytes() == b"mine" and "Traceback" not in capsys.readouterr().err


def test_a_detectors_selection_is_saved_and_shown(tiny_cookies, tmp_path, monkeypatch, capsys):
    from anomaly.detectors import REGISTRY
    from anomaly.detectors.reconstruction import AutoEncoderDetector

    class Choosing(AutoEncoderDetector):  # an auto-encoder (name "ae") registered as "choosing"
        def fit(self, train_data, val_data=None, **kwargs):
            super().fit(train_data, val_data, **kwargs)
            self.selection = {"chosen": "ae width 8", "candidates": [{"name": "ae width 8"}]}
            return self

    monkeypatch.setitem(REGISTRY, "choosing", Choosing)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--out",
                str(run),
                "--method",
                "choosing",
                "--data",
                str(tiny_cookies),
                "--size",
                "64",
                "--epochs",
                "1",
                "--width",
                "8",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert json.loads((run / "selection.json").read_text())["chosen"] == "ae width 8"
    assert "auto chose ae width 8" in capsys.readouterr().out


def test_network_settings_are_config_fields_that_reach_the_detector():
    import inspect

    import torch

    from anomaly.detectors.draem import DraemDetector
    from anomaly.detectors.flow import FlowDetector
    from anomaly.pipeline import build_detector

    flow = inspect.signature(FlowDetector.__init__).parameters
    draem = inspect.signature(DraemDetector.__init__).parameters
    base = Config()
    assert (base.flow_steps, base.flow_hidden_ratio, base.flow_clamp) == (
        flow["steps"].default,
        flow["hidden_ratio"].default,
        flow["clamp"].default,
    )
    assert (base.draem_depth, base.draem_p_anomaly, base.draem_focal_weight, base.draem_norm) == (
        draem["depth"].default,
        draem["p_anomaly"].default,
        draem["focal_weight"].default,
        draem["norm"].default,
    )
    detector = build_detector(
        Config(method="draem", size=32, width=8, draem_norm="batch", draem_p_anomaly=0.25)
    )
    norms = {type(m) for net in detector.modules().values() for m in net.modules()}
    assert torch.nn.BatchNorm2d in norms and torch.nn.GroupNorm not in norms
    assert detector.p_anomaly == 0.25
