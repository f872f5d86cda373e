"""Defects found in session 33, each with the test that failed before its fix."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from anomaly.data import generated, make_cookies
from anomaly.run_lock import alive_since, check_not_in_use, folder_lock
from anomaly.safe_files import RunError

PROC = pytest.mark.skipif(not Path(f"/proc/{os.getppid()}/stat").exists(), reason="no /proc")
TINY = {"preset": "tiny", "seed": 0, "size": 64}
LONG_AGO = 1e9  # 2001: before any process running now started


def test_a_lock_whose_flock_is_free_is_stale_whatever_process_has_its_number_now(tmp_path):
    """A lock this version wrote says that its holder flocks it; a process killed before a
    restart left one whose PID now belongs to another program, which blocked every command of
    the run ("process N is running `train` on it") although nobody held the lock."""
    pytest.importorskip("fcntl")
    lock = tmp_path / ".lock"
    lock.write_text(json.dumps({"pid": os.getppid(), "command": "train", "flock": True}))
    with folder_lock(tmp_path, ".lock", "score"):
        record = json.loads(lock.read_text())
        assert record.items() >= {"pid": os.getpid(), "command": "score", "flock": True}.items()
    assert not lock.exists()


@PROC
def test_an_older_lock_of_a_process_started_after_it_was_written_is_stale(tmp_path):
    """An older version's lock (its PID alone) names a live process that started after the
    lock was written: another program that got the number since. Readers and writers go on; a
    lock its live process may have written still stops them."""
    lock = tmp_path / ".lock"
    lock.write_text(json.dumps({"pid": os.getppid(), "command": "train"}))
    with pytest.raises(RunError, match=f"process {os.getppid()} is running `train`"):
        check_not_in_use(tmp_path, ".lock", "score")
    os.utime(lock, (LONG_AGO, LONG_AGO))
    assert not alive_since(os.getppid(), LONG_AGO) and alive_since(os.getppid(), 4e9)
    check_not_in_use(tmp_path, ".lock", "score")
    with folder_lock(tmp_path, ".lock", "train"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()


@PROC
def test_a_generators_marker_of_a_process_started_since_is_an_interrupted_run(tmp_path):
    """The same for the data generators: a staging folder whose marker names a process started
    after it was written is what an interrupted run left, not a run in progress."""
    root = tmp_path / "c"
    stage = generated.staging(root, "make-cookies")
    stage.mkdir(parents=True)
    marker = {"generator": "make-cookies", "phase": "write", "pid": os.getppid()}
    (stage / generated.MARKER).write_text(json.dumps(marker))
    with pytest.raises(ValueError, match=f"in use: process {os.getppid()} is running make-c"):
        make_cookies(root, **TINY)
    for path in (stage / generated.MARKER, stage):
        os.utime(path, (LONG_AGO, LONG_AGO))
    make_cookies(root, **TINY)  # what it left is removed, and the set made
    assert not stage.exists() and len(list((root / "train" / "good").iterdir())) > 0


@pytest.mark.parametrize("via", ["--run", "--onnx"])
def test_a_full_disk_stops_the_overlays_not_the_verdicts(
    via, tiny_cookies, tmp_path, monkeypatch, capsys
):
    """`predict` on a disk that fills up gave no verdict after the first overlay it could not
    write (an OSError out of the loop): every image is scored and given its verdict, the
    overlays stop, and the command says how many are missing and why, exiting 2."""
    import errno

    from helpers import patchknn_export

    import anomaly.predict
    from anomaly.cli import main

    onnx = patchknn_export(tiny_cookies, tmp_path / "run", size=32)
    images = sorted((tiny_cookies / "test").rglob("*.png"))[:3]
    save, calls = anomaly.predict.save_png_new, []

    def fills_up(png, names):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(png, names)

    monkeypatch.setattr(anomaly.predict, "save_png_new", fills_up)
    model = str(tmp_path / "run") if via == "--run" else str(onnx)
    out = tmp_path / "pictures"
    assert main(["predict", via, model, "--out", str(out), *map(str, images)]) == 2
    printed, err = capsys.readouterr()
    rows = [line.split("\t") for line in printed.splitlines()]
    assert [r[0] for r in rows] == list(map(str, images))
    assert all(r[2] in ("PASS", "REJECT") for r in rows)
    assert [r[3] == "-" for r in rows] == [False, True, True]
    assert len(list(out.iterdir())) == 1 and len(calls) == 2  # tried once more, then no more
    assert f"2 of the 3 overlays were not written ({out}: No space left on device)" in err
    assert "every verdict above was made" in err and "--no-overlays" in err


def test_a_long_score_line_fits_its_overlay():
    """The verdict band of a narrow overlay cut off the threshold of a score close to it
    ("score 0.0003806 >= 0.000342" for 0.0003426, notebook 03)."""
    import numpy as np

    from anomaly.overlays import EvidenceScale, annotated_overlay, body_rows

    image, amap = np.full((64, 64, 3), 0.5, np.float32), np.zeros((64, 64), np.float32)
    scale = EvidenceScale(floor=1.0, pixel_threshold=2.0)
    for score, threshold in [(0.0003806, 0.0003426), (1234567.1, 1234567.2), (8.1, 8.0)]:
        picture = annotated_overlay(image, amap, scale, score, threshold, title="crack / 000.png")
        head = picture[: body_rows(image.shape, "crack / 000.png").start]
        assert (head[:, -3:] == 255).all(), (score, threshold)  # nothing drawn at the edge
        assert (head[:, head.shape[1] // 2 :] < 128).any()  # the numbers are there


def test_the_good_photos_from_the_line_are_all_different(tmp_path, monkeypatch, capsys):
    """Notebook 07's 24 good photos "from the line" held two crops of the same place (a coin
    set has few positions): `threshold --good-images` warned of a copy, counted 23, and the
    notebook still said 24. The settings say which folders the notebook uses (it said the
    cookies')."""
    import dataclasses

    from anomaly import notebook as nb
    from anomaly import notebook_photos as own
    from anomaly.safe_files import sha256_file

    monkeypatch.setenv(nb.HOME_ENV, str(tmp_path))
    s = nb.settings(smoke=False, say=False)
    p = own.photo_settings(s)
    assert capsys.readouterr().out == (
        f"full settings: {nb.shown(p.data)}, runs in {nb.shown(p.run)}\n"
    )
    p = dataclasses.replace(own.photo_settings(dataclasses.replace(s, smoke=True)), n_good=24)
    files = sorted(own.good_photos(p).iterdir())
    assert len(files) == 24 and len({sha256_file(f) for f in files}) == 24


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_a_greyscale_tiff_turned_by_its_orientation_tag_is_read_as_viewers_show_it(dtype, tmp_path):
    """A mono camera's uncompressed TIFF turned a quarter by its orientation tag (5-8) was
    decoded by Pillow 13 at its stored size with its pixels scrambled: trained, scored and
    drawn so, without a word. Every orientation, compressed or not, now reads as shown."""
    import numpy as np
    import tifffile
    from PIL import Image

    from anomaly.data.image_kind import open_image, read_rgb

    turns = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE"}
    turns |= {6: "ROTATE_270", 7: "TRANSVERSE", 8: "ROTATE_90"}
    stored = (np.arange(6 * 4).reshape(6, 4) * 10).astype(dtype)
    if dtype == "float32":
        stored /= 256
    for orientation in range(1, 9):
        shown = Image.fromarray(stored)
        if orientation > 1:
            shown = shown.transpose(getattr(Image.Transpose, turns[orientation]))
        for compression in (None, "zlib"):
            path = tmp_path / f"{orientation}-{compression}.tif"
            tifffile.imwrite(
                path, stored, compression=compression, extratags=[(274, "H", 1, orientation)]
            )
            with open_image(path) as im:
                assert np.array_equal(np.asarray(im), np.asarray(shown)), (orientation, compression)
            assert read_rgb(path).shape[:2] == np.asarray(shown).shape


def test_the_deployed_reader_turns_such_a_tiff_as_the_package_does(tmp_path):
    """The export's own reader (onnxruntime, numpy and Pillow alone) reads such a TIFF as the
    package does, palette ones too (their colours kept)."""
    import numpy as np
    import tifffile
    from PIL import Image, TiffImagePlugin

    from anomaly.data.image_kind import open_image
    from anomaly.onnx_predict import read_file

    stored = (np.arange(6 * 4).reshape(6, 4) * 10).astype(np.uint8)
    path = tmp_path / "mono.tif"
    tifffile.imwrite(path, stored, extratags=[(274, "H", 1, 6)])
    assert np.array_equal(read_file(path, 32)[..., 0] * 255, np.rot90(stored, -1))
    palette = Image.fromarray(np.dstack([stored * 0 + 200, stored, stored])).convert("P")
    tag = TiffImagePlugin.ImageFileDirectory_v2()
    tag[274] = 6
    palette.save(path, tiffinfo=tag)
    shown = np.asarray(palette.transpose(Image.Transpose.ROTATE_270).convert("RGB"))
    assert np.allclose(read_file(path, 32) * 255, shown, atol=1e-3)
    with open_image(path) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), shown)


def test_a_data_set_of_linked_files_is_not_called_changed(tiny_cookies, tmp_path, recwarn):
    """A data folder whose train/ is a link (or whose images are links: DVC's cache, a NAS)
    was warned about at every `score` as "missing or changed since it was trained": the check
    counted any file whose real path is outside the data folder. It follows the folder's links
    now, as `train` did; a path named outside it is still not read."""
    import warnings

    from anomaly.config import Config
    from anomaly.pipeline import score_run, train_run
    from anomaly.runs import RunDir
    from anomaly.train_images import warn_changed_training

    store, data = tmp_path / "store", tmp_path / "data"
    shutil.copytree(tiny_cookies, store)
    data.mkdir()
    (data / "train").symlink_to(store / "train")
    for part in ("test", "ground_truth"):
        shutil.copytree(store / part, data / part)
    run = tmp_path / "md"
    train_run(Config.for_method("meandiff", data=str(data), size=32), run, progress=False)
    score_run(run, overlays=False)
    (tmp_path / "link").symlink_to(data)  # the data folder given through a link (review)
    score_run(run, data=str(tmp_path / "link"), overlays=False)
    assert not [w for w in recwarn if "changed since it was trained" in str(w.message)]
    split = json.loads((run / "split.json").read_text())
    outside = str(data / ".." / "store" / "train" / "good" / Path(split["train"][0]).name)
    split["train"][0] = outside  # the same file, named outside the data folder: not read
    (run / "split.json").write_text(json.dumps(split))
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        warn_changed_training(RunDir(run), str(data))
    assert [w for w in said if f"first: {outside}" in str(w.message)]


def test_predict_recursive_names_the_linked_folders_it_does_not_search(tiny_cookies, tmp_path):
    """`predict --recursive` left the images of a linked sub-folder out without a word (exit
    0): parts uninspected. The links are named, with the fix."""
    from anomaly.predict import image_tree

    top = tmp_path / "parts"
    (top / "sub").mkdir(parents=True)
    shutil.copy(min((tiny_cookies / "test" / "good").glob("*.png")), top / "sub" / "a.png")
    (top / "linked").symlink_to(tiny_cookies / "test" / "crack")
    with pytest.warns(UserWarning, match=r"parts/linked: a link to a folder, not searched"):
        assert image_tree([top]) == [top / "sub" / "a.png"]


def test_a_warning_in_a_log_is_a_line_of_its_own():
    """With stderr in a log file, each warning came after a progress bar on the same line
    (tqdm clears the bar with a carriage return, no new line): filtering the bars out of the
    log (grep -v) removed the warnings too."""
    import io
    import warnings

    from tqdm import tqdm

    from anomaly.cli import _one_line_warnings

    log, show = io.StringIO(), _one_line_warnings(warnings.showwarning)
    with tqdm(total=3, file=log, desc="predict patchknn") as bar:
        bar.update(1)
        show("a mask marks 98 %", UserWarning, "/x/anomaly/data/masks.py", 1, file=log)
    lines = log.getvalue().split("\n")
    assert "warning: a mask marks 98 %" in lines
    assert not [line for line in lines if "predict patchknn" in line and "warning" in line]


def test_a_mask_named_in_capitals_goes_with_its_image(tiny_cookies, tmp_path):
    """`d0_MASK.PNG` was refused as a mask of an image named `d0_MASK.*` (upper-case image
    names were read, an upper-case _MASK not)."""
    from anomaly.data import AnomalyDataset

    data = tmp_path / "data"
    shutil.copytree(tiny_cookies, data)
    mask = min((data / "ground_truth" / "crack").glob("*_mask.png"))
    upper = mask.with_name(mask.name.replace("_mask.png", "_MASK.PNG"))
    mask.rename(upper)
    test = AnomalyDataset(data, "test", size=32)
    assert str(upper) in [s.mask_path for s in test.samples]


def test_the_first_unusable_file_ends_its_sentence_before_the_others(tiny_cookies, tmp_path):
    from anomaly.data import AnomalyDataset
    from anomaly.data.files import DataError

    data = tmp_path / "data"
    shutil.copytree(tiny_cookies, data)
    for image in sorted((data / "test" / "good").glob("*.png"))[:2]:
        image.write_bytes(b"")
    with pytest.raises(DataError) as said:
        AnomalyDataset(data, "test", size=32)
    assert ". Not usable either: " in str(said.value) and ".." not in str(said.value)


def _predictions_cases(z):
    import numpy as np

    arrays = {k: z[k] for k in z.files}
    yield "truncated", None
    yield "empty", b""
    yield "cut short", arrays | {"scores": arrays["scores"][:3]}
    yield "words", arrays | {"scores": np.array(["a"] * len(arrays["scores"]))}
    yield "NaN", arrays | {"scores": np.full(len(arrays["scores"]), np.nan)}


def test_threshold_says_a_predictions_file_it_cannot_use(scored_ae_run, tmp_path, capsys):
    """An untrusted audit (helper): `threshold --run RUN` read predictions.npz with a bare
    np.load: a damaged one gave a traceback (after `--rule manual` had saved its threshold),
    one of NaN scores gave made-up counts ("rejects 0 of 4 good ... catches 0 of 6"), and a
    pipe in its place hung the command. It says the file and the fix instead."""
    import io
    import threading

    import numpy as np

    from anomaly.cli import main
    from anomaly.runs import RunDir
    from anomaly.threshold_text import test_set_words

    run = tmp_path / "run"
    shutil.copytree(scored_ae_run, run)
    npz = run / "predictions.npz"
    whole = npz.read_bytes()
    with np.load(io.BytesIO(whole)) as z:
        cases = list(_predictions_cases(z))
    for name, content in cases:
        if content is None:
            npz.write_bytes(whole[:100])
        elif isinstance(content, bytes):
            npz.write_bytes(content)
        else:
            np.savez(npz, **content)
        for argv in (
            ["threshold", "--run", str(run)],
            ["threshold", "--run", str(run), "--rule", "manual", "--value", "5"],
        ):
            assert main(argv) == 0, name
            out = capsys.readouterr().out
            assert f"note: {npz} cannot be used (" in out and "score the run again" in out, name
            assert "catches" not in out, name
    npz.unlink()
    os.mkfifo(npz)
    said = []
    reader = threading.Thread(
        target=lambda: said.append(test_set_words(RunDir(run), RunDir(run).threshold())),
        daemon=True,
    )
    reader.start()
    reader.join(10)
    assert said and "not a regular file" in said[0]


def test_a_bad_held_out_record_is_named_for_what_is_wrong(scored_ae_run, tmp_path):
    """val_scores.json with bad scores was said to have a bad map_range (its map_range was
    fine): the overlay scale's reader replaced the file's own error."""
    from anomaly.runs import RunDir

    run = tmp_path / "run"
    shutil.copytree(scored_ae_run, run)
    record = json.loads((run / "val_scores.json").read_text())
    (run / "val_scores.json").write_text(json.dumps(record | {"scores": ["1"] * 2}))
    with pytest.raises(RunError) as said:
        RunDir(run).map_range()
    assert "map_range" not in str(said.value) and "scores" in str(said.value)


def test_no_quantile_note_for_a_threshold_whose_scores_do_not_give_it():
    """A threshold.json edited to 1e308 was said to be no quantile (its scores do not give it),
    and then also "the 0.99 quantile of only 1 held-out good image": both cannot be true."""
    from types import SimpleNamespace

    from anomaly.decision import few_held_out
    from anomaly.threshold_file import UNSUPPORTED

    params = {"q": 0.99, "n_normal": 1, "set_by": "train"}
    quantile = SimpleNamespace(rule="normal_quantile", value=1e308, params=params)
    assert "quantile of only 1 held-out" in few_held_out(quantile, "run")
    quantile.params = params | {UNSUPPORTED: True}
    assert few_held_out(quantile, "run") is None


def test_special_files_and_a_run_named_like_a_file_are_said_as_such(scored_ae_run, tmp_path):
    """An ONNX file or last.pt that is a pipe was said to be missing (fixes that do not
    apply), and a run folder named `x.npz` was taken for a predictions file."""
    from anomaly.explorer.runs import load_run_predictions, run_folder
    from anomaly.onnx_checks import ExportError
    from anomaly.onnx_predict import OnnxDetector
    from anomaly.runs import RunDir

    pytest.importorskip("onnxruntime")
    os.mkfifo(tmp_path / "model.onnx")
    with pytest.raises(ExportError, match="model.onnx is not a regular file"):
        OnnxDetector(tmp_path / "model.onnx")
    run = tmp_path / "trial.npz"
    shutil.copytree(scored_ae_run, run)
    assert run_folder(run) == run and len(load_run_predictions(run).scores) > 0
    (run / "last.pt").unlink(missing_ok=True)
    os.mkfifo(run / "last.pt")
    with pytest.raises(RunError, match="last.pt is not a file"):
        RunDir(run).load_last()


def _anomaly(*argv) -> list[str]:
    """The command `python -m anomaly ARGV` with the stop signals at their defaults, whatever
    ran pytest (under nohup SIGHUP is ignored, and would stay so)."""
    import sys

    start = (
        "import runpy, signal, sys\n"
        "for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):\n"
        "    signal.signal(sig, signal.SIG_DFL if sig != signal.SIGINT else signal.default_int_handler)\n"
        "sys.argv[0] = 'anomaly'\n"
        "runpy.run_module('anomaly', run_name='__main__', alter_sys=True)"
    )
    return [sys.executable, "-c", start, *map(str, argv)]


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGHUP"), reason="POSIX signals")
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_sigterm_stops_training_as_ctrl_c_does(sig, tiny_cookies, tmp_path):
    """SIGTERM (a scheduler's stop, `kill`) and SIGHUP (the terminal closed) killed `train` on
    the spot: no words, the lock left behind. They end it as Ctrl-C does now: the lock let go,
    how to go on, and the shell's code 128 + the signal's number."""
    import signal
    import subprocess
    import time

    from helpers import tiny_flags

    run = tmp_path / "run"
    argv = ["train", "--out", str(run), *tiny_flags(tiny_cookies, **{"--epochs": 500})]
    proc = subprocess.Popen(_anomaly(*argv), stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 120
        while not (run / "last.pt").exists():
            assert proc.poll() is None and time.monotonic() < end, proc.stderr.read()
            time.sleep(0.05)
        proc.send_signal(getattr(signal, sig))
        err = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
    assert proc.returncode == 128 + getattr(signal, sig), err
    assert f"stopped by {sig} after epoch " in err and "--resume" in err, err
    assert not (run / ".lock").exists() and (run / "last.pt").exists()


def test_a_run_in_use_has_an_exit_status_of_its_own(scored_ae_run, tmp_path, capsys):
    """ "In use" (another live process writes the run) exited 2 as any error: a scheduler could
    not tell "retry later" from "broken". It exits 75 (sysexits' EX_TEMPFAIL) now."""
    import subprocess
    import sys

    from anomaly.cli import main

    run = tmp_path / "run"
    shutil.copytree(scored_ae_run, run)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".lock").write_text(json.dumps({"pid": holder.pid, "command": "train"}))
        code = main(["threshold", "--run", str(run), "--rule", "manual", "--value", "1"])
        assert code == 75 and "is in use" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()


def test_images_unlike_the_training_ones_in_one_way_are_one_warning(tmp_path, capsys):
    """Five thumbnails of sides 10-14 px were five warnings (each its own numbers in its
    words): a folder of a hundred phone photos, a hundred lines. Files unlike the training
    images in the same way are one warning, whatever their numbers."""
    import numpy as np
    from PIL import Image

    from anomaly.data.image_kind import summarize
    from anomaly.data.image_unlike import warn_unlike

    big = tmp_path / "big.png"
    Image.fromarray(np.full((128, 128, 3), 90, np.uint8)).save(big)
    small = []
    for side in range(10, 15):
        small.append(tmp_path / f"thumb{side}.png")
        Image.fromarray(np.full((side, side, 3), 90, np.uint8)).save(small[-1])
    said = warn_unlike(small, summarize([big]), 3, 64)
    assert len(said) == 1 and said[0].startswith("warning: 5 images (")
    assert "the first: shorter side 10 px" in said[0]
    alike = [tmp_path / f"copy{i}.png" for i in range(5)]
    for path in alike:
        path.write_bytes(small[0].read_bytes())
    said = warn_unlike(alike, summarize([big]), 3, 64)
    assert len(said) == 1 and "each: shorter side 10 px" in said[0]
    capsys.readouterr()


def test_score_reads_the_training_images_again_only_when_their_size_or_time_moved(
    tiny_cookies, tmp_path, monkeypatch
):
    """`score` hashed every training and held-out image at each call (seconds for thousands of
    camera JPEGs); split.json records each file's size and modification time, and a file with
    both as recorded is not read again."""
    from PIL import Image

    import anomaly.train_images as guards
    from anomaly.config import Config
    from anomaly.pipeline import score_run, train_run

    data = tmp_path / "data"
    shutil.copytree(tiny_cookies, data)
    for image in data.rglob("*.png"):  # made long before training
        os.utime(image, ns=(0, 10**18))
    run = tmp_path / "md"
    train_run(Config.for_method("meandiff", data=str(data), size=32), run, progress=False)
    split = json.loads((run / "split.json").read_text())
    assert len(split[guards.STAMPS]) == len(split["sha256"])
    read, hashed = [], guards._sha256_of_file
    monkeypatch.setattr(guards, "_sha256_of_file", lambda p: read.append(p) or hashed(p))
    score_run(run, overlays=False)
    assert read == []
    image = Path(split["train"][0])
    os.utime(image, ns=(0, 15 * 10**17))  # the same bytes, another time: read, and not named
    score_run(run, overlays=False)
    assert read == [str(image)]
    read.clear()  # a file written within a few seconds of the record: read each time, as an
    os.utime(image)  # edit in the same tick of the clock would look alike (git's rule)
    stamps = json.loads((run / "split.json").read_text())
    stamps[guards.STAMPS][0] = guards._stamp(str(image))
    (run / "split.json").write_text(json.dumps(stamps))
    score_run(run, overlays=False)
    assert read == [str(image)]
    pixels = np.array(Image.open(image))
    pixels[:4, :4] = 255 - pixels[:4, :4]
    Image.fromarray(pixels).save(image)
    with pytest.warns(UserWarning, match="1 of the .* changed since it was trained"):
        score_run(run, overlays=False)


def test_the_deployed_reader_says_what_predict_says(tiny_cookies, tmp_path):
    """A deployment walkthrough (helper): the copied reader put ERROR in the score's column
    (predict puts it in the verdict's), exited 0 when `| head` stopped it before the images
    after were scored, gave no word that a quantile threshold guarantees nothing, scored a
    file without an image's name that predict refuses, and under `python -I` (its folder not
    on sys.path) said onnx_checks.py was missing though it lay beside it."""
    import subprocess
    import sys

    from helpers import deploy_copy, patchknn_export
    from PIL import Image

    onnx = patchknn_export(tiny_cookies, tmp_path / "run", size=32)
    reader = deploy_copy(tmp_path / "inspect")
    good = min((tiny_cookies / "test" / "good").glob("*.png"))
    shutil.copy(good, tmp_path / "noext")
    argv = [sys.executable, "-I", str(reader), str(onnx), str(good), str(tmp_path / "gone.png")]
    done = subprocess.run(
        [*argv, str(tmp_path / "noext")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2, done.stderr
    rows = [line.split("\t") for line in done.stdout.splitlines()]
    assert rows[0][2] in ("PASS", "REJECT") and rows[1][1:] == rows[2][1:] == ["-", "ERROR"]
    assert "(normal_quantile: no guarantee on the false-reject rate)" in done.stderr
    assert "noext: not an image file this reader reads" in done.stderr
    many = tmp_path / "many"
    many.mkdir()
    for i in range(200):
        Image.open(good).save(many / f"{i:03d}.png")
    proc = subprocess.Popen(
        [sys.executable, str(reader), str(onnx), str(many)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout.readline().startswith(str(many))
    proc.stdout.close()
    assert proc.wait(timeout=120) == 141


def test_predict_onnx_names_a_flat_image_as_predict_run_does(tiny_cookies, tmp_path, capsys):
    from helpers import patchknn_export
    from PIL import Image

    from anomaly.cli import main

    onnx = patchknn_export(tiny_cookies, tmp_path / "run", size=32)
    Image.new("RGB", (64, 64)).save(tmp_path / "black.png")
    assert main(["predict", "--onnx", str(onnx), "--no-overlays", str(tmp_path / "black.png")]) == 2
    said = capsys.readouterr()
    assert "black.png: 100.0% of it is one flat colour" in said.err
    assert said.out.split("\t")[2] == "ERROR"  # no verdict, as predict --run (session 34)


def test_a_patchknn_detector_fitted_again_is_the_same_model(tiny_cookies):
    """A Python API walkthrough (helper): `fit` a second time (or on a loaded run) learned a
    whitening of features the extractor already whitened, and the bank no longer matched what
    it searched with (image AUROC 0.93 -> 0.41)."""
    import torch

    from anomaly import seed_everything
    from anomaly.config import Config
    from anomaly.detectors import get_detector

    det = get_detector("patchknn")(Config.for_method("patchknn", data=str(tiny_cookies), size=32))
    train, test = det.dataset(tiny_cookies, "train"), det.dataset(tiny_cookies, "test")
    results = []
    for _ in range(2):
        seed_everything(0)
        det.fit(train)
        results.append((det.bank.clone(), det.predict(test).scores))
    assert torch.equal(results[0][0], results[1][0])
    assert np.array_equal(results[0][1], results[1][1])


def test_train_run_saves_the_data_folder_as_an_absolute_path(tiny_cookies, tmp_path, monkeypatch):
    """`train_run` from Python kept `data="../cookies"` as given (the CLI saves it absolute):
    scored from another folder, the run read whatever lay at that relative path."""
    from anomaly.config import Config
    from anomaly.pipeline import score_run, train_run

    shutil.copytree(tiny_cookies, tmp_path / "cookies")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    run = tmp_path / "md"
    train_run(Config.for_method("meandiff", data="../cookies", size=32), run, progress=False)
    saved = json.loads((run / "config.json").read_text())["data"]
    assert saved == str((tmp_path / "cookies").resolve())
    monkeypatch.chdir(tmp_path)
    score_run(run, overlays=False)


def test_the_explorer_saves_no_threshold_of_another_models_scores_into_a_run(
    tiny_cookies, tmp_path
):
    """A patchknn model's Predictions shown with run_dirs= naming a meandiff run saved their
    threshold (9.3) into it: every image then passed (meandiff scores 2-6)."""
    from anomaly import ThresholdExplorer
    from anomaly.config import Config
    from anomaly.detectors import get_detector
    from anomaly.pipeline import score_run, train_run

    run = tmp_path / "md"
    train_run(Config.for_method("meandiff", data=str(tiny_cookies), size=32), run, progress=False)
    score_run(run, overlays=False)
    before = (run / "threshold.json").read_bytes()
    det = get_detector("patchknn")(Config.for_method("patchknn", data=str(tiny_cookies), size=32))
    det.fit(det.dataset(tiny_cookies, "train"))
    pred = det.predict(det.dataset(tiny_cookies, "test"))
    explorer = ThresholdExplorer({"pk": pred}, run_dirs={"pk": run})
    with pytest.raises(
        ValueError, match="chosen on the scores of a patchknn model, .* meandiff run"
    ):
        explorer.save_threshold()
    assert (run / "threshold.json").read_bytes() == before


def test_a_nan_score_is_rejected_by_the_threshold_functions_too():
    """`threshold_manual(1.0).predict([0.5, nan, 2])` passed the NaN, `confusion` counted a NaN
    defective image as an escape, and `threshold_normal_quantile` returned a NaN threshold:
    README and `predict` say a score that is not a number is rejected, never passed."""
    from anomaly.metrics import confusion, threshold_manual, threshold_normal_quantile

    nan = float("nan")
    assert threshold_manual(1.0).predict([0.5, nan, 2.0]).tolist() == [0, 1, 1]
    counts = confusion([0, 1, 0], [nan, nan, 0.1], 1.0)
    assert (counts["fp"], counts["tp"], counts["tn"], counts["fn"]) == (1, 1, 1, 0)
    with pytest.raises(ValueError, match="NaN or inf"):
        threshold_normal_quantile([1.0, 2.0, nan])


def test_the_few_held_out_note_speaks_only_where_the_quantile_misleads():
    """`--rule normal-quantile --value 0.5` on 3 images said new good parts "score above it
    about 50 % of the time, not 50 %"."""
    from types import SimpleNamespace

    from anomaly.decision import few_held_out

    def note(q, n):
        t = SimpleNamespace(rule="normal_quantile", value=1.0, params={"q": q, "n_normal": n})
        return few_held_out(t, "run")

    assert note(0.5, 3) is None and note(0.6, 5) is None
    assert (
        "near their largest: new good parts like them score above it about 26 % of the time, "
        "not 1 %" in note(0.99, 3)
    )


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGHUP"), reason="POSIX signals")
def test_a_closed_terminal_still_gets_the_hang_up_status(tmp_path, monkeypatch):
    """Review: when the terminal really closes, writing "stopped by SIGHUP" fails (EIO); that
    error escaped main(), so the status was 1 with a traceback, not 129."""
    import errno
    import signal
    import time

    import anomaly.cli

    class Gone:
        def write(self, _text):
            raise OSError(errno.EIO, "Input/output error")

        def flush(self):
            raise OSError(errno.EIO, "Input/output error")

    def hung_up(_args):
        monkeypatch.setattr("sys.stderr", Gone())
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(5)

    monkeypatch.setattr(anomaly.cli, "_make_data", hung_up)
    ignored = signal.signal(signal.SIGHUP, signal.SIG_DFL)  # under nohup it stays ignored
    try:
        assert anomaly.cli.main(["make-cookies", str(tmp_path / "c")]) == 128 + signal.SIGHUP
    finally:
        signal.signal(signal.SIGHUP, ignored)


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGCHLD"), reason="POSIX signals")
def test_sigterm_to_the_process_group_with_decoding_workers_is_quiet(tiny_cookies, tmp_path):
    """Review: SIGTERM to the whole process group (timeout, Slurm, systemd) while `predict
    --workers 2` ran gave the right status and words, and then torch's report of its workers
    killed by a signal, with a trace."""
    import signal
    import subprocess

    from PIL import Image

    from anomaly.config import Config
    from anomaly.pipeline import train_run

    run = tmp_path / "md"
    train_run(Config.for_method("meandiff", data=str(tiny_cookies), size=32), run, progress=False)
    many = tmp_path / "many"
    many.mkdir()
    image = Image.open(min((tiny_cookies / "test" / "good").glob("*.png")))
    for i in range(3000):
        image.save(many / f"{i:04d}.png", compress_level=0)
    argv = ["predict", "--run", str(run), "--workers", "2", "--no-overlays", str(many)]
    proc = subprocess.Popen(
        _anomaly(*argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout.readline().startswith(str(many))
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err and "Exception" not in err, err


@PROC
def test_a_lock_records_which_process_holds_it_beyond_its_number(tmp_path):
    """Review: a forward step of the wall clock (a board without a clock, a resumed VM) made a
    live holder look younger than its lock, and a reboot or a number used again was told by
    the wall clock alone. Locks and markers now record the boot id and the holder's start in
    clock ticks, compared exactly; readers also take a free flock as a stale lock."""
    import subprocess
    import sys

    from anomaly.run_lock import _start_ticks, holder_alive, identity

    me = identity()
    assert set(me) == {"boot", "start"}
    parent = {"pid": os.getppid(), "boot": me["boot"], "start": _start_ticks(os.getppid())}
    assert holder_alive(parent, LONG_AGO)  # its own start: alive whatever the clock says
    assert not holder_alive(parent | {"start": parent["start"] + 1}, 4e9)  # another process
    assert not holder_alive(parent | {"boot": "another-boot"}, 4e9)  # the machine restarted
    lock = tmp_path / ".lock"
    lock.write_text(json.dumps(parent | {"command": "train", "flock": True, "boot": "other"}))
    check_not_in_use(tmp_path, ".lock", "score")  # nobody holds its flock: stale
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import fcntl, sys, time; f = open(sys.argv[1]); "
                "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"
            ),
            str(lock),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError, match="is in use"):
            check_not_in_use(tmp_path, ".lock", "score")
    finally:
        holder.kill()
        holder.wait()
    with folder_lock(tmp_path, ".lock", "train"):
        assert json.loads(lock.read_text()) | me == json.loads(lock.read_text())


def test_an_overlay_lost_to_another_error_is_not_told_to_free_space():
    """Review: any OSError stopped the overlays with "Free space": a permission or read-only
    error needs another folder."""
    from anomaly.predict import overlays_lost

    base = {"path": "a.png", "score": 1.0, "overlay": None, "overlay_error": "out: Read-only"}
    said = overlays_lost([base | {"overlay_disk_full": False}])
    assert "Give --out a folder you may write" in said and "Free space" not in said
    assert "Free space" in overlays_lost([base | {"overlay_disk_full": True}])


def test_training_out_of_memory_is_one_clear_error(tiny_cookies, tmp_path, monkeypatch, capsys):
    """A scale walkthrough (helper): `train --size 1024` under a memory limit ended in torch's
    "DefaultCPUAllocator: can't allocate memory" traceback, exit 1."""
    from anomaly.cli import main

    no_memory = RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1")
    code, err, argv = _train_failing(no_memory, tiny_cookies, tmp_path, monkeypatch, capsys)
    assert code == 2 and "training meandiff on" in err and "ran out of memory" in err
    assert "smaller --size" in err and "Traceback" not in err
    assert main(argv) == 0  # trained again into the same folder


def _train_failing(error, data, tmp_path, monkeypatch, capsys):
    """(exit status, stderr, argv) of `train` of a meandiff run into tmp_path/run whose fit
    raises `error`."""
    from anomaly.cli import main
    from anomaly.detectors import meandiff

    def fails(self, *args, **kwargs):
        raise error

    argv = ["train", "--data", str(data), "--method", "meandiff", "--size", "32"]
    argv += ["--out", str(tmp_path / "run")]
    with monkeypatch.context() as m:
        m.setattr(meandiff.MeanDiff, "fit", fails)
        code = main(argv)
    return code, capsys.readouterr().err, argv


def test_score_says_its_whole_time_beside_the_models_rate(scored_ae_run, tmp_path, capsys):
    """A scale walkthrough (helper): `score` printed 35.6 images/s, the model's rate, for a
    command that ran at 7.4 (decoding, metrics and overlays): the rate is now said as the
    model's, and the whole time and rate beside what was written."""
    from anomaly.cli import main

    run = tmp_path / "run"
    shutil.copytree(scored_ae_run, run)
    assert main(["score", "--run", str(run), "--no-overlays"]) == 0
    out = capsys.readouterr().out
    assert "images/s predicted)" in out
    assert re.search(
        r"wrote .*: scores.csv, metrics.json, predictions.npz \([\d.]+ s in all, "
        r"[\d.]+ images/s\)",
        out,
    ), out


def test_a_one_pass_training_stopped_says_how_to_go_on(tiny_cookies, tmp_path, monkeypatch, capsys):
    """A scale walkthrough (helper): Ctrl-C in a patchknn training said only "interrupted"
    (README: a stopped command says how to go on), and --resume then said to train again
    "with the same flags" without saying where they are."""
    from anomaly.cli import main

    code, err, _ = _train_failing(KeyboardInterrupt(), tiny_cookies, tmp_path, monkeypatch, capsys)
    run = tmp_path / "run"
    assert code == 130
    assert (  # (session 39: the command quoted is not the whole one; its flags are to add)
        "interrupted before its model was saved; train it again: the same `python -m anomaly "
        f"train ... --out {run}` (its flags), as its config.json records them" in err
    )
    assert main(["train", "--out", str(run), "--resume"]) == 2
    assert "as its config.json records them" in capsys.readouterr().err


def test_patchknn_refuses_features_that_would_not_fit_before_it_holds_them(
    tiny_cookies, tmp_path, monkeypatch, capsys
):
    """The features of every training image are held at once: more than the free memory is
    refused at the first batch with the numbers, not left to the allocator or the OOM killer."""
    from anomaly.cli import main
    from anomaly.detectors import patchknn

    monkeypatch.setattr(patchknn, "available_memory", lambda: 1024)
    argv = ["train", "--data", str(tiny_cookies), "--method", "patchknn", "--size", "64"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "would run out of memory (patchknn holds the patch features of all" in err
    assert re.search(r"images at once, \d+ MiB at --size 64, and 0 MiB is free\)", err)
    assert "smaller --size" in err


def test_a_device_this_machine_lacks_leaves_the_detector_as_it_was(tiny_cookies):
    """`det.to("cuda")` on a machine without CUDA raised torch's driver error with the
    detector already pointing at cuda, and every later call failed."""
    import torch

    from anomaly.config import Config
    from anomaly.detectors import get_detector

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    det = get_detector("meandiff")(Config.for_method("meandiff", data=str(tiny_cookies), size=32))
    det.fit(det.dataset(tiny_cookies, "train"))
    with pytest.raises(ValueError, match="CUDA is not available on this machine"):
        det.to("cuda")
    assert det.device.type == "cpu"
    scores, _ = det.predict_batch(torch.rand(1, 3, 32, 32))
    assert scores.shape == (1,)


def test_the_python_apis_words_for_wrong_arguments(tiny_cookies, scored_ae_run):
    """A Python API walkthrough (helper): `fit(path)` suggested the test split, a bytes path
    was "not as a int", a PIL image "not iterable", and a misspelt method a bare KeyError
    where Config.for_method gives a ValueError with the name."""
    from PIL import Image

    from anomaly import predict_images
    from anomaly.config import Config
    from anomaly.detectors import get_detector

    det = get_detector("meandiff")(Config.for_method("meandiff", data=str(tiny_cookies), size=32))
    with pytest.raises(TypeError, match=r"fit\(detector.dataset\(ROOT, 'train'\)\)"):
        det.fit(str(tiny_cookies))
    with pytest.raises(TypeError, match=r"b'x.png' is given as bytes: give it as a str"):
        predict_images(scored_ae_run, b"x.png")
    rows, _ = predict_images(scored_ae_run, Image.new("RGB", (8, 8)), overlays=False)
    assert rows[0]["path"] == "upload-0" and "error" in rows[0]  # since session 35: read (flat)
    with pytest.raises(ValueError, match="did you mean 'patchknn'"):
        get_detector("patchnn")
    with pytest.raises(KeyError):  # as before, for code that caught that
        get_detector("patchnn")


def test_onnxruntime_writes_nothing_in_the_users_home(tmp_path):
    """A Python API walkthrough (helper): every patchknn load made onnxruntime write a
    persistent device id and a database under ~/.cache/Microsoft/ for its telemetry."""
    import subprocess
    import sys

    pytest.importorskip("onnxruntime")
    home = tmp_path / "home"
    home.mkdir()
    env = {
        k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")
    }
    code = "import anomaly.onnx_cache, onnxruntime"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env | {"HOME": str(home)},
        check=False,
        capture_output=True,
    )
    assert done.returncode == 0, done.stderr
    assert list(home.rglob("*")) == []


def test_ensure_run_gives_a_run_of_the_data_and_settings_asked_for(
    tiny_cookies, tmp_path, monkeypatch, capsys
):
    """A Python API walkthrough (helper): `notebook.ensure_run` returned the run it had trained
    for other data, or at another size, without a word."""
    from anomaly import notebook as nb
    from anomaly.runs import load_config

    monkeypatch.setenv(nb.HOME_ENV, str(tmp_path / "home"))
    s = nb.settings(smoke=True, say=False)
    other = tmp_path / "other"
    shutil.copytree(tiny_cookies, other)
    first = nb.ensure_run(s, "meandiff", tiny_cookies)
    second = nb.ensure_run(s, "meandiff", other)
    assert second != first and load_config(second).data == str(other.resolve())
    assert "not using" in capsys.readouterr().out
    third = nb.ensure_run(s, "meandiff", tiny_cookies, channels=1)
    assert third not in (first, second) and load_config(third).channels == 1
    assert nb.ensure_run(s, "meandiff", other) == second  # found again, not trained again
    (tmp_path / "link").symlink_to(other)  # the same folder through a link (review)
    assert nb.ensure_run(s, "meandiff", tmp_path / "link") == second
    default = nb.ensure_run(s, "meandiff")  # the notebooks' own data (review: it gave `first`)
    assert load_config(default).data == str(s.data_dir.resolve())


def test_out_of_memory_words_follow_what_the_training_kept(tiny_cookies, tmp_path, monkeypatch):
    """Review: a training by epochs that ran out of memory after saving some was told that
    nothing was saved and to train into the same --out, which refuses it; another RuntimeError
    lost its chained cause; a refit of patchknn that failed left the old bank searched with new
    features (scores moved without an error)."""
    import torch

    from anomaly.config import Config
    from anomaly.detectors import get_detector, patchknn
    from anomaly.pipeline import train_run
    from anomaly.runs import RunDir
    from anomaly.train_guards import out_of_memory

    run = tmp_path / "ae"
    config = Config.for_method("ae", data=str(tiny_cookies), size=32, epochs=1)
    train_run(config, run, progress=False)
    said = str(out_of_memory(MemoryError(), config, 8, RunDir(run)))
    assert "the epochs it finished are kept (last.pt)" in said and "--resume" in said
    det = get_detector("patchknn")(Config.for_method("patchknn", data=str(tiny_cookies), size=32))
    det.fit(det.dataset(tiny_cookies, "train"))
    monkeypatch.setattr(patchknn, "available_memory", lambda: 1024)
    with pytest.raises(patchknn.NoRoom):
        det.fit(det.dataset(tiny_cookies, "train"))
    with pytest.raises(RuntimeError, match="call fit"):
        det.predict_batch(torch.rand(1, 3, 32, 32))
    monkeypatch.setattr(type(det), "fit", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("x")))
    with pytest.raises(RuntimeError, match="^x$"):  # not turned into memory words
        train_run(Config.for_method("patchknn", data=str(tiny_cookies), size=32), tmp_path / "pk")


def test_a_model_that_scores_nan_on_its_held_out_images_is_said_to_have_diverged(
    tiny_cookies, tmp_path, monkeypatch, capsys
):
    """Review: NaN held-out scores at the end of training ended in
    "threshold_normal_quantile: the normal scores contain NaN or inf", naming an internal
    function and no fix. `det.to(0)` (torch's cuda:0) was read as a device named "0"."""
    import torch

    from anomaly.cli import main
    from anomaly.config import Config
    from anomaly.detectors import get_detector, meandiff

    real = meandiff.MeanDiff.predict

    def nan_scores(self, data, *args, **kwargs):
        pred = real(self, data, *args, **kwargs)
        pred.scores[:] = np.nan
        return pred

    monkeypatch.setattr(meandiff.MeanDiff, "predict", nan_scores)
    argv = ["train", "--data", str(tiny_cookies), "--method", "meandiff", "--size", "32"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "NaN or infinite scores or maps on its held-out images: its training diverged" in err
    assert "threshold_normal_quantile" not in err
    det = get_detector("meandiff")(Config.for_method("meandiff", data=str(tiny_cookies), size=32))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda:0: CUDA is not available"):
            det.to(0)


def test_the_coreset_has_a_progress_bar_and_picks_as_before(monkeypatch, capsys):
    """A scale walkthrough (helper): after patchknn's features bar, its coreset ran without
    one (54 s of silence for 4,500 images); it counts its picks now, the picks unchanged."""
    import torch

    from anomaly.detectors import coreset

    features = torch.randn(3000, 16, generator=torch.Generator().manual_seed(0))
    seen, quiet = [], coreset.greedy_coreset(features, 600, seed=1)
    original = coreset._greedy

    def counted(z, k, start, tick=None):
        return original(z, k, start, lambda m: (seen.append(m), tick(m)))

    monkeypatch.setattr(coreset, "_greedy", counted)
    shown = coreset.greedy_coreset(features, 600, seed=1, progress=True)
    assert torch.equal(quiet, shown) and sum(seen) == 600 and seen[:2] == [256, 256]
    assert "coreset" in capsys.readouterr().err


def test_the_explorer_neither_replaces_a_threshold_saved_since_nor_drops_a_guarantee(
    tiny_cookies, tmp_path
):
    """A QA lead's explorer walkthrough (helper): the page never read threshold.json again, so
    Save replaced a threshold set since by `threshold --rule f1` without a word; and Save on an
    unchanged conformal threshold made it "explorer", its guarantee gone."""
    from anomaly import ThresholdExplorer
    from anomaly.calibration import set_threshold
    from anomaly.config import Config
    from anomaly.explorer.saving import ThresholdChanged
    from anomaly.pipeline import score_run, train_run
    from anomaly.runs import RunDir

    run = tmp_path / "md"
    config = Config.for_method("meandiff", data=str(tiny_cookies), size=32, val_fraction=0.5)
    train_run(config, run, progress=False)
    score_run(run, overlays=False)
    n = len(RunDir(run).val_scores()["scores"])
    set_threshold(run, "conformal", 1 / (n + 1))
    explorer = ThresholdExplorer(run)
    assert explorer.threshold == RunDir(run).threshold().value
    explorer.save_threshold()  # the same value: its rule and guarantee kept
    kept = RunDir(run).threshold()
    assert kept.rule == "conformal" and "guarantee" in kept.params
    set_threshold(run, "f1")  # elsewhere, since the page read it
    explorer.slider.value = explorer.slider.max
    with pytest.raises(ThresholdChanged, match="changed since this page read it: it holds"):
        explorer.save_threshold()
    assert RunDir(run).threshold().rule == "f1"
    explorer.save_threshold()  # now shown: a second save replaces it knowingly
    assert RunDir(run).threshold().rule in ("explorer", "cost-optimal")


def test_a_run_training_before_its_first_model_is_in_use_not_broken(tiny_cookies, tmp_path, capsys):
    """A README newcomer (helper): `predict`, `export`, `train --resume` and `threshold` on a
    run still training (no model.pt yet) said it never finished an epoch and to train it
    again, exit 2, where README says every command calls it in use (75)."""
    import subprocess
    import sys

    from anomaly.cli import main

    run = tmp_path / "run"
    argv = ["train", "--data", str(tiny_cookies), "--method", "patchknn", "--size", "32"]
    assert main([*argv, "--out", str(run)]) == 0
    (run / "model.pt").unlink()  # as before its first model was written
    image = str(min((tiny_cookies / "test" / "good").glob("*.png")))
    (run / "threshold.json").unlink()
    (run / "val_scores.json").unlink()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".lock").write_text(json.dumps({"pid": holder.pid, "command": "train"}))
        capsys.readouterr()
        for args in (
            ["predict", "--run", str(run), image],
            ["export", "--run", str(run)],
            ["train", "--out", str(run), "--resume"],
            ["threshold", "--run", str(run)],
        ):
            assert main(args) == 75, args
            assert "is in use" in capsys.readouterr().err, args
    finally:
        holder.kill()
        holder.wait()


def test_train_like_says_the_few_held_out_note_as_train_does(tiny_cookies, tmp_path, capsys):
    """A README newcomer (helper): `train --like` left out the note `train` gives when the
    threshold rests on a handful of held-out images."""
    from anomaly.cli import main

    argv = ["train", "--data", str(tiny_cookies), "--method", "meandiff", "--size", "32"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    said = capsys.readouterr().err
    assert "quantile of only" in said
    assert main(["train", "--like", str(tmp_path / "a"), "--out", str(tmp_path / "b")]) == 0
    assert "quantile of only" in capsys.readouterr().err


@PROC
def test_a_data_set_still_being_made_is_in_use_not_interrupted(tmp_path, capsys):
    """A README newcomer (helper): `train` on a data set that `make-cookies` was still writing
    said it was left by an interrupted run (exit 2), where a second make-cookies says in use."""
    from anomaly.cli import main
    from anomaly.run_lock import _start_ticks, identity

    root = tmp_path / "c"
    stage = generated.staging(root, "make-cookies")
    stage.mkdir(parents=True)
    parent = {"pid": os.getppid(), "boot": identity()["boot"], "start": _start_ticks(os.getppid())}
    marker = {"generator": "make-cookies", "phase": "write"} | parent
    (stage / generated.MARKER).write_text(json.dumps(marker))
    argv = ["train", "--data", str(root), "--method", "meandiff", "--out", str(tmp_path / "r")]
    assert main(argv) == 75
    assert f"is in use: process {os.getppid()} is running make-cookies" in capsys.readouterr().err
    (stage / generated.MARKER).write_text(json.dumps(marker | {"start": parent["start"] + 1}))
    assert main(argv) == 2  # its process gone (another has its number): interrupted
    assert "left by an interrupted make-cookies run" in capsys.readouterr().err


def test_scores_near_the_largest_float_are_refused_by_the_explorer_with_the_fix():
    """A QA lead's walkthrough (helper): scores near 1e308 crashed the explorer as it opened
    ("arange: cannot compute length", its span overflowed)."""
    from anomaly import Predictions, ThresholdExplorer

    scores = [1e307, 1.2e308, 1.5e308, 1.7e308, 1.6e308, 1.1e308]
    pred = Predictions(
        [f"{i}.png" for i in range(6)],
        np.array([0, 0, 0, 1, 1, 1]),
        ["good"] * 3 + ["crack"] * 3,
        np.array(scores),
        np.zeros((6, 8, 8), np.float32),
    )
    with pytest.raises(ValueError, match="more than a float can hold.*divide them"):
        ThresholdExplorer({"huge": pred})


def test_a_threshold_chosen_on_other_data_says_so_in_threshold_words():
    """A QA lead's walkthrough (helper): a threshold saved in the explorer from a run's
    `scored/<data>/` records the data it was chosen on, which `threshold --run` did not say."""
    from anomaly.metrics import Threshold
    from anomaly.threshold_text import threshold_words

    t = Threshold(3.5, "explorer", {"chosen_on_data": "/data/line-2"})
    assert threshold_words(t, "run").startswith(
        "threshold 3.5 (explorer), chosen on the test images of /data/line-2: no guarantee"
    )
    assert ", chosen on" not in threshold_words(Threshold(3.5, "explorer", {}), "run")
