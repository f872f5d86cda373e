"""Session 21's fixes, each with the check that failed before it."""

from __future__ import annotations


def test_an_export_of_an_earlier_model_is_named_at_train_and_at_predict(
    tiny_cookies, tmp_path, capsys
):
    """A run trained again (its model.pt deleted) kept the model.onnx of its earlier model
    without a word, and `predict --onnx` on it said nothing either (or, when the threshold had
    changed, "export again", which a meandiff run cannot). Exports record their model.pt now;
    the same model trained again is no news."""
    import shutil

    from helpers import tiny_config

    from anomaly.cli import main
    from anomaly.pipeline import train_run

    run = tmp_path / "run"
    train_run(tiny_config(tiny_cookies, method="patchknn"), run, progress=False)
    assert main(["export", "--run", str(run)]) == 0
    image = str(min((tiny_cookies / "test" / "crack").glob("*.png")))
    onnx = ["predict", "--onnx", str(run / "model.onnx"), "--no-overlays", image]
    capsys.readouterr()
    assert main(onnx) == 0
    assert "another model" not in capsys.readouterr().err  # the run's own model: no warning
    same = tmp_path / "same"
    shutil.copytree(run, same)
    (same / "model.pt").unlink()
    train_run(tiny_config(tiny_cookies, method="patchknn"), same, progress=False)
    assert "model.onnx" not in capsys.readouterr().out  # the same model.pt again: nothing to say
    (run / "model.pt").unlink()
    train_run(tiny_config(tiny_cookies, method="meandiff"), run, progress=False)
    out = capsys.readouterr().out
    assert "model.onnx holds another model, kept as it is" in out
    assert f"predict --run {run}" in out
    assert (run / "model.onnx").is_file()  # never deleted: it may be deployed
    assert main(onnx) == 0
    err = capsys.readouterr().err
    assert "was exported from another model than" in err and f"predict --run {run}" in err


def test_reading_a_threshold_imports_no_scipy(tiny_cookies, tmp_path):
    """`predict` reads the run's threshold through anomaly.metrics, whose pixel metrics imported
    scipy.ndimage at the top: 0.3 s of every predict's start-up for a function it never calls."""
    import subprocess
    import sys

    from helpers import tiny_config

    from anomaly.pipeline import train_run

    run = tmp_path / "run"
    train_run(tiny_config(tiny_cookies, method="meandiff"), run, progress=False)
    code = (
        "import sys; from anomaly.runs import RunDir; "
        f"RunDir({str(run)!r}).threshold(); print('scipy.ndimage' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_run_stopped_before_its_first_epoch_was_saved_can_be_trained_again(
    tiny_cookies, tmp_path, capsys
):
    """A kill between model.pt and last.pt of the first epoch left a run every command sent
    elsewhere: train said "continue it with --resume", --resume said "train it again without
    --resume", score said "finish it with --resume". Plain train starts it again now, and the
    others say so (an interrupt audit by a helper)."""
    import pytest
    import torch
    from helpers import tiny_config

    from anomaly.pipeline import score_run, train_run
    from anomaly.runs import RunError

    run = tmp_path / "ae"
    config = tiny_config(tiny_cookies, "ae", epochs=1)
    train_run(config, run, progress=False)
    payload = torch.load(run / "model.pt", weights_only=True)
    torch.save({**payload, "complete": False}, run / "model.pt")
    for name in ("last.pt", "val_scores.json", "threshold.json"):
        (run / name).unlink()
    with pytest.raises(RunError, match=rf"there is nothing to resume; train it again: .*{run}"):
        score_run(run)
    with pytest.raises(RunError, match="train it again without --resume"):
        train_run(config, run, progress=False, resume=True)
    train_run(config, run, progress=False)  # starts again
    assert torch.load(run / "model.pt", weights_only=True)["complete"] is True
    assert (run / "threshold.json").is_file()


def test_threshold_of_a_run_stopped_before_its_held_out_scores_names_resume(tiny_cookies, tmp_path):
    """Killed after training, before val_scores.json: `threshold` said "train the run again to
    get held-out scores", throwing a finished training away; `train --resume` finishes it."""
    import pytest
    from helpers import tiny_config

    from anomaly.calibration import set_threshold
    from anomaly.pipeline import train_run
    from anomaly.runs import RunError

    run = tmp_path / "ae"
    config = tiny_config(tiny_cookies, "ae", epochs=1)
    train_run(config, run, progress=False)
    for name in ("val_scores.json", "threshold.json"):
        (run / name).unlink()
    with pytest.raises(RunError, match=rf"without training again: .*--out {run} --resume"):
        set_threshold(run, "conformal", 0.5)
    train_run(config, run, progress=False, resume=True)
    set_threshold(run, "conformal", 0.5)


def test_a_full_disk_is_named_with_the_file_and_the_fix(tmp_path, monkeypatch):
    """A full disk ended `train` with torch's traceback ("[enforce fail at inline_container.cc]
    unexpected pos") and `score` with a bare "[Errno 28] No space left on device"."""
    import errno
    import shutil
    import types

    import pytest
    import torch

    from anomaly import safe_files
    from anomaly.runs import RunError

    old = tmp_path / "config.json"
    old.write_text("{}")

    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(RunError, match=r"config.json: the disk is full .* Free space, then"):
        safe_files._atomic(old, full)
    assert old.read_text() == "{}" and [p.name for p in tmp_path.iterdir()] == ["config.json"]

    def torch_full(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64")

    monkeypatch.setattr(torch, "save", torch_full)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: types.SimpleNamespace(free=3 * 4096))
    with pytest.raises(RunError, match=r"model.pt: the disk is full"):
        safe_files.atomic_save({}, tmp_path / "model.pt")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: types.SimpleNamespace(free=2**30))
    with pytest.raises(RuntimeError, match="unexpected pos"):  # room enough: torch's own error
        safe_files.atomic_save({}, tmp_path / "model.pt")


def test_a_resume_stopped_before_its_first_epoch_is_named_as_such(tiny_cookies, tmp_path):
    """`train --resume --epochs 3` writes config.json first; killed right then, `score` said
    config.json disagreed with model.pt ("restore config.json, or train a new run") although
    `--resume` continues it."""
    import json

    import pytest
    from helpers import tiny_config

    from anomaly.pipeline import score_run, train_run
    from anomaly.runs import RunError

    run = tmp_path / "ae"
    train_run(tiny_config(tiny_cookies, "ae", epochs=1), run, progress=False)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "epochs": 3}))
    with pytest.raises(RunError, match=rf"stopped before it saved an epoch.*--out {run} --resume"):
        score_run(run, overlays=False)
    train_run(tiny_config(tiny_cookies, "ae", epochs=3), run, progress=False, resume=True)
    score_run(run, overlays=False)


def test_a_resume_killed_between_model_pt_and_threshold_json_keeps_the_threshold(
    tiny_cookies, tmp_path, monkeypatch
):
    """`train --resume` replaced model.pt, then rewrote threshold.json for it: killed between
    the two, the next resume refused the user's threshold as another model's ("copied from
    another run?"), put it aside and set the default. The carried threshold is written first
    now, recording both models."""
    import json

    from helpers import tiny_config

    from anomaly import run_checkpoints
    from anomaly.calibration import set_threshold
    from anomaly.pipeline import train_run
    from anomaly.runs import RunDir

    run = tmp_path / "ae"
    train_run(tiny_config(tiny_cookies, "ae", epochs=1), run, progress=False)
    set_threshold(run, "manual", 0.7)

    def killed(data, path):
        raise KeyboardInterrupt  # after threshold.json, before model.pt

    monkeypatch.setattr(run_checkpoints, "atomic_bytes", killed)
    try:
        train_run(tiny_config(tiny_cookies, "ae", epochs=2), run, progress=False, resume=True)
    except KeyboardInterrupt:
        pass
    monkeypatch.undo()
    assert RunDir(run).threshold().value == 0.7  # for the model.pt still there
    train_run(tiny_config(tiny_cookies, "ae", epochs=3), run, progress=False, resume=True)
    assert RunDir(run).threshold().value == 0.7 and not (run / "threshold.refused.json").exists()
    assert json.loads((run / "threshold.json").read_text())["rule"] == "manual"


def test_train_on_a_set_whose_making_was_interrupted_names_the_generator(tiny_cookies, tmp_path):
    """An interrupted make-cookies moving its folders into place can leave test/ but not
    train/good/: `train` said only "train/good: folder not found" (the other "no data set"
    errors name the generator to run again)."""
    import shutil

    import pytest

    from anomaly.data import AnomalyDataset, DataError

    root = tmp_path / "cookies"
    shutil.copytree(tiny_cookies, root)
    shutil.rmtree(root / "train" / "good")
    (root / ".make-cookies.partial").mkdir()
    with pytest.raises(DataError, match="interrupted make-cookies run: run the same make-cookies"):
        AnomalyDataset(root, "train")


def test_an_overlay_is_never_left_empty_under_its_name(tmp_path, monkeypatch):
    """`predict` claimed an overlay's name with an empty file, then wrote the PNG: a kill
    between left a 0-byte overlay, which later calls never replace. The PNG is written whole
    first, then linked under the first free name."""
    import os

    import numpy as np
    import pytest
    from PIL import Image

    from anomaly.overlays import png_bytes
    from anomaly.safe_files import save_png_new

    taken = tmp_path / "a_overlay.png"
    taken.write_bytes(b"someone else's")
    names = iter([taken, tmp_path / "b_overlay.png", tmp_path / "c_overlay.png"])
    red = png_bytes(np.asarray(Image.new("RGB", (4, 4), "red")))
    made = save_png_new(red, names)
    assert made.name == "b_overlay.png" and taken.read_bytes() == b"someone else's"
    assert Image.open(made).getpixel((0, 0)) == (255, 0, 0)

    opened = os.fdopen

    class Killed:  # the temporary file, killed half-way through the write
        def __init__(self, fd, mode):
            self.file = opened(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            self.file.write(data[: len(data) // 2])
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "fdopen", Killed)
    with pytest.raises(KeyboardInterrupt):
        save_png_new(red, iter([tmp_path / "d_overlay.png"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_overlay.png", "b_overlay.png"]


def test_threshold_while_the_run_trains_says_it_is_in_use(tiny_cookies, tmp_path):
    """`threshold` on a run still training (no val_scores.json yet) said "train the run again
    to get held-out scores"."""
    import json
    import os

    import pytest
    from helpers import tiny_config

    from anomaly.calibration import set_threshold
    from anomaly.pipeline import train_run
    from anomaly.runs import RunError

    run = tmp_path / "ae"
    train_run(tiny_config(tiny_cookies, "ae", epochs=1), run, progress=False)
    (run / "val_scores.json").unlink()
    lock = {"pid": os.getppid(), "command": "anomaly train --out ae --resume"}
    (run / ".lock").write_text(json.dumps(lock))
    with pytest.raises(RunError, match=r"is in use: process \d+ is running `anomaly train"):
        set_threshold(run, "conformal", 0.5)
