"""Issue 10's bad-input catalogue: a run folder is untrusted, nothing a user made is lost, nothing
is silently wrong, and a mistake gets a message that names the file and the fix.

Each test reproduces one case of the issue (its number in the test's docstring).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import copy_run, tiny_config, tiny_flags

from anomaly.calibration import set_threshold
from anomaly.cli import main
from anomaly.data import AnomalyDataset
from anomaly.metrics import evaluate, pixel_auroc
from anomaly.pipeline import load_run, score_run, train_run
from anomaly.runs import RunDir


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


class Payload:
    """Unpickling this creates a file: proof that a loader ran code from a file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


# --- security (1) --------------------------------------------------------------------------------
def test_crafted_model_pt_is_refused_and_its_payload_never_runs(scored_ae_run, tmp_path, capsys):
    """1: a crafted model.pt ran a shell command during a plain `score`."""
    run = copy_run(scored_ae_run, tmp_path / "run")
    proof = tmp_path / "payload_ran"
    payload = torch.load(run / "model.pt", weights_only=True)
    payload["state"]["extra"] = Payload(proof)
    torch.save(payload, run / "model.pt")
    code, _, err = run_cli(capsys, "score", "--run", run, "--no-overlays")
    assert code == 2 and "refused" in err and "model.pt" in err and "Traceback" not in err
    assert not proof.exists()
    code, _, err = run_cli(capsys, "predict", "--run", run, run / "overlays")
    assert code == 2 and "refused" in err and not proof.exists()


def test_crafted_last_pt_is_refused_on_resume(scored_ae_run, tmp_path, capsys):
    """1: a crafted last.pt ran a shell command during `train --resume`."""
    run = copy_run(scored_ae_run, tmp_path / "run")
    proof = tmp_path / "payload_ran"
    torch.save({"epoch": 1, "rng": Payload(proof)}, run / "last.pt")
    code, _, err = run_cli(capsys, "train", "--out", run, "--resume", "--epochs", 4)
    assert code == 2 and "refused" in err and "last.pt" in err
    assert not proof.exists()


def test_last_pt_holds_only_tensors_and_plain_values(scored_ae_run):
    """1: the numpy RNG state used to be a pickled ndarray tuple; now weights_only loads it."""
    last = torch.load(scored_ae_run / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and isinstance(last["rng"]["numpy"][1], torch.Tensor)


# --- data loss (4-8) -----------------------------------------------------------------------------
def test_make_cookies_overwrite_never_deletes_a_users_folder(tmp_path, capsys):
    """4: `make-cookies ROOT --overwrite` deleted a user's data set without a cookie manifest."""
    mine = tmp_path / "mine"
    (mine / "train" / "good").mkdir(parents=True)
    (mine / "train" / "good" / "photo.png").write_bytes(b"my photo")
    code, _, err = run_cli(
        capsys, "make-cookies", mine, "--preset", "tiny", "--size", 64, "--overwrite"
    )
    assert code == 2 and "did not make" in err
    assert (mine / "train" / "good" / "photo.png").read_bytes() == b"my photo"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    code, _, err = run_cli(capsys, "make-cookies", a_file, "--preset", "tiny")
    assert code == 2 and "is a file" in err and a_file.read_text() == "mine"


def test_a_run_folder_in_use_is_refused(tiny_cookies, tmp_path, capsys):
    """5: two `train` into one --out both succeeded and left a mixed folder."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = tmp_path / "run"
        run.mkdir()
        (run / RunDir.LOCK).write_text(json.dumps({"pid": other.pid, "command": "train"}))
        code, _, err = run_cli(capsys, "train", "--out", run, *tiny_flags(tiny_cookies))
        assert code == 75 and "in use" in err and str(other.pid) in err
        assert sorted(p.name for p in run.iterdir()) == [RunDir.LOCK]
    finally:
        other.kill()
        other.wait()


def test_a_stale_lock_is_taken_over(tiny_cookies, tmp_path, capsys):
    """5: a lock left by a process that is gone does not block the run for ever."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    run = tmp_path / "run"
    run.mkdir()
    (run / RunDir.LOCK).write_text(json.dumps({"pid": gone.pid, "command": "train"}))
    code, _, _ = run_cli(
        capsys, "train", "--out", run, *tiny_flags(tiny_cookies, **{"--epochs": 1})
    )
    assert code == 0 and (run / "model.pt").exists() and not (run / RunDir.LOCK).exists()


def test_resume_on_a_finished_run_does_nothing(scored_ae_run, tmp_path, capsys):
    """6: `--resume` on a finished run replaced a hand-set threshold."""
    run = copy_run(scored_ae_run, tmp_path / "run")
    set_threshold(run, "manual", 0.123)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    code, out, _ = run_cli(capsys, "train", "--out", run, "--resume")
    assert code == 0 and "already trained" in out and "nothing to do" in out
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_a_killed_score_leaves_the_old_outputs_whole(scored_ae_run, tmp_path, monkeypatch, capsys):
    """7: a killed `score` left a 0-byte predictions.npz, and `threshold --rule f1` crashed."""
    from anomaly.detectors import Predictions

    run = copy_run(scored_ae_run, tmp_path / "run")
    before = (run / "predictions.npz").read_bytes()

    def killed(self, f):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(Predictions, "save", killed)
    assert run_cli(capsys, "score", "--run", run, "--no-overlays")[0] == 130
    monkeypatch.undo()
    assert (run / "predictions.npz").read_bytes() == before
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert not (run / RunDir.LOCK).exists()
    (run / "predictions.npz").write_bytes(b"")  # as an older version left it
    code, _, err = run_cli(capsys, "threshold", "--run", run, "--rule", "f1")
    assert code == 2 and "predictions.npz" in err and "score the run again" in err


def test_predict_keeps_one_overlay_per_image_with_the_same_name(
    scored_ae_run, tiny_cookies, tmp_path, capsys
):
    """8: images with the same file name in different folders shared one overlay file."""
    run = copy_run(scored_ae_run, tmp_path / "run")
    a, b = tiny_cookies / "test" / "crack" / "000.png", tiny_cookies / "test" / "good" / "000.png"
    code, out, _ = run_cli(capsys, "predict", "--run", run, a, b)
    assert code == 0 and len(out.strip().splitlines()) == 2  # a row each; the threshold: stderr
    overlays = sorted((run / "predict").glob("*.png"))
    assert len(overlays) == 2


# --- silently wrong (9-14) -----------------------------------------------------------------------
def test_a_defect_without_mask_is_left_out_of_pixel_metrics(scored_ae_run, tiny_cookies, tmp_path):
    """9: a defect image with no mask was scored as an all-normal mask."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_cookies, data)
    (data / "ground_truth" / "crack" / "000_mask.png").unlink()
    test = AnomalyDataset(data, "test", size=64, channels=1)
    pred = load_run(scored_ae_run).predict(test)
    assert pred.n_missing_masks == 1
    metrics = evaluate(pred)
    assert metrics["n_missing_masks"] == 1 and any("no mask" in n for n in metrics["notes"])
    keep = np.array([p != str(data / "test" / "crack" / "000.png") for p in pred.paths])
    assert metrics["pixel_auroc"] == pytest.approx(pixel_auroc(pred.masks[keep], pred.maps[keep]))
    assert metrics["pixel_auroc"] != pytest.approx(pixel_auroc(pred.masks, pred.maps))
    pred.save(tmp_path / "p.npz")
    from anomaly.detectors import Predictions

    assert Predictions.load(tmp_path / "p.npz").n_missing_masks == 1


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_threshold_refuses_non_finite_values(scored_ae_run, tmp_path, capsys, value):
    """10: `threshold --value nan` was accepted (then every part passes)."""
    run = copy_run(scored_ae_run, tmp_path / "run")
    before = (run / "threshold.json").read_text()
    code, _, err = run_cli(
        capsys, "threshold", "--run", run, "--rule", "manual", f"--value={value}"
    )
    assert code == 2 and "finite" in err and (run / "threshold.json").read_text() == before


def test_threshold_f1_refuses_a_value(scored_ae_run, capsys):
    """10: `--rule f1 --value X` ignored X silently."""
    code, _, err = run_cli(
        capsys, "threshold", "--run", scored_ae_run, "--rule", "f1", "--value", 0.5
    )
    assert code == 2 and "drop --value" in err


def test_an_edited_config_that_changes_scores_is_refused(scored_ae_run, tmp_path, capsys):
    """11: editing config.json's `loss` silently changed every score."""
    run = copy_run(scored_ae_run, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config["loss"] = "ssim" if config["loss"] == "l2" else "l2"
    (run / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli(capsys, "score", "--run", run, "--no-overlays")
    assert code == 2 and "loss" in err and "config.json" in err and "model.pt" in err


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--epochs", 0),
        ("--epochs", -1),
        ("--size", 0),
        ("--batch-size", 0),
        ("--k", -1),
        ("--lr", 0),
        ("--lr", -0.1),
        ("--latent", 0),
    ],
)
def test_numeric_flags_out_of_range_are_refused(tiny_cookies, tmp_path, capsys, flag, value):
    """12: `--epochs 0` printed "trained" and saved an untrained model."""
    code, out, err = run_cli(
        capsys, "train", "--out", tmp_path / "run", *tiny_flags(tiny_cookies, **{flag: value})
    )
    assert code == 2 and flag in err and "trained" not in out
    assert not (tmp_path / "run").exists()


def test_a_size_too_small_is_refused_before_reading_data(tmp_path, capsys):
    """12/16: `--size 30` failed after loading the data and left a partial run folder."""
    code, _, err = run_cli(
        capsys,
        "train",
        "--out",
        tmp_path / "run",
        *tiny_flags(tmp_path / "no_data_here", **{"--size": 30}),
    )
    assert code == 2 and "--size 30" in err and "no_data_here" not in err
    assert not (tmp_path / "run").exists()


def test_resume_applies_more_epochs_and_refuses_other_changes(scored_ae_run, tmp_path, capsys):
    """13: `--resume` silently ignored new flags; 14: stale outputs stayed beside the new model."""
    run = copy_run(scored_ae_run, tmp_path / "run")
    code, _, err = run_cli(capsys, "train", "--out", run, "--resume", "--lr", 0.5)
    assert code == 2 and "--lr" in err
    assert (run / "scores.csv").exists()
    code, out, _ = run_cli(capsys, "train", "--out", run, "--resume", "--epochs", 3)
    assert code == 0
    assert [r["epoch"] for r in RunDir(run).history()] == [1, 2, 3]
    assert RunDir(run).config().epochs == 3
    assert "removed the outputs of the earlier model" in out
    assert not (run / "scores.csv").exists() and not (run / "predictions.npz").exists()
    score_run(run, overlays=False)  # config.json and model.pt agree again


# --- messages instead of tracebacks (15-16) ------------------------------------------------------
@pytest.mark.parametrize(
    "device, message", [("gpu", "not a device"), ("mps", "MPS"), ("cuda:7", "CUDA")]
)
def test_unusable_devices_get_a_message(tiny_cookies, tmp_path, capsys, device, message):
    """15: `--device gpu` and `--device mps` on Linux gave tracebacks."""
    if (
        device == "cuda:7"
        and torch.cuda.device_count() > 7
        or (device == "mps" and torch.backends.mps.is_available())
    ):
        pytest.skip("this machine has that device")
    code, _, err = run_cli(
        capsys,
        "train",
        "--out",
        tmp_path / "run",
        *tiny_flags(tiny_cookies, **{"--device": device}),
    )
    assert code == 2 and message in err and f"--device {device}" in err


def test_out_naming_a_file_is_refused(tiny_cookies, tmp_path, capsys):
    """15: `--out` naming an existing file gave a traceback."""
    (tmp_path / "afile").write_text("mine")
    code, _, err = run_cli(capsys, "train", "--out", tmp_path / "afile", *tiny_flags(tiny_cookies))
    assert code == 2 and "is a file" in err and (tmp_path / "afile").read_text() == "mine"


def test_resume_on_a_kmeans_run_says_there_is_nothing_to_resume(scored_ae_run, tmp_path, capsys):
    """15: `--resume` on a kmeans run gave a traceback."""
    km = tmp_path / "km"
    assert (
        run_cli(capsys, "train", "--method", "kmeans", "--from", scored_ae_run, "--out", km)[0] == 0
    )
    code, _, err = run_cli(capsys, "train", "--out", km, "--resume")
    assert code == 2 and "does not train by epochs" in err


def test_ctrl_c_during_training_says_how_to_continue(tiny_cookies, tmp_path, monkeypatch, capsys):
    """15: Ctrl-C during training printed a traceback."""
    import anomaly.train

    real, calls = anomaly.train._run_epoch, []

    def interrupted_in_epoch_2(*args):
        calls.append(1)
        if len(calls) == 3:  # epoch 1: training and validation; then Ctrl-C
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(anomaly.train, "_run_epoch", interrupted_in_epoch_2)
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--out", run, *tiny_flags(tiny_cookies))
    assert code == 130
    assert (
        f"interrupted after epoch 1; continue with `python -m anomaly train --out {run} --resume`"
    ) in err
    assert not (run / RunDir.LOCK).exists()
    monkeypatch.undo()
    assert run_cli(capsys, "train", "--out", run, "--resume")[0] == 0
    assert [r["epoch"] for r in RunDir(run).history()] == [1, 2]


def test_not_a_run_folder_names_the_folder(tmp_path, capsys):
    """16: the "not a run folder" error showed a literal `{run_dir}`."""
    code, _, err = run_cli(capsys, "score", "--run", tmp_path / "nothing")
    assert code == 2 and "{run_dir}" not in err and f"--out {tmp_path / 'nothing'}" in err


@pytest.mark.parametrize(
    "name, command",
    [
        ("config.json", ["score", "--no-overlays"]),
        ("threshold.json", ["predict"]),
    ],
)
def test_invalid_json_names_the_file(scored_ae_run, tiny_cookies, tmp_path, capsys, name, command):
    """16: invalid JSON in config.json/threshold.json did not name the file."""
    run = copy_run(scored_ae_run, tmp_path / "run")
    (run / name).write_text("{ not json")
    extra = [tiny_cookies / "test" / "good" / "000.png"] if command[0] == "predict" else []
    code, _, err = run_cli(capsys, command[0], "--run", run, *command[1:], *extra)
    assert code == 2 and str(run / name) in err and "not valid JSON" in err


def test_predict_takes_a_folder_and_one_bad_path_hides_nothing(
    scored_ae_run, tiny_cookies, tmp_path, capsys
):
    """16: predict on a folder advised to "re-save it as PNG"; one bad path hid the results."""
    run = copy_run(scored_ae_run, tmp_path / "run")
    code, out, err = run_cli(capsys, "predict", "--run", run, tiny_cookies / "test" / "crack")
    assert code == 0 and out.count("crack") >= 2
    said = [line for line in err.splitlines() if not line.startswith("note: ")]  # 1 held out
    assert len(said) == 1 and err.startswith("threshold ")  # and nothing else
    good = tiny_cookies / "test" / "good" / "001.png"
    code, out, err = run_cli(capsys, "predict", "--run", run, tmp_path / "missing.png", good)
    assert code == 2 and str(good) in out and "missing.png" in err and "no such file" in err


def test_a_symlink_loop_is_reported_as_one(scored_ae_run, tiny_cookies, tmp_path, capsys):
    """16: a symlink loop was reported as "not an image"."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_cookies, data)
    loop = data / "train" / "good" / "loop.png"
    os.symlink(loop, loop)
    code, _, err = run_cli(capsys, "train", "--out", tmp_path / "run", *tiny_flags(data))
    assert code == 2 and "loop.png" in err and "loop" in err.replace("loop.png", "")
    assert "not an image" not in err and not (tmp_path / "run").exists()
    code, _, err = run_cli(capsys, "predict", "--run", scored_ae_run, "--no-overlays", loop)
    assert code == 2 and "(a loop)" in err


def test_a_broken_link_in_a_folder_to_predict_is_named(
    scored_ae_run, tiny_cookies, tmp_path, capsys
):
    """`predict FOLDER` skipped a broken link in the folder without a word; it names it now
    (the same listing as training folders and `threshold --good-images`) and scores the rest."""
    import shutil

    folder = tmp_path / "check"
    shutil.copytree(tiny_cookies / "test" / "good", folder)
    os.symlink(tmp_path / "gone.png", folder / "000_moved.png")
    # no overlays: the session's shared run stays as it was trained and scored
    code, out, err = run_cli(capsys, "predict", "--run", scored_ae_run, "--no-overlays", folder)
    n_images = len(list((tiny_cookies / "test" / "good").iterdir()))
    assert code == 2 and "000_moved.png" in err and "gone.png, which does not exist" in err
    assert sum(line.count(".png") > 0 for line in out.splitlines()) >= n_images


def test_one_training_image_says_so(tiny_cookies, tmp_path):
    """16: one training image gave a warning about `val_fraction`."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_cookies, data)
    for p in sorted((data / "train" / "good").iterdir())[1:]:
        p.unlink()
    with pytest.warns(UserWarning, match="train/good holds one to train on"):
        train_run(tiny_config(data, epochs=1, batch_size=1), tmp_path / "run", progress=False)


def test_score_without_overlays_does_not_claim_them(scored_ae_run, tmp_path, capsys):
    """16: `score --no-overlays` claimed it wrote overlays."""
    run = copy_run(scored_ae_run, tmp_path / "run")
    code, out, _ = run_cli(capsys, "score", "--run", run, "--no-overlays")
    wrote = out.splitlines()[-1].split(": ", 1)[1]
    assert code == 0 and "predictions.npz" in wrote and "overlays" not in wrote
    assert not (run / "overlays").exists()


def test_run_files_are_written_atomically(tmp_path):
    """7: every writer goes through a temporary file; a failed write keeps the old file."""
    from anomaly.runs import _atomic

    run = RunDir(tmp_path)
    run.save_metrics({"a": 1})

    def half_then_killed(f):
        f.write(b'{"a": ')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _atomic(run.file(RunDir.METRICS), half_then_killed)
    assert run.metrics() == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == [RunDir.METRICS]


def test_threshold_on_held_out_scores_imports_no_torch(scored_ae_run, tmp_path):
    """`threshold` with a rule on the held-out scores only reads the run folder: it must not
    pay torch's import (seconds) each time a user tries another false-reject rate."""
    import json

    from helpers import cli_in_fresh_python

    run = copy_run(scored_ae_run, tmp_path / "run")
    rc, modules = cli_in_fresh_python(
        "threshold", "--run", run, "--rule", "normal-quantile", "--value", "0.9"
    )
    assert rc == 0 and "torch" not in modules
    saved = json.loads((run / "threshold.json").read_text())
    assert saved["rule"] == "normal_quantile"
    assert saved["params"]["calibration"]["source"] == "held-out"
