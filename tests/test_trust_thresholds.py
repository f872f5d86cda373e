"""A threshold.json or val_scores.json from someone else is untrusted input: a threshold records
the model it was chosen for (the SHA-256 of model.pt) and is refused for another one, its fields
are checked before anything decides by them or prints them, held-out scores must be finite
numbers, and no threshold is ever saved that is not a finite number."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import tiny_config

from anomaly.calibration import set_threshold
from anomaly.cli import main
from anomaly.metrics import Threshold
from anomaly.pipeline import load_run, score_run, train_run
from anomaly.runs import RunDir, RunError
from anomaly.safe_files import sha256_file

FIX = "python -m anomaly threshold --run"


@pytest.fixture(scope="module")
def runs(tiny_cookies, tmp_path_factory):
    """A meandiff run (scored, for the explorer) and a patchknn run, trained once."""
    root = tmp_path_factory.mktemp("trust")
    train_run(tiny_config(tiny_cookies, "meandiff"), root / "md", progress=False)
    score_run(root / "md", overlays=False)
    train_run(tiny_config(tiny_cookies, "patchknn"), root / "pk", progress=False)
    return root


@pytest.fixture
def md(runs, tmp_path):
    return shutil.copytree(runs / "md", tmp_path / "md")


def _image(tiny_cookies):
    return min((tiny_cookies / "test" / "good").glob("*.png"))


def _saved(run) -> dict:
    return json.loads((run / "threshold.json").read_text())


def test_every_writer_records_the_model(md, runs):
    sha = sha256_file(md / "model.pt")
    assert _saved(md)["model_sha256"] == sha  # train's default threshold
    set_threshold(md, "manual", 1.5)
    assert _saved(md)["model_sha256"] == sha and RunDir(md).threshold().value == 1.5
    from anomaly.explorer import ThresholdExplorer

    ThresholdExplorer(md).save_threshold()
    assert _saved(md)["model_sha256"] == sha and _saved(md)["rule"] in ("explorer", "cost-optimal")
    assert _saved(runs / "pk")["model_sha256"] == sha256_file(runs / "pk" / "model.pt")


def test_a_threshold_of_another_run_is_refused(md, runs, tiny_cookies, capsys):
    shutil.copy(runs / "pk" / "threshold.json", md / "threshold.json")
    with pytest.raises(RunError, match="set for another model") as err:
        RunDir(md).threshold()
    assert "threshold.json" in str(err.value) and f"{FIX} {md} --rule" in str(err.value)
    assert main(["predict", "--run", str(md), str(_image(tiny_cookies))]) == 2
    out = capsys.readouterr()
    assert "PASS" not in out.out and "another model" in out.err and "Traceback" not in out.err
    saved = _saved(md)
    del saved["model_sha256"]  # a threshold.json from before the record: loads as it did
    (md / "threshold.json").write_text(json.dumps(saved))
    assert RunDir(md).threshold().value == saved["value"]


def test_a_replaced_model_keeps_its_runs_threshold_without_its_guarantee(md):
    guarantee = {"alpha": 0.5, "n": 3, "rank": 2, "guarantee": "false-reject rate <= 50%"}
    RunDir(md).save_threshold(Threshold(2.5, "conformal", guarantee))
    detector = load_run(md)
    detector.mean.add_(1.0)  # trained further (train --resume writes model.pt like this)
    RunDir(md).save_checkpoint(detector, complete=True)
    kept = RunDir(md).threshold()
    assert kept.value == 2.5 and "guarantee" not in kept.params and kept.params["earlier_model"]
    assert _saved(md)["model_sha256"] == sha256_file(md / "model.pt")


def test_resume_keeps_the_users_threshold(tiny_cookies, tmp_path):
    run = tmp_path / "ae"
    train_run(tiny_config(tiny_cookies, "ae", epochs=1), run, progress=False)
    set_threshold(run, "conformal", 0.5)
    train_run(tiny_config(tiny_cookies, "ae", epochs=2), run, resume=True, progress=False)
    kept = RunDir(run).threshold()
    assert kept.rule == "conformal" and kept.params["earlier_model"]
    assert "guarantee" not in kept.params


BAD_THRESHOLDS = [
    ({"value": True}, "its value"),
    ({"value": "2.5"}, "its value"),
    ({"value": 1.0, "rule": "$\\foo$"}, "its rule"),
    ({"value": 1.0, "rule": ["manual"]}, "its rule"),
    ({"value": 1.0, "params": {"pixel_threshold": [1]}}, "params.pixel_threshold"),
    ({"value": 1.0, "params": {"pixel_threshold": "abc"}}, "params.pixel_threshold"),
    ({"value": 1.0, "params": {"pixel_threshold": float("nan")}}, "params.pixel_threshold"),
    ({"value": 1.0, "rule": "conformal", "params": {"alpha": "abc"}}, "params.alpha"),
    ({"value": 1.0, "rule": "conformal", "params": {"alpha": 1.5}}, "params.alpha"),
    ({"value": 1.0, "params": {"calibration": "x"}}, "params.calibration"),
    ({"value": 1.0, "params": {"calibration": {"source": "folder"}}}, "params.calibration"),
    ({"value": 1.0, "params": {"guarantee": 5}}, "params.guarantee"),
    ({"value": 1.0, "params": {"n": -1}}, "params.n"),
]


@pytest.mark.parametrize(("saved", "named"), BAD_THRESHOLDS)
def test_a_threshold_with_a_bad_field_is_refused_by_name(md, tiny_cookies, capsys, saved, named):
    (md / "threshold.json").write_text(json.dumps(saved))
    with pytest.raises(RunError, match="does not hold a threshold") as err:
        RunDir(md).threshold()
    assert named in str(err.value) and "threshold.json" in str(err.value)
    assert FIX in str(err.value)
    assert main(["predict", "--run", str(md), str(_image(tiny_cookies))]) == 2
    err = capsys.readouterr().err
    assert "threshold.json" in err and named in err and "Traceback" not in err


BAD_HELD_OUT = [
    ({"scores": {"a": 1}}, "a list of finite numbers"),
    ([1.0, 2.0], "a list of finite numbers"),
    ({"paths": ["a"]}, "a list of finite numbers"),
    ({"scores": [None], "paths": ["a"]}, "a list of finite numbers"),
    ({"scores": [True], "paths": ["a"]}, "a list of finite numbers"),
    ({"scores": [1.0, 2.0], "paths": ["a"]}, "one score for each"),
]


@pytest.mark.parametrize(("held_out", "words"), BAD_HELD_OUT)
def test_bad_held_out_scores_are_refused_by_name(md, capsys, held_out, words):
    (md / "val_scores.json").write_text(json.dumps(held_out))
    before = (md / "threshold.json").read_bytes()
    with pytest.raises(RunError, match=words) as err:
        RunDir(md).val_scores()
    assert "val_scores.json" in str(err.value) and "--good-images" in str(err.value)
    assert main(["threshold", "--run", str(md), "--rule", "normal-quantile"]) == 2
    err = capsys.readouterr().err
    assert "val_scores.json" in err and "Traceback" not in err
    assert (md / "threshold.json").read_bytes() == before


def test_no_threshold_is_saved_unless_it_is_a_finite_number(md, capsys):
    (md / "val_scores.json").write_text(
        json.dumps({"scores": [1e308, -1e308], "paths": ["a", "b"]})
    )
    before = (md / "threshold.json").read_bytes()
    assert main(["threshold", "--run", str(md), "--rule", "normal-quantile"]) == 2
    err = capsys.readouterr().err
    assert "not a finite number" in err and "val_scores.json" in err and "Traceback" not in err
    for value in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="threshold not saved to .*threshold.json"):
            RunDir(md).save_threshold(Threshold(value, "manual"))
    with pytest.raises(ValueError, match="params.alpha"):
        RunDir(md).save_threshold(Threshold(1.0, "conformal", {"alpha": 2.0}))
    assert (md / "threshold.json").read_bytes() == before


def test_the_original_table_shows_trains_default_even_after_another_rule_was_set(
    tiny_cookies, tmp_path
):
    """notebook 04's table labelled threshold.json's value "held-out normal quantile", whatever
    rule had replaced it (a rerun after `threshold --rule f1` showed the F1 threshold twice)."""
    from anomaly.original import fixed_threshold_table

    run = tmp_path / "md"
    train_run(tiny_config(tiny_cookies, "meandiff"), run, progress=False)
    score_run(run, overlays=False)
    default = RunDir(run).threshold().value
    before = fixed_threshold_table({"md": run})
    set_threshold(run, "f1")
    assert RunDir(run).threshold().value != default
    assert fixed_threshold_table({"md": run}) == before
    assert f"{default:.4g}" in before.splitlines()[2]
