"""A run's own files and the runs it builds on, when something fails or changes: a resume that
fails changes nothing, a damaged last.pt is named with the fix, a patchknn/flow run notices that
its encoder run was retrained, and `score` reads the threshold before it writes anything."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import tiny_config

import anomaly.train
from anomaly.cli import main
from anomaly.pipeline import load_run, score_run, train_run
from anomaly.runs import RunDir, RunError


@pytest.fixture(scope="module")
def ae_run(tiny_cookies, tmp_path_factory):
    """A finished tiny auto-encoder run (2 epochs); tests copy it before changing it."""
    run = tmp_path_factory.mktemp("trust") / "ae"
    train_run(tiny_config(tiny_cookies, "ae"), run, progress=False)
    return run


def _files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


def test_a_failed_resume_changes_nothing_in_the_run(ae_run, tmp_path, capsys):
    run = shutil.copytree(ae_run, tmp_path / "run")
    before = _files(run)
    code = main(["train", "--out", str(run), "--resume", "--epochs", "4", "--device", "cuda:99"])
    assert code == 2 and "--device cuda:99" in capsys.readouterr().err
    assert _files(run) == before
    score_run(run, overlays=False)  # config.json still agrees with model.pt
    train_run(RunDir(run).config().replace(epochs=3), run, resume=True, progress=False)
    versions = json.loads(RunDir(run).file(RunDir.VERSIONS).read_text())
    assert versions["torch"] and [r["from_epoch"] for r in versions["resumed"]] == [2]


def test_a_resume_cut_short_in_its_first_epoch_changes_nothing(ae_run, tmp_path, monkeypatch):
    run = shutil.copytree(ae_run, tmp_path / "run")
    before = _files(run)

    def crash(*args):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(anomaly.train, "_run_epoch", crash)
    with pytest.raises(RuntimeError, match="out of memory"):
        train_run(RunDir(run).config().replace(epochs=4), run, resume=True, progress=False)
    assert _files(run) == before


def test_a_resume_cut_short_later_says_to_finish_it(ae_run, tmp_path, monkeypatch):
    """An epoch that does not improve leaves model.pt the earlier best: it is marked as from an
    unfinished training of the new config, so config.json never disagrees with it."""
    run = shutil.copytree(ae_run, tmp_path / "run")
    losses = iter([1e9, 1e9])  # epoch 3: train and validation loss, no improvement

    def epoch(*args):
        loss = next(losses, None)
        if loss is None:
            raise KeyboardInterrupt
        return loss

    monkeypatch.setattr(anomaly.train, "_run_epoch", epoch)
    with pytest.raises(KeyboardInterrupt):
        train_run(RunDir(run).config().replace(epochs=5), run, resume=True, progress=False)
    assert RunDir(run).trained_config().epochs == 5
    with pytest.raises(RunError, match="its training was interrupted"):
        load_run(run)
    monkeypatch.undo()
    train_run(None, run, resume=True, progress=False)
    assert len(RunDir(run).history()) == 5 and load_run(run)


def _damage(last: dict, kind: str) -> dict:
    if kind == "missing stale":
        del last["stale"]
    elif kind == "torch rng size":
        last["rng"]["torch"] = torch.zeros(3, dtype=torch.uint8)
    elif kind == "lr a string":
        last["optimizer"]["param_groups"][0]["lr"] = "0.1"
    elif kind == "history not a list":
        last["history"] = 5
    elif kind == "optimizer shapes":
        for kept in last["optimizer"]["state"].values():
            kept["exp_avg"] = torch.zeros(7)
    elif kind == "model state":
        last["state"] = {"model": {"nope": torch.zeros(2)}}
    return last


@pytest.mark.parametrize(
    "kind",
    [
        "missing stale",
        "torch rng size",
        "lr a string",
        "history not a list",
        "optimizer shapes",
        "model state",
    ],
)
def test_a_damaged_last_pt_is_named_with_the_fix(ae_run, tmp_path, capsys, kind):
    run = shutil.copytree(ae_run, tmp_path / "run")
    last = RunDir(run).file(RunDir.LAST)
    torch.save(_damage(torch.load(last, weights_only=True), kind), last)
    before = _files(run)
    assert main(["train", "--out", str(run), "--resume", "--epochs", "4"]) == 2
    err = capsys.readouterr().err
    assert f"{last} is damaged" in err and "new --out" in err and "Traceback" not in err
    assert _files(run) == before


@pytest.fixture(scope="module")
def encoder_runs(ae_run, tiny_cookies, tmp_path_factory, monkeypatch_module):
    """A patchknn run on the ae run's encoder, trained with a relative encoder:RUN."""
    home = tmp_path_factory.mktemp("encoder")
    shutil.copytree(ae_run, home / "runs" / "ae")
    monkeypatch_module.chdir(home)
    config = tiny_config(tiny_cookies, "patchknn", backbone="encoder:runs/ae", coreset_ratio=0.5)
    train_run(config, home / "pk", progress=False)
    monkeypatch_module.undo()
    return home / "runs" / "ae", home / "pk"


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_an_encoder_run_is_saved_absolute_and_loads_from_anywhere(encoder_runs, tmp_path):
    encoder, pk = encoder_runs
    assert RunDir(pk).config().backbone == f"encoder:{encoder}"
    score_run(pk, overlays=False)  # from the tests' folder, not the one it was trained in


def test_an_encoder_of_other_channels_is_refused_up_front(encoder_runs, tiny_cookies, tmp_path):
    encoder, _ = encoder_runs
    config = tiny_config(tiny_cookies, "patchknn", backbone=f"encoder:{encoder}", channels=3)
    with pytest.raises(ValueError, match="trained on 1-channel images.*use --channels 1"):
        train_run(config, tmp_path / "pk3", progress=False)
    assert not (tmp_path / "pk3").exists()


def test_a_retrained_encoder_is_refused_naming_both_runs(encoder_runs, tmp_path):
    encoder, pk = encoder_runs
    encoder = shutil.copytree(encoder, tmp_path / "ae")
    pk = shutil.copytree(pk, tmp_path / "pk")
    config = RunDir(pk).config().replace(backbone=f"encoder:{encoder}")
    RunDir(pk).save_config(config)
    model = torch.load(RunDir(pk).file(RunDir.MODEL), weights_only=True)
    model["config"]["backbone"] = model["state"]["backbone"] = config.backbone  # moved
    torch.save(model, RunDir(pk).file(RunDir.MODEL))
    load_run(pk)  # the same encoder: loads
    train_run(RunDir(encoder).config().replace(epochs=3), encoder, resume=True, progress=False)
    with pytest.raises(RunError, match=rf"{pk} was trained on .* another model of {encoder}") as e:
        load_run(pk)
    assert f"train {pk} again" in str(e.value) and f"restore {encoder}" in str(e.value)
    model["state"]["encoder_sha256"] = None  # a run from before the record: loads, with a note
    torch.save(model, RunDir(pk).file(RunDir.MODEL))
    with pytest.warns(UserWarning, match="made before runs recorded their encoder"):
        load_run(pk)


def test_score_reads_the_threshold_before_it_writes_anything(ae_run, tmp_path):
    run = shutil.copytree(ae_run, tmp_path / "run")
    score_run(run, overlays=True)
    RunDir(run).file(RunDir.THRESHOLD).write_text("{")
    before = _files(run)
    overlays = sorted(p.name for p in RunDir(run).overlays.iterdir())
    with pytest.raises(RunError, match="threshold.json"):
        score_run(run, overlays=True)
    assert _files(run) == before
    assert sorted(p.name for p in RunDir(run).overlays.iterdir()) == overlays


def test_a_resume_over_a_threshold_from_another_model_keeps_it_aside(ae_run, tmp_path, capsys):
    run = tmp_path / "ae"
    shutil.copytree(ae_run, run)
    path = run / "threshold.json"
    foreign = {"value": 1.5, "rule": "manual", "params": {}, "model_sha256": "0" * 64}
    path.write_text(json.dumps(foreign))  # copied from another run
    train_run(RunDir(run).config().replace(epochs=3), run, resume=True, progress=False)
    out = capsys.readouterr().out
    assert "set for another model" in out and "threshold.refused.json" in out
    assert json.loads((run / "threshold.refused.json").read_text()) == foreign  # not deleted
    assert RunDir(run).threshold().params["set_by"] == "train"  # the default, for this model
    score_run(run, overlays=False)  # and the run is usable
