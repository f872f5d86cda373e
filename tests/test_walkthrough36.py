"""Defects found in session 36's walkthroughs (interrupted work, the shell's contract, a review
of the numbers' code, unusual images), each pinned by the behaviour a user expects."""

from __future__ import annotations

import pytest
import torch
from helpers import Textures

from anomaly.config import Config
from anomaly.detectors import REGISTRY, register
from anomaly.detectors.auto import AutoDetector
from anomaly.detectors.meandiff import MeanDiff

SIZE = 48


@pytest.fixture
def nan_candidate():
    """A registered method that scores one image of every batch NaN."""

    @register("stub-nan")
    class NanDiff(MeanDiff):
        def predict_batch(self, images):
            scores, maps = super().predict_batch(images)
            return torch.cat([torch.full((1,), float("nan")), scores[1:]]), maps

    yield
    del REGISTRY["stub-nan"]


def test_auto_candidate_with_nan_scores_loses_instead_of_stopping_the_run(nan_candidate):
    config = Config(method="auto", size=SIZE, channels=3, seed=0, batch_size=8)
    grid = [{"method": "stub-nan"}, {"method": "meandiff"}]
    auto = AutoDetector(config, candidates=grid).fit(Textures(14, size=SIZE, channels=3))
    rows = auto.selection["candidates"]
    assert "NaN or infinite scores" in rows[0]["error"] and rows[0]["image_auroc"] is None
    assert rows[1]["error"] is None and auto.selection["chosen_settings"] == grid[1]


def test_inverted_file_never_answers_infinity_for_a_bank_of_repeated_rows():
    from anomaly.detectors.knn import BankIndex

    gen = torch.Generator().manual_seed(0)
    base = torch.randn(5, 16, generator=gen)
    bank = torch.cat([base.repeat(200, 1), torch.randn(100, 16, generator=gen) * 3])
    queries = torch.cat([base + 0.01 * torch.randn(5, 16, generator=gen), bank[-20:]])
    index = BankIndex(bank, clusters=64, probes=2, seed=0)
    found = index.nearest(queries)
    exact = torch.cdist(queries, bank).amin(1)
    assert torch.isfinite(found).all() and all(b.shape[1] for b in index.blocks)
    assert (found >= exact - 0.01).all() and torch.allclose(found[:5], exact[:5], atol=1e-3)


def test_patchknn_on_an_encoder_holds_out_what_the_encoder_run_held_out(
    tiny_cookies, scored_ae_run, tmp_path, capsys
):
    import json

    from anomaly.cli import main

    out = tmp_path / "pk"
    args = ["train", "--method", "patchknn", "--data", str(tiny_cookies)]
    args += ["--backbone", f"encoder:{scored_ae_run}"]
    assert main([*args, "--out", str(out), "--seed", "11", "--val-fraction", "0.5"]) == 0
    theirs = json.loads((scored_ae_run / "split.json").read_text())
    ours = json.loads((out / "split.json").read_text())
    assert sorted(ours["val"]) == sorted(theirs["val"]) and not set(ours["val"]) & set(
        theirs["train"]
    )  # another seed and fraction would hold out images the encoder learned
    said = capsys.readouterr().err
    assert "--val-fraction (it holds out the images its encoder run held out)" in said


def test_in_a_log_each_warning_and_note_after_a_closed_bar_starts_a_line(tiny_cookies, tmp_path):
    """A bar closed with leave=False ends with a carriage return, no new line: the warning
    and the note written after it stuck to its line, so `grep '^warning:'` found nothing."""
    import os
    import subprocess
    import sys

    args = ["train", "--data", str(tiny_cookies), "--out", str(tmp_path / "r"), "--size", "64"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "log", "w") as log:
        run = [sys.executable, "-m", "anomaly", *args, "--val-fraction", "0"]
        done = subprocess.run(run, check=False, stdout=subprocess.DEVNULL, stderr=log, env=env)
    assert done.returncode == 0
    lines = (tmp_path / "log").read_bytes().decode().split("\n")  # not read_text: \r kept
    assert any(x.startswith("warning: ") and "no validation split" in x for x in lines)
    assert any(x.startswith("note: ") and "training images themselves" in x for x in lines)
    assert "" not in lines[:-1]  # no empty line added between a bar's and a message's


def test_log_lines_leaves_a_terminal_and_plain_text_alone():
    import io

    from anomaly.terminal import LogLines, log_lines

    log = io.StringIO()
    out = LogLines(log)
    for part in ("abc", "\n", "\rbar 50%", "\rbar 100%", "\n", "\r   \r", "note: x", "\n"):
        out.write(part)
    assert log.getvalue() == "abc\n\rbar 50%\rbar 100%\n\r   \r\nnote: x\n"

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    assert log_lines(tty) == (tty, None) and isinstance(log_lines(io.StringIO())[0], LogLines)


def test_in_a_log_of_both_streams_each_line_of_either_starts_a_line(tiny_cookies, tmp_path):
    """`> log 2>&1`: stdout's `trained ...` landed on a closed bar's line (only stderr knew of
    the bar), and stdout's block-buffered lines reached the file after stderr's later ones."""
    import os
    import subprocess
    import sys

    args = ["train", "--data", str(tiny_cookies), "--out", str(tmp_path / "r"), "--size", "64"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "log", "w") as log:
        run = [sys.executable, "-m", "anomaly", *args, "--val-fraction", "0"]
        done = subprocess.run(run, check=False, stdout=log, stderr=subprocess.STDOUT, env=env)
    assert done.returncode == 0
    lines = (tmp_path / "log").read_bytes().decode().split("\n")
    trained = [i for i, x in enumerate(lines) if x.startswith("trained patchknn: run folder")]
    notes = [i for i, x in enumerate(lines) if x.startswith("note: ")]
    assert trained and notes and trained[0] < notes[0]  # in the order they were written
    assert any(x.startswith("warning: ") and "no validation split" in x for x in lines)


def test_a_blank_frame_held_out_is_left_out_of_the_default_threshold(tiny_cookies, tmp_path):
    """A camera's blank shot in train/good, held out, set the threshold (20.3 against 8.4-9.0
    without it) and every defect passed."""
    import json
    import os
    import shutil

    import numpy as np
    from helpers import tiny_config
    from PIL import Image

    from anomaly.cli import main
    from anomaly.metrics import threshold_normal_quantile
    from anomaly.pipeline import train_run
    from anomaly.runs import RunDir

    data = tmp_path / "data"
    shutil.copytree(tiny_cookies, data)
    for i in range(4):
        Image.new("L", (64, 64)).save(data / "train" / "good" / f"blank{i}.png")
    config = tiny_config(data, "patchknn", val_fraction=0.5, coreset_ratio=0.5)
    with pytest.warns(UserWarning, match=r"all one flat colour \(.*blank.*left out of the thr"):
        train_run(config, tmp_path / "run", progress=False)
    run = RunDir(tmp_path / "run")
    held = json.loads(run.file(run.SPLIT).read_text())["val"]
    blank = [p for p in held if os.path.basename(p).startswith("blank")]
    assert blank and len(held) - len(blank) >= 2
    saved = json.loads(run.file(run.VAL_SCORES).read_text())
    assert sorted(saved["paths"]) == sorted(set(held) - set(blank))  # what a later rule reads
    expected = threshold_normal_quantile(np.array(saved["scores"]), q=config.threshold_quantile)
    assert run.threshold().value == pytest.approx(expected.value)
    assert run.threshold().params["n_normal"] == len(held) - len(blank)
    first = run.threshold().value
    assert main(["threshold", "--run", str(run.path), "--rule", "normal-quantile"]) == 0
    assert run.threshold().value == pytest.approx(first)  # set again on the same images


def test_readme_block_without_readme_is_refused_before_anything_runs(
    tiny_cookies, tmp_path, capsys
):
    from anomaly.cli import main

    out = tmp_path / "bench"
    args = ["benchmark", "--data", str(tiny_cookies), "--methods", "meandiff", "--out", str(out)]
    assert main([*args, "--readme-block", "cookies"]) == 2
    assert "--readme-block cookies needs --readme FILE" in capsys.readouterr().err
    assert not out.exists()


def test_version_flag_names_the_package_version(capsys):
    import anomaly
    from anomaly.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.split() == [
        "python",
        "-m",
        "anomaly",
        anomaly.__version__,
    ]


def _big_jpeg(tiny_cookies, path):
    from PIL import Image

    source = min((tiny_cookies / "test" / "crack").glob("*.png"))
    Image.open(source).convert("RGB").resize((640, 640)).save(path, quality=90)
    return path


def test_a_pil_jpeg_not_yet_decoded_is_scored_as_its_file_is(tiny_cookies, tmp_path):
    """An opened PIL JPEG was decoded in full and staged as a PNG, skipping the run's draft
    decoding: its score moved by up to 4 % of the threshold, and a verdict flipped."""
    from helpers import tiny_config
    from PIL import Image

    import anomaly
    from anomaly.pipeline import train_run

    run = tmp_path / "run"
    train_run(tiny_config(tiny_cookies, "meandiff", decode="draft"), run, progress=False)
    jpeg = _big_jpeg(tiny_cookies, tmp_path / "part.jpg")
    (by_path,), _ = anomaly.predict_images(run, [str(jpeg)], overlays=False)
    with Image.open(jpeg) as im:
        (by_pil,), _ = anomaly.predict_images(run, [im], overlays=False)
    assert by_pil["score"] == by_path["score"] and by_pil["path"] == "part.jpg"
    decoded = Image.open(jpeg)
    decoded.load()  # decoded in full already: staged as the pixels it holds
    (by_pixels,), _ = anomaly.predict_images(run, [decoded], overlays=False)
    assert by_pixels["score"] != by_path["score"]  # what this test would miss otherwise


def test_pil_animations_and_unusual_modes_get_a_row_each(scored_ae_run, tiny_cookies, tmp_path):
    """A PIL animation was scored as its first frame (its file is refused); modes neither PNG
    nor TIFF can write (HSV, La, RGBa) stopped the whole call with a bare OSError."""
    from PIL import Image

    import anomaly

    frame = Image.open(min((tiny_cookies / "test" / "good").glob("*.png"))).convert("RGB")
    frames = [frame, frame.rotate(90)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    anim = Image.open(tmp_path / "anim.gif")
    anim.load()  # decoded: its frames are staged by the image, not by the file's bytes
    odd = [frame.convert("HSV"), frame.convert("RGBA").convert("RGBa"), frame.convert("LA")]
    odd[2] = odd[2].convert("La")
    results, _ = anomaly.predict_images(scored_ae_run, [anim, *odd], overlays=False)
    assert "frames" in results[0]["error"] and "score" not in results[0]
    assert all("score" in r for r in results[1:]), results


def test_a_16_bit_tiff_of_separate_colour_planes_is_refused_not_scrambled(tmp_path):
    import numpy as np
    import tifffile

    from anomaly.data import DataError
    from anomaly.data.reading import read_image

    a = np.random.default_rng(0).integers(0, 65535, (40, 50, 3)).astype(np.uint16)
    planes = np.ascontiguousarray(a.transpose(2, 0, 1))
    tifffile.imwrite(tmp_path / "planar.tif", planes, photometric="rgb", planarconfig="separate")
    with pytest.raises(DataError, match=r"planar\.tif: cannot read this image correctly.*contig"):
        read_image(tmp_path / "planar.tif")
    for name, kw in (("contig.tif", {}), ("zlib.tif", {"compression": "zlib"})):
        tifffile.imwrite(tmp_path / name, a, photometric="rgb", **kw)  # read right: read
        assert read_image(tmp_path / name).shape[:2] == (40, 50)
    tifffile.imwrite(
        tmp_path / "zplanar.tif",
        planes,
        photometric="rgb",
        planarconfig="separate",
        compression="zlib",
    )
    assert read_image(tmp_path / "zplanar.tif").shape[:2] == (40, 50)


def test_the_overlay_of_a_line_scan_strip_stays_within_the_overlay_side():
    """A 32 x 30000 px strip was shrunk to 4096 rows, then widened 64 times to stay legible:
    an overlay of 262,000 rows, 1 GB of memory to write, which no viewer opens."""
    import numpy as np

    from anomaly.overlays import (
        OVERLAY_SIDE,
        EvidenceScale,
        annotated_overlay,
        body_rows,
        overlay_size,
    )

    for shape in ((30000, 32), (4000, 40), (40, 4000), (64, 64)):
        shown = overlay_size(*shape)
        image = np.zeros((*shown, 3), np.float32)
        picture = annotated_overlay(
            image, np.zeros(shown, np.float32), EvidenceScale(0.2, 0.8), 0.1, 0.5
        )
        rows = body_rows(shape)
        assert rows.stop - rows.start <= OVERLAY_SIDE and picture.shape[0] >= rows.stop
        assert max(picture.shape[:2]) <= OVERLAY_SIDE + 200  # the words and the colour bar


def test_every_command_says_what_it_does_and_each_run_flag_is_explained(capsys):
    from anomaly.cli_parser import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        assert sub.description, f"{name} --help has no description"
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"


def test_a_negative_threshold_in_exponent_notation_is_a_value(scored_ae_run, tmp_path):
    import shutil

    from anomaly.cli import main
    from anomaly.runs import RunDir

    run = tmp_path / "run"
    shutil.copytree(scored_ae_run, run)
    assert main(["threshold", "--run", str(run), "--rule", "manual", "--value", "-1e-05"]) == 0
    assert RunDir(run).threshold().value == -1e-05


def test_greyscale_pictures_saved_as_colour_are_not_called_colour(tiny_cookies, tmp_path):
    """A run trained on greyscale files named the same picture saved as RGB or as a palette
    'colour, for a run trained on greyscale images', though it scores it identically; train
    called greyscale pictures saved as RGB among greyscale files colour."""
    from PIL import Image

    from anomaly.data.image_kind import image_kind
    from anomaly.data.image_unlike import unlike_each, warn_mixed

    grey = Image.open(min((tiny_cookies / "test" / "good").glob("*.png"))).convert("L")
    files = {}
    for mode in ("L", "RGB", "P"):
        files[mode] = tmp_path / f"{mode}.png"
        grey.convert(mode).save(files[mode])
    tinted = grey.convert("RGB")
    tinted.putpixel((3, 3), (200, 10, 10))
    tinted.save(files.setdefault("tinted", tmp_path / "tinted.png"))
    trained = {"colour": [False], "bits": [8], "aspect": [1.0, 1.0], "side": [64, 64]}
    trained["transparent"] = [False]
    said = unlike_each([str(p) for p in files.values()], trained, 3, 64)
    assert list(said) == [str(files["tinted"])] and said[str(files["tinted"])].startswith("colour")
    assert image_kind(files["RGB"])["colour"]  # by its mode: the pixels decide only above
    paths = [str(files["L"])] * 3 + [str(files["RGB"]), str(files["P"])]
    assert warn_mixed(paths, 3, 64) == []
    with pytest.warns(UserWarning, match="1 of the 4 training images .*tinted.* is colour"):
        warn_mixed([str(files["L"])] * 3 + [str(files["tinted"])], 3, 64)


@pytest.mark.parametrize("code", ["EFBIG", "ENOSPC"])
def test_export_on_a_full_disk_names_the_file_and_keeps_the_earlier_one(
    tiny_cookies, tmp_path, monkeypatch, code
):
    """export said a bare '[Errno 27] File too large' (or 28), naming no file."""
    import errno

    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import onnx

    from anomaly import safe_files
    from anomaly.config import Config
    from anomaly.export import export_onnx
    from anomaly.pipeline import train_run
    from anomaly.runs import RunError

    run = tmp_path / "pk"
    config = Config.for_method("patchknn", data=str(tiny_cookies), size=48, device="cpu")
    train_run(config, run, progress=False)
    before = export_onnx(run, run / "model.onnx").read_bytes()

    def full(*args, **kwargs):
        raise OSError(getattr(errno, code), "no room")

    monkeypatch.setattr(onnx, "save", full)
    monkeypatch.setattr(safe_files, "_disk_full", lambda err, folder: True)  # as a full disk is
    with pytest.raises(RunError, match=r"model\.onnx: .*(file-size limit|disk is full).*as it was"):
        export_onnx(run, run / "model.onnx")
    assert (run / "model.onnx").read_bytes() == before
    assert sorted(p.name for p in run.iterdir() if "onnx" in p.name) == ["model.onnx"]


def test_a_run_stopped_before_its_model_is_told_to_train_again_not_resume(
    tiny_cookies, tmp_path, capsys
):
    """A patchknn run killed before model.pt: `threshold` said to set one with --rule, which
    said to finish it with --resume, which said there is no last.pt: three commands to 'train
    it again'."""
    from helpers import tiny_config

    from anomaly.cli import main
    from anomaly.runs import RunDir

    run = RunDir(tmp_path / "kp")
    run.create(tiny_config(tiny_cookies, "patchknn"), {"train": [], "val": []})
    for extra in ([], ["--rule", "conformal", "--value", "0.1"]):
        assert main(["threshold", "--run", str(run.path), *extra]) == 2
        said = capsys.readouterr().err
        assert "has no model.pt" in said and "train it again" in said and "--resume" not in said


def test_score_into_a_folder_of_ones_own_reads_a_run_one_cannot_write(
    scored_ae_run, tmp_path, monkeypatch
):
    """`score --run SHARED --out MINE` was refused ('score writes in it') for a run on a
    read-only mount or of a colleague: it took the run's lock before seeing --out."""
    import errno
    import os

    from anomaly import run_lock, runs
    from anomaly.pipeline import score_run

    shared = os.path.realpath(scored_ae_run)
    real_access, real_take = os.access, run_lock._take_lock

    def access(path, mode, *args, **kwargs):  # as for a user other than the run's owner
        if os.path.realpath(path) == shared and mode == os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    def take(folder, path, command):
        if os.path.realpath(folder) == shared:
            raise run_lock.not_writable(folder, OSError(errno.EACCES, "Permission denied"), command)
        return real_take(folder, path, command)

    monkeypatch.setattr(runs.os, "access", access)
    monkeypatch.setattr(run_lock, "_take_lock", take)
    before = sorted(p.name for p in scored_ae_run.iterdir())
    _, metrics = score_run(scored_ae_run, overlays=False, out=tmp_path / "mine")
    assert (tmp_path / "mine" / "scores.csv").is_file() and metrics["image_auroc"] is not None
    assert sorted(p.name for p in scored_ae_run.iterdir()) == before
    with pytest.raises(runs.RunError, match="cannot be written"):  # its own scores: refused
        score_run(scored_ae_run, overlays=False)


def _full_settings(tmp_path, data):
    from anomaly.notebook_setup import Settings

    return Settings(False, "benchmark", None, None, data, tmp_path / "runs" / "benchmark")


def test_notebook_06_does_not_show_a_smoke_benchmark_as_the_benchmark(tmp_path):
    """At full settings `benchmark_result` read a `benchmark --smoke` table (64 px, one epoch)
    and showed it under 'Every method on the cookies'; `run_folder` refused its runs."""
    import json

    from anomaly.notebook_benchmark import benchmark_result, photos_result

    s = _full_settings(tmp_path, tmp_path / "data")
    made = {"rows": [], "command": "python -m anomaly benchmark --data d --methods patchknn"}
    for folder in (s.runs_dir, s.runs_dir.parent / "benchmark-photos"):
        folder.mkdir(parents=True)
        (folder / "benchmark.json").write_text(
            json.dumps({**made, "command": made["command"] + " --smoke"})
        )
    for read in (benchmark_result, photos_result):
        with pytest.raises(FileNotFoundError, match="holds a `benchmark --smoke` result"):
            read(s)
    (s.runs_dir / "benchmark.json").write_text(json.dumps(made))
    assert benchmark_result(s)["command"] == made["command"]


def test_a_benchmark_run_scored_by_an_older_evaluation_is_rescored_in_a_copy(
    tiny_cookies, tmp_path, capsys
):
    """`ensure_run` re-scored such a run in place: a new metrics.json and overlays in the
    benchmark's folder, which `make benchmark` then refused as changed since it wrote them."""
    import hashlib
    import json

    from anomaly.config import Config
    from anomaly.notebook_setup import ensure_run
    from anomaly.pipeline import score_run, train_run
    from anomaly.runs import RunDir

    s = _full_settings(tmp_path, tiny_cookies)
    made = s.runs_dir / "meandiff"
    train_run(Config.for_method("meandiff", data=str(tiny_cookies)), made, progress=False)
    score_run(made, overlays=False)
    metrics = json.loads((made / "metrics.json").read_text())
    del metrics["pixel_metrics_size"]  # as an older evaluation wrote it
    (made / "metrics.json").write_text(json.dumps(metrics))
    assert not RunDir(made).has_current_metrics()
    digest = hashlib.sha256((made / "metrics.json").read_bytes()).hexdigest()
    run = ensure_run(s, "meandiff", data=tiny_cookies)
    assert run == s.own_runs / "meandiff" and RunDir(run).has_current_metrics()
    assert hashlib.sha256((made / "metrics.json").read_bytes()).hexdigest() == digest
    assert "the benchmark's run stays as it was" in capsys.readouterr().out


def test_the_original_recipe_cell_continues_a_training_the_kernel_stopped(
    tiny_cookies, tmp_path, monkeypatch
):
    """`original_runs` called train_run directly: after a kernel interrupt the cell failed on
    every re-run ('holds an interrupted run; continue it with --resume')."""
    from dataclasses import replace

    from anomaly import original, train
    from anomaly.notebook_setup import Settings
    from anomaly.runs import RunDir

    s = Settings(True, "tiny", 32, 3, tiny_cookies, tmp_path / "runs" / "smoke")
    calls = {"n": 0}
    real_epoch = train._run_epoch

    def stop_in_epoch_two(*args, **kwargs):  # the kernel's interrupt, in the second epoch
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 1: train and validation; epoch 2's training
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train, "_run_epoch", stop_in_epoch_two)
    with pytest.raises(train.Interrupted):
        original.original_runs(s, tiny_cookies)
    unet = s.run_folder("unet_original")
    assert RunDir(unet).has_last() and not RunDir(unet).has_metrics()
    monkeypatch.setattr(train, "_run_epoch", real_epoch)
    runs = original.original_runs(replace(s), tiny_cookies)
    assert all(RunDir(r).has_metrics() for r in runs.values())
    assert len(RunDir(unet).history()) == 3  # continued to its 3 epochs, not trained anew


@pytest.mark.parametrize("code", [-2, 130, -15])
def test_a_benchmark_worker_stopped_by_ctrl_c_stops_the_benchmark(tmp_path, monkeypatch, code):
    """A worker that Ctrl-C reached alone was one FAILED row: the benchmark went on, rewrote
    the README's table with failed rows and exited 2 instead of stopping as interrupted."""
    import subprocess

    from anomaly import benchmark

    def stopped(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, code, "", "KeyboardInterrupt")

    monkeypatch.setattr(benchmark.subprocess, "run", stopped)
    base = tmp_path / "bench" / "set"
    base.mkdir(parents=True)
    with pytest.raises(KeyboardInterrupt):
        benchmark._run_method("meandiff", {"name": "set", "path": str(tmp_path)}, base, 0, True, [])
    assert not [p for p in base.iterdir() if not p.name.startswith(".")]  # nothing left half
    monkeypatch.setattr(
        benchmark.subprocess,
        "run",
        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "boom"),
    )
    row = benchmark._run_method(
        "meandiff", {"name": "set", "path": str(tmp_path)}, base, 0, True, []
    )
    assert row["error"] == ["boom"]  # a failure of its own stays one FAILED row


def test_uploads_staged_from_threads_leave_the_process_warning_filters_alone(tiny_cookies):
    """`_write` sniffed each upload's format inside warnings.catch_warnings(): from a service's
    threads, one thread's exit put back another's 'ignore' filter, and every later warning of
    the process (the `unlike` ones too) was dropped."""
    import io
    import sys
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    from anomaly.uploads import staged

    data = min((tiny_cookies / "test" / "good").glob("*.png")).read_bytes()

    def stage(i):
        with staged([io.BytesIO(data) for _ in range(4)]) as (_, shown):
            return len(shown)

    stage(0)  # the package's own filter for Pillow's warnings is added once, on first use
    before, interval = list(warnings.filters), sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch often, as a busy service's do
    try:
        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(stage, range(400))) == {4}
    finally:
        sys.setswitchinterval(interval)
    assert warnings.filters == before


def test_pil_images_of_several_frames_are_read_as_their_files_are(
    scored_ae_run, tiny_cookies, tmp_path
):
    """Staging every frame of any PIL image of several frames refused a phone's MPO JPEG and a
    pyramid TIFF once decoded ('an animation'), and a frame chosen with seek() was ignored."""
    from PIL import Image

    import anomaly

    crack = Image.open(min((tiny_cookies / "test" / "crack").glob("*.png"))).convert("RGB")
    good = Image.open(min((tiny_cookies / "test" / "good").glob("*.png"))).convert("RGB")
    crack.save(
        tmp_path / "phone.jpg", format="MPO", save_all=True, append_images=[crack.resize((32, 32))]
    )
    crack.save(tmp_path / "pyr.tif", save_all=True, append_images=[crack.resize((32, 32))])
    good.save(tmp_path / "two.tif", save_all=True, append_images=[crack])  # a stack of 2 pages
    crack.save(tmp_path / "crack.png")

    def score(x):
        (result,), _ = anomaly.predict_images(scored_ae_run, [x], overlays=False)
        return result

    for name in ("phone.jpg", "pyr.tif"):
        im = Image.open(tmp_path / name)
        im.load()
        assert score(im)["score"] == pytest.approx(score(str(tmp_path / name))["score"], rel=1e-3)
    stack = Image.open(tmp_path / "two.tif")
    assert "a TIFF of 2 pages" in score(str(tmp_path / "two.tif"))["error"]
    stack.seek(1)  # the page the caller chose: scored as that image
    assert score(stack)["score"] == pytest.approx(score(str(tmp_path / "crack.png"))["score"])


def test_val_fraction_is_said_ignored_only_where_the_source_split_is_used(
    tiny_cookies, scored_ae_run, tmp_path, capsys
):
    """With an encoder run trained on other data, --val-fraction was said to be ignored though
    it was applied; dropping it, as advised, changed the split."""
    import json
    import shutil

    from anomaly.cli import main

    other = tmp_path / "other"
    shutil.copytree(tiny_cookies, other)
    for p in (other / "train" / "good").glob("*.png"):
        p.write_bytes(p.read_bytes() + b"\0")  # other bytes: none of the encoder's images
    args = ["train", "--method", "patchknn", "--data", str(other)]
    args += ["--backbone", f"encoder:{scored_ae_run}", "--val-fraction", "0.5"]
    assert main([*args, "--out", str(tmp_path / "pk")]) == 0
    assert "ignores --val-fraction" not in capsys.readouterr().err
    split = json.loads((tmp_path / "pk" / "split.json").read_text())
    assert len(split["val"]) == len(split["train"])  # the 0.5 asked for was applied


def test_a_conformal_threshold_does_not_count_held_out_copies_of_training_images(
    tiny_cookies, tmp_path, capsys
):
    """Held-out images byte-identical to training images were counted in the conformal n (a
    guarantee at alpha 0.111 on 8 held-out images, 2 of them learned), where --good-images
    refuses such images."""
    import json
    import shutil

    from helpers import tiny_config

    from anomaly.cli import main
    from anomaly.pipeline import train_run
    from anomaly.runs import RunDir

    data = tmp_path / "data"
    shutil.copytree(tiny_cookies, data)
    good = sorted((data / "train" / "good").glob("*.png"))
    for i, p in enumerate(good):  # every image twice: each held-out one has a trained twin
        shutil.copy(p, p.with_name(f"copy{i:03d}.png"))
    run = RunDir(tmp_path / "run")
    train_run(tiny_config(data, "meandiff", val_fraction=0.5, seed=1), run.path, progress=False)
    split = json.loads(run.file(run.SPLIT).read_text())
    digest = dict(zip(split["train"] + split["val"], split["sha256"]))
    learned = {digest[p] for p in split["train"]}
    fresh = [p for p in split["val"] if digest[p] not in learned]
    assert len(fresh) < len(split["val"])  # some held-out images are copies of trained ones
    capsys.readouterr()
    code = main(["threshold", "--run", str(run.path), "--rule", "conformal", "--value", "0.5"])
    said = capsys.readouterr()
    assert code == 0  # set on the images the model did not learn, each counted once
    calibration = run.threshold().params["calibration"]
    assert calibration["n"] == len({digest[p] for p in fresh}) == run.threshold().params["n"]
    assert calibration["copies"] == len(split["val"]) - calibration["n"]
    assert "copies of another" in said.err + said.out


def test_the_error_classes_readme_names_are_reached_from_the_package_without_torch():
    """README named `anomaly.export.ExportError`, which `import anomaly` does not load (and
    loading it imports torch, which a service on onnxruntime alone need not have)."""
    from helpers import fresh_python

    code = (
        "import sys, anomaly\n"
        "names = (anomaly.ExportError, anomaly.InUse, anomaly.RunError, anomaly.DataError)\n"
        "assert all(issubclass(c, Exception) for c in names)\n"
        "print('torch' in sys.modules)"
    )
    done = fresh_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    import anomaly
    from anomaly.export import ExportError
    from anomaly.safe_files import InUse

    assert anomaly.ExportError is ExportError and anomaly.InUse is InUse


def test_make_photos_says_its_counts_per_set_and_defect_kind():
    """`make-photos` printed {"train": 80, "good": 25, "defect": 7}, read as 7 defects in all."""
    from anomaly.data.photos import counts_said

    manifest = {
        "counts": {"train": 80, "good": 25, "defect": 7},
        "sets": {"a": {"defect_kinds": ["scratch"] * 5}, "b": {"defect_kinds": ["hole"] * 6}},
    }
    said = counts_said(manifest)
    assert said["sets"] == 2 and said["test/<defect kind>"] == 7 and said["defect kinds"] == [5, 6]
    assert "defect" not in said


def test_an_edited_pil_image_of_several_frames_is_scored_as_edited_and_left_as_it_was(
    scored_ae_run, tiny_cookies, tmp_path
):
    """Deciding whether its file is refused seeked the caller's decoded pyramid TIFF, which threw
    its edits away: the file's pixels were scored and the caller's image reset."""
    import numpy as np
    from PIL import Image, ImageDraw

    import anomaly

    crack = Image.open(min((tiny_cookies / "test" / "good").glob("*.png"))).convert("RGB")
    crack.save(tmp_path / "pyr.tif", save_all=True, append_images=[crack.resize((16, 16))])
    im = Image.open(tmp_path / "pyr.tif")
    im.load()
    ImageDraw.Draw(im).rectangle((10, 10, 40, 40), fill=(255, 0, 0))
    edited = np.asarray(im).copy()
    Image.fromarray(edited).save(tmp_path / "edited.png")
    (got,), _ = anomaly.predict_images(scored_ae_run, [im], overlays=False)
    (want,), _ = anomaly.predict_images(
        scored_ae_run, [str(tmp_path / "edited.png")], overlays=False
    )
    assert got["score"] == pytest.approx(want["score"]) and np.array_equal(np.asarray(im), edited)


def test_held_out_images_all_copies_of_training_ones_are_refused_by_their_cause(
    tiny_cookies, tmp_path, capsys
):
    """Every held-out image a copy of a training image (a folder copied in twice): threshold
    said 'threshold_normal_quantile needs at least one normal score', or blamed an alpha of 1.0
    the user never gave."""
    import shutil

    from helpers import tiny_config

    from anomaly.cli import main
    from anomaly.pipeline import train_run

    data = tmp_path / "data"
    shutil.copytree(tiny_cookies, data)
    good = sorted((data / "train" / "good").glob("*.png"))
    for i, p in enumerate(good[2:], 2):  # two pictures, each four times
        shutil.copy(good[i % 2], p)
    train_run(
        tiny_config(data, "meandiff", val_fraction=0.5, seed=1), tmp_path / "run", progress=False
    )
    for rule in (["normal-quantile"], ["conformal", "--value", "0.5"]):
        assert main(["threshold", "--run", str(tmp_path / "run"), "--rule", *rule]) == 2
        said = capsys.readouterr().err
        assert "held-out images is a copy of a training image" in said and "alpha" not in said
    from anomaly.notebook_photos import held_out_threshold
    from anomaly.runs import RunError

    with pytest.raises(RunError, match="is a copy of a training image"):  # notebook 07's cell
        held_out_threshold(tmp_path / "run", 0.05)


def test_log_lines_shares_stdout_only_with_a_real_file_of_stderr(tmp_path):
    """A notebook's stdout (not a file object of its own; its descriptors the kernel's) was
    wrapped too, and `cli.main()` in a notebook printed a blank line before `trained ...`."""
    import io

    from anomaly.terminal import LogLines, log_lines

    class NotebookStream(io.StringIO):  # as ipykernel's OutStream: no tty, descriptors shared
        def fileno(self):
            return 1

    err, out = log_lines(NotebookStream(), NotebookStream())
    assert isinstance(err, LogLines) and not isinstance(out, LogLines)
    with open(tmp_path / "log", "w") as one, open(one.fileno(), "w", closefd=False) as same:
        err, out = log_lines(one, same)
        assert isinstance(out, LogLines) and out._after_bar is err._after_bar


def test_blank_frames_trained_on_are_named(tiny_cookies, tmp_path):
    """Eight black frames among the good images were trained on without a word: the model
    learns a blank as normal (defect scores fell by about 0.5 with three of them)."""
    import numpy as np
    from PIL import Image

    from anomaly.data.image_unlike import warn_blank

    good = sorted(str(p) for p in (tiny_cookies / "train" / "good").glob("*.png"))
    Image.new("RGB", (256, 256)).save(tmp_path / "black.png")
    Image.fromarray(np.full((64, 64), 3000, np.uint16)).save(tmp_path / "grey16.png")
    blank = [str(tmp_path / "black.png"), str(tmp_path / "grey16.png")]
    with pytest.warns(UserWarning, match=r"2 of the \d+ training images .*black.png.* flat colour"):
        assert warn_blank(good + blank) == blank
    assert warn_blank(good) == []  # pictures of cookies: none


def test_notebook_07s_held_out_threshold_takes_the_least_alpha_its_distinct_photos_allow(
    tiny_cookies, tmp_path, capsys
):
    """Once copies of training photos stopped counting, the coins' 17 distinct held-out photos
    were too few for 5 %: notebook 07's cell failed at full settings."""
    import shutil

    from helpers import tiny_config

    from anomaly.notebook_photos import held_out_threshold
    from anomaly.pipeline import train_run

    data = tmp_path / "data"
    shutil.copytree(tiny_cookies, data)
    good = sorted((data / "train" / "good").glob("*.png"))
    for i, p in enumerate(good):
        shutil.copy(p, p.with_name(f"copy{i:03d}.png"))
    train_run(
        tiny_config(data, "meandiff", val_fraction=0.5, seed=1), tmp_path / "run", progress=False
    )
    t, alpha = held_out_threshold(tmp_path / "run", 0.2)  # 4 needed, 1 distinct and fresh
    assert alpha == 0.5 and t.params["alpha"] == 0.5 and t.params["n"] == 1
    assert "too few for alpha 0.2 (it needs 4); set at 0.5" in capsys.readouterr().out


def test_the_explorer_will_not_save_into_a_run_moved_or_trained_again_since_it_read_it(
    tiny_cookies, tmp_path
):
    """Save on a page whose run was renamed made a new folder holding threshold.json alone and
    said 'Saved'; on a run trained again meanwhile it saved the earlier model's threshold and
    rates under the new model's digest (the report too)."""
    import shutil

    from helpers import tiny_config

    from anomaly import ThresholdExplorer
    from anomaly.pipeline import score_run, train_run

    run = tmp_path / "pk"
    train_run(tiny_config(tiny_cookies, "meandiff"), run, progress=False)
    score_run(run, overlays=False)
    page = ThresholdExplorer([run])
    run.rename(tmp_path / "moved")
    for act in (page.save_threshold, page.export_report):
        with pytest.raises(ValueError, match="moved, renamed or deleted"):
            act()
    assert not run.exists()
    shutil.move(tmp_path / "moved", run)
    page = ThresholdExplorer([run])
    (run / "model.pt").write_bytes((run / "model.pt").read_bytes() + b"\0")  # trained again
    for act in (page.save_threshold, page.export_report):
        with pytest.raises(ValueError, match="trained again since this page read its scores"):
            act()


def test_the_explorer_refuses_runs_on_other_data_whose_images_only_share_names(
    tiny_cookies, tmp_path
):
    """Two product lines of the same kinds (MVTec-style 000.png, 001.png ...) were matched by
    name and compared image by image: tiles showed one run's picture with the other's verdict."""
    import shutil

    from helpers import tiny_config

    from anomaly import ThresholdExplorer
    from anomaly.data import make_cookies
    from anomaly.pipeline import score_run, train_run

    other = tmp_path / "other"
    make_cookies(other, preset="tiny", seed=5, size=64)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_cookies, copy)
    runs = {}
    for name, data in (("a", tiny_cookies), ("b", other), ("c", copy)):
        runs[name] = tmp_path / name
        train_run(tiny_config(data, "meandiff"), runs[name], progress=False)
        score_run(runs[name], overlays=False)
    with pytest.raises(ValueError, match="share names but not contents"):
        ThresholdExplorer([runs["a"], runs["b"]])
    assert len(ThresholdExplorer([runs["a"], runs["c"]]).runs) == 2  # a copy of the data: matched


def test_of_two_explorer_pages_saving_at_once_the_second_is_refused(
    scored_ae_run, tmp_path, monkeypatch
):
    """Both pages' saves said 'saved' when released within ~5 ms, and one value was lost: the
    check and the write were not under the run's lock."""
    from helpers import copy_run

    from anomaly import ThresholdExplorer
    from anomaly.explorer import widget
    from anomaly.explorer.saving import ThresholdChanged
    from anomaly.runs import RunDir

    run = copy_run(scored_ae_run, tmp_path / "run")
    first, second = ThresholdExplorer([run]), ThresholdExplorer([run])
    first.slider.value = first.slider.value * 1.01 + 0.01
    first.save_threshold()
    kept = RunDir(run).threshold().value
    monkeypatch.setattr(widget, "check_unchanged", lambda *args: None)  # the page's own check
    second.slider.value = second.slider.value * 0.99  # passed before the first save landed
    with pytest.raises(ThresholdChanged):
        second.save_threshold()
    assert RunDir(run).threshold().value == kept


def test_the_explorer_page_says_why_it_cannot_show_its_runs(tmp_path, monkeypatch):
    """A run moved after `explore` started gave colleagues Voila's 'There was an error when
    executing cell [1]' only; the reason was in the server's terminal."""
    from anomaly.explorer import server

    monkeypatch.setenv(server.RUNS_ENV, str(tmp_path / "gone"))
    page = server.app()
    assert "cannot show these runs" in page.data and "gone" in page.data


def test_an_animation_decoded_from_memory_is_refused_as_its_file_is(scored_ae_run, tiny_cookies):
    """`Image.open(io.BytesIO(upload)).load()`, a service's usual upload, of an animation was
    scored as its first frame: once decoded, Pillow keeps the stream as `_fp`, not `fp`."""
    import io

    from PIL import Image

    import anomaly

    frame = Image.open(min((tiny_cookies / "test" / "good").glob("*.png"))).convert("RGB")
    for kind in ("GIF", "PNG", "TIFF"):
        data = io.BytesIO()
        frame.save(data, kind, save_all=True, append_images=[frame.rotate(90)])
        im = Image.open(io.BytesIO(data.getvalue()))
        im.load()
        (result,), _ = anomaly.predict_images(scored_ae_run, [im], overlays=False)
        assert "score" not in result and ("frames" in result["error"] or "pages" in result["error"])


def test_the_explorer_saves_predictions_into_a_new_run_dirs_folder(scored_ae_run, tmp_path):
    """The check that the page's run was not moved refused a run_dirs= folder that did not
    exist yet ('holds no model.pt now: the run was moved'), where Save is documented to go."""
    from anomaly import ThresholdExplorer
    from anomaly.detectors import Predictions

    pred = Predictions.load(scored_ae_run / "predictions.npz")
    page = ThresholdExplorer(pred, run_dirs=tmp_path / "new")
    assert page.save_threshold() == tmp_path / "new" / "threshold.json"


def test_the_explorer_on_a_score_out_folder_sees_its_run_trained_again(
    scored_ae_run, tiny_cookies, tmp_path
):
    """A page on `score --out FOLDER` whose run was trained again saved the earlier model's
    threshold into FOLDER, where predict never reads it (its run was looked up anew at save
    time, and no longer matched)."""
    from helpers import copy_run

    from anomaly import ThresholdExplorer
    from anomaly.pipeline import score_run

    run = copy_run(scored_ae_run, tmp_path / "run")
    score_run(run, data=tiny_cookies, out=tmp_path / "out", overlays=False)
    page = ThresholdExplorer([tmp_path / "out"])
    (run / "model.pt").write_bytes((run / "model.pt").read_bytes() + b"\0")  # trained again
    with pytest.raises(ValueError, match="trained again"):
        page.save_threshold()
    assert not (tmp_path / "out" / "threshold.json").exists()


def test_explore_refuses_runs_its_page_cannot_draw_before_serving(tmp_path, monkeypatch):
    """Scores spanning +-1e308 passed `explore`'s check (the runs load), and the page then
    showed only an error: it is refused before the server starts."""
    import numpy as np

    from anomaly.detectors import Predictions
    from anomaly.explorer import server

    n = 4
    pred = Predictions(
        [f"/x/{i}.png" for i in range(n)],
        [0, 0, 1, 1],
        ["good", "good", "crack", "crack"],
        np.array([-1e308, 0.0, 1.0, 1e308]),
        np.zeros((n, 8, 8), np.float32),
    )
    pred.save(tmp_path / "wide.npz")

    def started(*args, **kwargs):
        raise AssertionError("the server was started")

    monkeypatch.setattr(server.subprocess, "Popen", started)
    with pytest.raises(ValueError):
        server.serve([str(tmp_path / "wide.npz")], port=8931, block=False)
