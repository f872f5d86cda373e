"""Defects found in session 34 (walkthroughs and the "left" list of session 33), one test each."""

from __future__ import annotations

import re
from pathlib import Path

from helpers import tiny_config


def test_train_and_score_show_progress_for_held_out_images_and_overlays(
    tiny_cookies, tmp_path, capsys
):
    """Session 33's scale walkthrough: `train` showed one bar (features) and `score` one
    (predict); the held-out images' scoring and the overlays, most of `score` at camera sizes,
    ran without a word."""
    from anomaly.pipeline import score_run, train_run

    run = tmp_path / "run"
    train_run(tiny_config(tiny_cookies, "meandiff"), run, progress=True)
    assert "predict meandiff" in capsys.readouterr().err  # the held-out images, after fit
    score_run(run, progress=True)
    err = capsys.readouterr().err
    assert "predict meandiff" in err and "overlays" in err
    score_run(run)  # the API's default stays quiet
    assert "overlays" not in capsys.readouterr().err


def test_explore_prints_its_url_once_the_server_answers(monkeypatch, capsys):
    """Session 33's newcomer: `explore` printed the URL about 5 s before Voila answered, and
    a browser opened at once got "connection refused"; a Voila that failed to start had its
    URL printed all the same."""
    import socket
    import sys

    from anomaly.explorer import server

    with socket.socket() as probe:
        probe.bind((server.LOCAL, 0))
        port = probe.getsockname()[1]
    listens = (
        "import socket, time; time.sleep(0.5); s = socket.socket(); "
        f"s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(3)"
    )
    fails = "import sys; sys.exit(3)"
    monkeypatch.setattr("anomaly.explorer.runs.collect_runs", lambda runs: ({}, {}))
    for child, code, shown in ((listens, 0, True), (fails, 3, False)):
        cmd = [sys.executable, "-c", child, f"--port={port}", "--token=t"]
        monkeypatch.setattr(
            server, "voila_command", lambda *a, c=cmd, **k: (c, {server.RUNS_ENV: "[]"})
        )
        assert server.serve(["RUN"], port=port) == code
        out = capsys.readouterr().out
        assert out.startswith(f"Threshold explorer: starting on 127.0.0.1:{port} ...")
        assert (f"http://127.0.0.1:{port}/" in out) is shown, out


def test_a_method_of_ones_own_says_what_it_reads_and_its_runs_say_how_to_load_them(
    tiny_cookies, tmp_path, monkeypatch, capsys
):
    """A researcher adding a method (helper): a plugin's settings were never said to be
    ignored, and a run of it scored without importing the plugin said "Unknown method" with no
    word of registering it."""
    import pytest

    import anomaly
    from anomaly import config
    from anomaly.cli import main
    from anomaly.detectors import REGISTRY
    from anomaly.detectors.meandiff import MeanDiff

    monkeypatch.setattr(config, "READ_BY", dict(config.READ_BY))
    monkeypatch.setattr(config, "_DECLARED", set())
    with pytest.raises(ValueError, match="'size' is not a setting that only some methods read"):
        anomaly.register("mine", reads=("size",))(type("Mine", (MeanDiff,), {}))
    with pytest.raises(ValueError, match="'patchknn' is a method of the package"):
        anomaly.register("patchknn", reads=("epochs",))  # nothing changed before it is applied
        anomaly.register("patchknn", reads=("epochs",))(type("Mine", (MeanDiff,), {}))
    assert config.ignored_by("patchknn", ["epochs"]) == ["epochs"]
    try:
        anomaly.register("mine", reads=("score_topk",))(type("Mine", (MeanDiff,), {}))
        out = tmp_path / "run"
        flags = ["--data", str(tiny_cookies), "--out", str(out), "--size", "64"]
        assert main(["train", "--method", "mine", *flags, "--score-topk", "0.1", "--lr", "1"]) == 0
        err = capsys.readouterr().err
        assert "ignores --lr" in err and "--score-topk" not in err.split("ignores")[1]
    finally:
        REGISTRY.pop("mine", None)
    assert main(["score", "--run", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Unknown method 'mine'" in err and "module that registers it" in err


def test_a_notebooks_run_follows_its_settings_and_goes_on_after_an_interrupt(
    tiny_cookies, tmp_path, monkeypatch, capsys
):
    """A notebook user (helper): `ensure_run(S, 'ae', data, epochs=2)` under smoke was a
    TypeError (epochs given twice); `S.epochs = 3` and the cell again reused the 1-epoch run
    without a word; and a training the kernel's interrupt stopped could not be run again from
    the notebook ("holds an interrupted run; continue it with `python -m anomaly train`")."""
    import pytest

    import anomaly.train
    from anomaly.notebook_setup import Settings, ensure_run
    from anomaly.runs import RunDir

    s = Settings(True, "tiny", 64, 1, tmp_path / "data", tmp_path / "runs")
    one = ensure_run(s, "meandiff", tiny_cookies)
    two = ensure_run(s, "meandiff", tiny_cookies, epochs=2)  # was a TypeError
    assert two != one and RunDir(two).config().epochs == 2
    smaller = ensure_run(
        Settings(True, "tiny", 32, 1, s.data_dir, s.runs_dir), "meandiff", tiny_cookies
    )
    assert smaller not in (one, two) and RunDir(smaller).config().size == 32
    assert "its size is 64, not 32" in capsys.readouterr().out

    real, calls = anomaly.train._run_epoch, []

    def interrupted_in_epoch_2(*args):
        calls.append(1)
        if len(calls) == 3:  # epoch 1: training and validation; then the kernel's interrupt
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(anomaly.train, "_run_epoch", interrupted_in_epoch_2)
    s3 = Settings(True, "tiny", 64, 3, s.data_dir, s.runs_dir)
    with pytest.raises(KeyboardInterrupt):
        ensure_run(s3, "ae", tiny_cookies)
    monkeypatch.undo()
    run = ensure_run(s3, "ae", tiny_cookies)  # the cell again: goes on from epoch 1
    assert "continuing the interrupted run" in capsys.readouterr().out
    assert [r["epoch"] for r in RunDir(run).history()] == [1, 2, 3]
    assert RunDir(run).has_metrics()


def test_a_notebook_waits_for_a_run_another_notebook_is_training(
    tiny_cookies, tmp_path, monkeypatch, capsys
):
    """Notebooks 02 and 03 run at once: 03 failed with "in use ... choose another --out"."""
    from anomaly import notebook_setup
    from anomaly.safe_files import InUse

    s = notebook_setup.Settings(True, "tiny", 64, 1, tmp_path / "data", tmp_path / "runs")
    real, tries = notebook_setup._ensure_run, []

    def busy_twice(*args):
        tries.append(1)
        if len(tries) <= 2:
            raise InUse(
                f"{tmp_path}/runs/meandiff is in use: process 1 is running `train` on it. Wait "
                "for it to finish, or choose another --out. (If no such process runs, delete it.)"
            )
        return real(*args)

    monkeypatch.setattr(notebook_setup, "_ensure_run", busy_twice)
    monkeypatch.setattr(notebook_setup, "IN_USE_POLL_S", 0.01)
    run = notebook_setup.ensure_run(s, "meandiff", tiny_cookies)
    assert RunDir_has_metrics(run) and len(tries) == 3
    out = capsys.readouterr().out
    assert out.count("waiting for it (interrupt the kernel to stop waiting)") == 1
    assert "--out" not in out  # the shell's advice, meaningless in a notebook


def RunDir_has_metrics(run) -> bool:
    from anomaly.runs import RunDir

    return RunDir(run).has_metrics()


def test_the_reader_gives_no_verdict_to_an_empty_frame_nor_waits_on_a_pipe(
    tiny_cookies, tmp_path, capsys
):
    """A line engineer (helper): a frame with no part under the camera (one flat colour) got
    PASS and exit 0 from `predict` (a warning on stderr only); the copied reader gave it PASS
    without a word, and waited for ever on a named pipe that `predict` refuses."""
    import os
    import subprocess
    import sys

    from helpers import patchknn_export
    from PIL import Image

    import anomaly.onnx_predict as reader
    from anomaly.cli import main

    onnx = patchknn_export(tiny_cookies, tmp_path / "run", size=32)
    empty, fifo = tmp_path / "empty.png", tmp_path / "fifo.png"
    Image.new("RGB", (64, 64), (140, 120, 90)).save(empty)
    os.mkfifo(fifo)
    good = min((tiny_cookies / "test" / "good").glob("*.png"))
    for command in (
        ["predict", "--run", str(tmp_path / "run"), "--no-overlays"],
        ["predict", "--onnx", str(onnx), "--no-overlays"],
        None,
    ):
        args = [str(empty), str(fifo), str(good)]
        if command:
            code = main([*command, *args])
            out, err = capsys.readouterr()
        else:  # in a process of its own: without the fix it waits on the pipe for ever
            done = subprocess.run(
                [sys.executable, reader.__file__, str(onnx), *args],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            code, out, err = done.returncode, done.stdout, done.stderr
        verdicts = [line.split("\t")[2] for line in out.splitlines()[-3:]]
        assert code == 2 and verdicts[:2] == ["ERROR", "ERROR"], (command, out, err)
        assert verdicts[2] in ("PASS", "REJECT")
        assert "nothing to inspect, so it gets no verdict" in err and "a pipe" in err


def test_a_threshold_saved_while_another_is_chosen_is_not_undone(
    scored_ae_run, tmp_path, monkeypatch, capsys
):
    """A line engineer (helper): `threshold --rule conformal --good-images` (seconds of
    scoring) and `threshold --rule manual --value 9` started meanwhile both said "saved" and
    exited 0; the first to start, ending last, silently undid the second."""
    from helpers import copy_run

    import anomaly.calibration
    from anomaly.cli import main
    from anomaly.runs import RunDir

    run = copy_run(scored_ae_run, tmp_path / "run")
    real = anomaly.calibration.good_scores

    def meanwhile(*args, **kwargs):
        out = real(*args, **kwargs)
        assert main(["threshold", "--run", str(run), "--rule", "manual", "--value", "9"]) == 0
        return out

    monkeypatch.setattr(anomaly.calibration, "good_scores", meanwhile)
    code = main(["threshold", "--run", str(run), "--rule", "normal-quantile", "--value", "0.9"])
    err = capsys.readouterr().err
    assert code == 75 and "was saved by another command while this one chose" in err
    saved = RunDir(run).threshold()
    assert (saved.value, saved.rule) == (9.0, "manual")


def test_a_16_bit_colour_tiff_is_named_as_a_16_bit_png_is(scored_ae_run, tmp_path, capsys):
    """A line engineer (helper): a colour camera's 12-bit data in a 16-bit RGB TIFF, which
    Pillow 13 opens as 8-bit RGB (its high bytes: nearly black), was scored without a word;
    the same pixels as a 16-bit PNG were named."""
    import numpy as np
    import tifffile

    from anomaly.cli import main
    from anomaly.data.image_kind import image_kind

    pixels = (np.random.default_rng(0).random((48, 48, 3)) * 4095).astype(np.uint16)
    tiff = tmp_path / "camera.tif"
    tifffile.imwrite(tiff, pixels)
    assert image_kind(tiff)["bits"] == 16
    main(["predict", "--run", str(scored_ae_run), "--out", str(tmp_path / "o"), str(tiff)])
    err = capsys.readouterr().err
    assert "camera.tif" in err and "16-bit" in err


def test_predict_says_why_an_image_failed_beside_its_row(scored_ae_run, tmp_path):
    """A line engineer (helper): the reasons for ERROR rows came after every row, so a log of
    both streams never had a reason next to its row, and a run stopped part-way lost them."""
    import subprocess
    import sys

    from PIL import Image

    bad, good = tmp_path / "0bad.png", tmp_path / "1good.png"
    bad.write_bytes(b"not a png")
    Image.effect_noise((64, 64), 40).save(good)
    done = subprocess.run(
        [sys.executable, "-m", "anomaly", "predict", "--run", str(scored_ae_run), "--no-overlays"]
        + [str(bad), str(good)],
        check=False,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
    )
    lines = done.stdout.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith(f"{bad}\t"))
    assert lines[row - 1].startswith(f"error: {bad}: cannot read"), done.stdout
    assert sum(line.startswith(f"error: {bad}") for line in lines) == 1  # said once


def _renamed(data, tmp_path, stem: str):
    """A copy of the tiny cookies whose test/crack/000.png and its mask are named `stem`."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(data, root)
    (root / "test" / "crack" / "000.png").rename(root / "test" / "crack" / f"{stem}.png")
    mask = root / "ground_truth" / "crack" / "000_mask.png"
    mask.rename(mask.with_name(f"{stem}_mask.png"))
    return root


def test_odd_file_names_in_a_data_set_from_someone_else(tiny_cookies, tmp_path, capsys):
    """A hostile-data walkthrough (helper): a name of bytes that are not UTF-8 failed `score`
    ("surrogates not allowed", no file named); a name of 240 bytes failed `score` and every
    later overlay of `predict` (its temporary file's name was too long); a newline in a name
    made an error read as "trained meandiff: run folder OK"."""
    import os

    from anomaly.cli import main

    for i, stem in enumerate((os.fsdecode(b"z\xff"), "b" * 240)):
        root = _renamed(tiny_cookies, tmp_path / f"set{i}", stem)
        run = tmp_path / f"set{i}" / "run"
        flags = ["--data", str(root), "--out", str(run), "--method", "meandiff", "--size", "32"]
        assert main(["train", *flags]) == 0
        assert main(["score", "--run", str(run)]) == 0, capsys.readouterr().err
        assert any(
            stem in row
            for row in (run / "scores.csv")
            .read_bytes()
            .decode(errors="surrogateescape")
            .splitlines()
        )
        image = root / "test" / "crack" / f"{stem}.png"
        assert (
            main(["predict", "--run", str(run), str(image), str(image.with_name("001.png"))]) == 0
        )
        assert len(list((run / "predict").iterdir())) == 2
    capsys.readouterr()
    evil = _renamed(tiny_cookies, tmp_path / "nl", "000")
    good = min((evil / "train" / "good").iterdir())
    good.rename(good.with_name("evil\ntrained meandiff: run folder OK.png"))
    flags = ["--data", str(evil), "--out", str(tmp_path / "nl" / "run"), "--method", "meandiff"]
    assert main(["train", *flags]) == 2
    err = capsys.readouterr().err
    assert "evil\\ntrained meandiff" in err and "rename them" in err
    assert "\ntrained meandiff" not in err


def test_a_bomb_mask_and_a_deeply_nested_manifest_are_named(tiny_cookies, tmp_path, capsys):
    """The same walkthrough: a mask whose header claims 100,000 x 100,000 pixels, and a
    manifest.json of 100,000 nested lists, ended in raw tracebacks."""
    import shutil
    import struct
    import zlib

    from anomaly.cli import main
    from anomaly.data.generated import read_manifest

    root = tmp_path / "data"
    shutil.copytree(tiny_cookies, root)
    head = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + head
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk
    png += struct.pack(">I", zlib.crc32(chunk)) + b"\x00\x00\x00\x00IEND\xaeB`\x82"
    (root / "ground_truth" / "crack" / "000_mask.png").write_bytes(png)
    run = tmp_path / "run"
    main(["train", "--data", str(root), "--out", str(run), "--method", "meandiff", "--size", "32"])
    capsys.readouterr()
    assert main(["score", "--run", str(run)]) == 2
    assert "000_mask.png: not a readable mask" in capsys.readouterr().err
    deep = tmp_path / "manifest.json"
    deep.write_text('{"sets": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert read_manifest(deep) is None  # someone else's: not a suite's, no RecursionError


def test_a_notebook_waiting_for_a_run_does_no_work_until_it_is_free(
    tiny_cookies, tmp_path, monkeypatch, capsys
):
    """Review: `ensure_run` waiting on a run another process trains started `train_run` (its
    checks, the detector, the hashing of every image) on each poll, every 2 seconds."""
    import subprocess
    import sys
    import time
    import types

    import anomaly.pipeline
    from anomaly import notebook_setup

    s = notebook_setup.Settings(True, "tiny", 64, 1, tmp_path / "data", tmp_path / "runs")
    run, held, free = s.run_folder("meandiff", tiny_cookies), tmp_path / "held", tmp_path / "free"
    code = (  # holds the lock until the test, having waited twice, lets it go
        "import os, sys, time; from anomaly.runs import RunDir\n"
        "with RunDir(sys.argv[1]).lock('train'):\n"
        "    open(sys.argv[2], 'w').close()\n"
        "    while not os.path.exists(sys.argv[3]): time.sleep(0.02)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(run), str(held), str(free)])
    polls = []

    def sleep(seconds):  # ensure_run's wait between tries
        polls.append(seconds)
        if len(polls) == 2:
            free.touch()
        time.sleep(0.05)

    try:
        while not held.exists():
            assert holder.poll() is None
            time.sleep(0.05)
        real, calls = anomaly.pipeline.train_run, []
        monkeypatch.setattr(
            anomaly.pipeline, "train_run", lambda *a, **k: calls.append(1) or real(*a, **k)
        )
        monkeypatch.setattr(notebook_setup, "time", types.SimpleNamespace(sleep=sleep))
        assert notebook_setup.ensure_run(s, "meandiff", tiny_cookies) == run
    finally:
        free.touch()
        holder.wait(timeout=30)
    assert calls == [1] and len(polls) >= 2 and "waiting for it" in capsys.readouterr().out


def test_the_copied_reader_beside_an_older_onnx_checks_says_so(tmp_path):
    """Review: the reader beside the onnx_checks.py of an earlier copy (no package installed)
    loaded it, and the first image failed with "AttributeError: not_a_file"."""
    import subprocess
    import sys

    import anomaly.onnx_checks
    import anomaly.onnx_predict

    (tmp_path / "deployed.py").write_text(Path(anomaly.onnx_predict.__file__).read_text())
    older = Path(anomaly.onnx_checks.__file__).read_text()
    older = re.sub(r"CHECKS_VERSION = \d+", "CHECKS_VERSION = 2", older)
    (tmp_path / "onnx_checks.py").write_text(older)
    code = "import sys; sys.modules['anomaly'] = None; import deployed"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert done.returncode != 0 and "of its own version" in done.stderr
    assert f"{tmp_path / 'onnx_checks.py'}: version 2" in done.stderr  # which, and how old


def test_an_empty_frame_sets_no_threshold(scored_ae_run, tiny_cookies, tmp_path, capsys):
    """An upgrade walkthrough (helper): a flat frame among `--good-images` set the conformal
    threshold with its own score, while `predict` gives the same image no verdict."""
    from helpers import copy_run, good_test_folder
    from PIL import Image

    from anomaly.cli import main

    run = copy_run(scored_ae_run, tmp_path / "run")
    folder = good_test_folder(tiny_cookies, tmp_path / "good")
    Image.new("L", (64, 64), 128).save(folder / "flat.png")
    before = (run / "threshold.json").read_bytes()
    args = ["threshold", "--run", str(run), "--rule", "conformal", "--value", "0.25"]
    assert main([*args, "--good-images", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "1 of its 5 images is all one flat colour (flat.png)" in err
    assert (run / "threshold.json").read_bytes() == before


def test_resume_of_a_run_still_training_says_in_use(scored_ae_run, tmp_path, capsys):
    """The same walkthrough: `train --resume --epochs 1` on a run another process trains said
    "has already trained N epochs" (exit 2), not that it is in use (75)."""
    import subprocess
    import sys
    import time

    from helpers import copy_run

    from anomaly.cli import main

    run, held = copy_run(scored_ae_run, tmp_path / "run"), tmp_path / "held"
    code = (
        "import sys, time; from anomaly.runs import RunDir\n"
        "with RunDir(sys.argv[1]).lock('train'):\n"
        "    open(sys.argv[2], 'w').close(); time.sleep(20)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(run), str(held)])
    try:
        while not held.exists():
            assert holder.poll() is None
            time.sleep(0.05)
        assert main(["train", "--out", str(run), "--resume", "--epochs", "1"]) == 75
        assert "is in use" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()


def test_score_names_an_empty_frame_among_its_test_images(scored_ae_run, tiny_cookies, tmp_path):
    """The upgrade walkthrough: `score` counted a flat test image as any other without a word,
    while `predict` gives it no verdict."""
    import shutil
    import warnings

    import pytest
    from helpers import copy_run
    from PIL import Image

    from anomaly.pipeline import score_run

    data = tmp_path / "data"
    shutil.copytree(tiny_cookies, data)
    Image.new("L", (64, 64), 128).save(data / "test" / "good" / "flat.png")
    run = copy_run(scored_ae_run, tmp_path / "run")
    with pytest.warns(UserWarning, match=r"1 of the \d+ images is all one flat colour .*flat.png"):
        score_run(run, data=data, overlays=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*flat colour")
        score_run(run, overlays=False)  # the run's own data: no flat image, no such warning


def test_predict_says_when_its_overlay_folder_has_grown_large(
    scored_ae_run, tiny_cookies, tmp_path, monkeypatch, capsys
):
    """Session 33's scale walkthrough and this session's line engineer: predict's overlays are
    never replaced, so a line's folder grows by 0.8 MB an image at camera size without a word."""
    import anomaly.cli_predict
    from anomaly.cli import main

    image = min((tiny_cookies / "test" / "good").glob("*.png"))
    out = tmp_path / "pictures"
    assert main(["predict", "--run", str(scored_ae_run), "--out", str(out), str(image)]) == 0
    assert "grows with every call" not in capsys.readouterr().err
    monkeypatch.setattr(anomaly.cli_predict, "PILE_BYTES", 1)
    assert main(["predict", "--run", str(scored_ae_run), "--out", str(out), str(image)]) == 0
    assert "(it holds 2 overlays, 0.0 GB, and grows with every call" in capsys.readouterr().err


def test_names_a_second_review_found(tiny_cookies, tmp_path, capsys):
    """A second review: an escape sequence in a defect kind's folder name reached the terminal
    raw in score's summary; a Windows-1252 quote read as Latin-1 (U+0093, harmless) was refused
    with the newlines; the explorer's report failed on a name that is not UTF-8; a long defect
    folder's name left no trace of the image's stem in its overlay's name."""
    import os
    import shutil

    from anomaly.cli import main
    from anomaly.explorer import ThresholdExplorer
    from anomaly.safe_files import fitting_name

    root = tmp_path / "kind"
    shutil.copytree(tiny_cookies, root)
    for top in ("test", "ground_truth"):
        (root / top / "crack").rename(root / top / "crack\x1b[2K\rscore OK")
    flags = ["--data", str(root), "--method", "meandiff", "--size", "32"]
    assert main(["train", *flags, "--out", str(tmp_path / "r1")]) == 0
    assert main(["score", "--run", str(tmp_path / "r1")]) == 2
    assert "rename them" in capsys.readouterr().err

    odd = _renamed(tiny_cookies, tmp_path / "odd", "000")
    quote, good = min((odd / "train" / "good").iterdir()), min((odd / "test" / "good").iterdir())
    quote.rename(quote.with_name("\x93quote\x94.png"))
    good.rename(good.with_name(os.fsdecode(b"z\xff.png")))  # rejected: in the report's gallery
    assert main(["train", *flags[:1], str(odd), *flags[2:], "--out", str(tmp_path / "r2")]) == 0
    assert main(["score", "--run", str(tmp_path / "r2")]) == 0
    report = ThresholdExplorer(tmp_path / "r2").export_report()
    assert "\\udcff" in report.read_text(encoding="utf-8")  # the name, written printable

    name = fitting_name("d" * 250 + "_img007.png")
    assert name.startswith("ddd") and name.endswith("_img007.png") and len(name) <= 200


def test_the_empty_frame_warning_points_at_the_caller(tiny_cookies, tmp_path):
    """The second review: the warning named torch's no_grad wrapper as where it came from."""
    import shutil
    import warnings

    from PIL import Image

    from anomaly import Config
    from anomaly.detectors import get_detector

    folder = tmp_path / "data"
    shutil.copytree(tiny_cookies, folder)
    Image.new("RGB", (64, 64), (90, 90, 90)).save(folder / "test" / "good" / "flat.png")
    det = get_detector("meandiff")(Config.for_method("meandiff", data=str(folder), size=32))
    det.fit(det.dataset(folder, "train"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        det.predict(det.dataset(folder, "test"))
    flat = [w for w in caught if "flat colour" in str(w.message)]
    assert len(flat) == 1 and flat[0].filename == __file__


def test_a_container_without_home_or_temporary_folder(tmp_path, monkeypatch):
    """A container walkthrough (helper): a user id without a passwd entry and no HOME made
    every patchknn command say its size or its weights were wrong ("Could not determine home
    directory"); a read-only /tmp failed them even with a writable ANOMALY_CACHE."""
    import tempfile

    import pytest
    import torch

    from anomaly import onnx_cache

    for name in ("ANOMALY_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(onnx_cache.Path, "home", staticmethod(no_home))
    assert onnx_cache.cache_dir() is None  # no cache, and on
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-folder"))
    monkeypatch.setenv("ANOMALY_CACHE", str(tmp_path / "cache"))
    made = onnx_cache.exported(
        torch.nn.Linear(2, 2), torch.zeros(1, 2), "t", lambda p: p.write_bytes(b"graph")
    )
    assert made == b"graph" and list((tmp_path / "cache").glob("*.onnx"))
    monkeypatch.setenv("ANOMALY_CACHE", "off")
    with pytest.raises(OSError, match="set TMPDIR or ANOMALY_CACHE to a folder you may write"):
        onnx_cache.exported(
            torch.nn.Linear(2, 3), torch.zeros(1, 2), "t", lambda p: p.write_bytes(b"g")
        )


def test_predict_with_its_streams_closed_or_full(scored_ae_run, tiny_cookies, tmp_path):
    """The same walkthrough: with stderr closed (2>&-) predict's notes went into stdout among
    the rows (and train failed silently in tqdm); with stdout closed (>&-) every verdict was
    lost with exit 0; a full disk under `> rows` said only "No space left on device"."""
    import subprocess
    import sys

    image = min((tiny_cookies / "test" / "good").glob("*.png"))
    cmd = f"'{sys.executable}' -m anomaly predict --run '{scored_ae_run}' --no-overlays '{image}'"

    def shell(redirect: str):
        return subprocess.run(
            ["bash", "-c", f"{cmd} {redirect}"], capture_output=True, text=True, check=False
        )

    closed_err = shell("2>&-")
    assert closed_err.returncode == 0 and closed_err.stdout.count("\n") == 1
    assert closed_err.stdout.startswith(f"{image}\t"), closed_err.stdout
    assert shell(">&-").returncode == 2
    both = shell(">&- 2>&-")
    assert both.returncode == 2 and not both.stdout and not both.stderr
    say = f"'{sys.executable}' -m anomaly threshold --run '{scored_ae_run}' >&-"
    said = subprocess.run(["bash", "-c", say], capture_output=True, text=True, check=False)
    assert said.returncode == 2 and "standard output is closed" in said.stderr
    full = shell("> /dev/full")
    assert full.returncode == 2 and "rows to its standard output" in full.stderr


def test_a_threshold_on_good_images_in_a_folder_of_any_name(
    scored_ae_run, tiny_cookies, tmp_path, capsys
):
    """The same walkthrough: `threshold --good-images` refused a folder whose name is not UTF-8
    (or any non-ASCII one in a C locale), and one of a long path: its guarantee holds the path,
    and was checked as printable text of at most 1,000 characters."""
    import os

    from helpers import copy_run, good_test_folder

    from anomaly.cli import main
    from anomaly.runs import RunDir

    run = copy_run(scored_ae_run, tmp_path / "run")
    long = tmp_path / "/".join(["x" * 200] * 5)
    long.mkdir(parents=True)
    for folder in (tmp_path / os.fsdecode(b"new\xe9"), long / "good", tmp_path / "a\u00a0b"):
        good_test_folder(tiny_cookies, folder)
        args = ["--rule", "conformal", "--value", "0.25", "--good-images", str(folder)]
        assert main(["threshold", "--run", str(run), *args]) == 0, capsys.readouterr().err
        assert RunDir(run).threshold().rule == "conformal"


def test_an_overlay_says_what_its_colours_hide_and_where_its_scale_ends(monkeypatch):
    """A pictures walkthrough (helper): a missed crack (PASS) with 3.4 % of its map over the
    pixel threshold was drawn yellow while the bar says red is "above pixel threshold", so a
    near miss looked like a clean part; the bar's right end read "2x" beside "pixel threshold
    7.26" (it meant 12.4); at 4000 px the words were 18 px, 4 px on a screen."""
    import numpy as np
    from PIL import ImageDraw

    from anomaly import overlays

    said = []
    real = ImageDraw.ImageDraw.text
    monkeypatch.setattr(
        ImageDraw.ImageDraw,
        "text",
        lambda self, xy, text, *a, **k: said.append(text) or real(self, xy, text, *a, **k),
    )
    scale = overlays.EvidenceScale(2.0, 7.0)
    amap = np.full((32, 32), 3.0, np.float32)
    amap[:4, :8] = 9.0  # 1/32 of it over the pixel threshold
    image = np.full((64, 64, 3), 0.5, np.float32)
    overlays.colour_bar.cache_clear()
    overlays.annotated_overlay(image, amap, scale, score=1.0, threshold=2.0, title="a.png")
    assert "a.png" in said and "3.12% of its map over pixel thr. (yellow)" in said  # own line
    assert "12" in said and "2x" not in said  # 2 + 2 * (7 - 2)
    said.clear()
    overlays.annotated_overlay(image, amap, scale, score=3.0, threshold=2.0, title="a.png")
    assert "a.png" in said  # rejected: its red says it
    assert overlays._font_size(4000) >= 60 and overlays._font_size(256) == 16


def test_a_new_runs_overlays_start_at_its_typical_good_pixel(tiny_cookies, tmp_path):
    """The same walkthrough: the colour bar's left end says "typical good", but the scale
    started at the held-out maps' 1 % quantile, washing about a fifth of a good cookie yellow."""
    import numpy as np
    import pytest

    from anomaly.pipeline import load_run, train_run
    from anomaly.runs import RunDir

    run = tmp_path / "run"
    train_run(tiny_config(tiny_cookies, "meandiff", val_fraction=0.5), run, progress=False)
    record = RunDir(run).val_scores()
    det = load_run(run)
    held = det.dataset(tiny_cookies, "train")
    pred = det.predict(held)
    maps = pred.maps[[p in record["paths"] for p in pred.paths]]
    assert record["map_range"][0] == pytest.approx(float(np.median(maps)), rel=1e-6)
    assert record["map_range"][0] > float(np.quantile(maps, 0.01))
    assert record["map_range_q"] == [0.5, 0.999]  # which run is which, for what it draws


def test_body_rows_of_an_image_larger_than_an_overlay_is_drawn(monkeypatch):
    """Review: with words growing with the picture, `body_rows` of an image over 4096 px
    (drawn shrunk) pointed 64 rows too low."""
    import numpy as np

    from anomaly import overlays

    image = np.zeros((3000, 6000, 3), np.float32)
    drawn = overlays.annotated_overlay(
        image, np.zeros((8, 8), np.float32), overlays.EvidenceScale(0, 1), 0.0, 1.0, title="t"
    )
    rows = overlays.body_rows(image.shape, "t")
    assert rows.stop - rows.start == overlays.overlay_size(3000, 6000)[0]
    assert drawn[rows.start - 1].min() == 255 and drawn[rows.start].max() == 0  # the picture


def test_the_true_outline_has_a_dark_ring_colour_blind_eyes_see():
    """The pictures walkthrough: under deuteranopia (Machado's matrix) the lime outline became
    (239, 214, 58), nearly the yellow wash's (249, 222, 35): the crack's outline vanished."""
    import numpy as np

    from anomaly import overlays
    from anomaly.viz import OUTLINE

    mask = np.zeros((32, 32), np.float32)
    mask[10:20, 10:20] = 1
    amap = np.full((32, 32), 0.9, np.float32)  # all of it in the yellow wash
    out = overlays.evidence_overlay(
        np.full((32, 32, 3), 0.5), amap, overlays.EvidenceScale(0, 1), mask
    )
    assert tuple(out[10, 15]) == OUTLINE and tuple(out[9, 15]) == (30, 30, 30)
    assert tuple(out[15, 15]) != (30, 30, 30) and tuple(out[5, 5]) != (30, 30, 30)


def test_an_empty_frame_is_one_whatever_its_corners_are():
    """Review: the quick look before the empty-frame check compared with the four corners, so a
    frame flat but for exactly those four pixels passed score's warning and calibration."""
    import torch

    from anomaly.detectors.inputs import empty_frame

    frame = torch.ones(3, 64, 64)
    for r, c in ((0, 0), (0, 60), (60, 0), (60, 60)):  # every 16th pixel's corners
        frame[:, r, c] = 0
    assert empty_frame(frame) and not empty_frame(torch.rand(3, 64, 64))
