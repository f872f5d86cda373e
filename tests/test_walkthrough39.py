"""Defects found walking through the project as its users do (session 39), each with the test
that failed before its fix."""

from __future__ import annotations


def test_the_report_holds_the_auroc_and_what_made_the_run(scored_ae_run):
    # an audit of session 38: the report, the page a QA engineer files, held no AUROC and no
    # versions, so it could not be checked against metrics.json or a rerun
    import json

    import anomaly

    metrics = json.loads((scored_ae_run / "metrics.json").read_text())
    versions = json.loads((scored_ae_run / "versions.json").read_text())
    ex = anomaly.ThresholdExplorer(scored_ae_run)
    text = ex.report_html()
    ex.close()
    low, high = metrics["image_auroc_ci"]
    assert f"{metrics['image_auroc']:.3f} (95 % interval {low:.2f}-{high:.2f})" in text
    assert f"torch {versions['torch']}" in text and f"python {versions['python']}" in text


def test_an_export_records_the_versions_that_wrote_it(tmp_path, tiny_cookies):
    # an audit of session 38: an exported file said which run and threshold it held, not which
    # package, torch and onnx wrote it
    import json
    from importlib.metadata import version

    import onnxruntime
    import torch
    from helpers import patchknn_export

    path = patchknn_export(tiny_cookies, tmp_path / "run")
    meta = onnxruntime.InferenceSession(str(path)).get_modelmeta().custom_metadata_map
    made = json.loads(meta["exported_by"])
    assert made["torch"] == torch.__version__ and made["onnx"] == version("onnx")
    assert made["onnxruntime"] == onnxruntime.__version__ and made["anomaly"]


def _reader(tmp_path, tiny_cookies, missing: str = ""):
    """A deployed copy of the reader and an export beside it; `missing`: a module made
    unimportable there (a package of that name, first on the reader's path, that raises)."""
    from helpers import deploy_copy, patchknn_export

    onnx = patchknn_export(tiny_cookies, tmp_path / "run", size=32)
    reader = deploy_copy(tmp_path / "plant")
    if missing:
        (tmp_path / "plant" / missing).mkdir()
        (tmp_path / "plant" / missing / "__init__.py").write_text("raise ImportError('gone')\n")
    return reader, onnx


def _run_reader(reader, *args):
    import subprocess
    import sys

    argv = [sys.executable, str(reader), *map(str, args)]  # not -I: its folder first on the path
    return subprocess.run(argv, capture_output=True, text=True, check=False, cwd=reader.parent)


def test_the_deployed_reader_without_pillow_says_what_to_install(tmp_path, tiny_cookies):
    # a plant PC walkthrough: Pillow forgotten, the reader printed the threshold line and then
    # a traceback (exit 1); a missing onnxruntime's message held a literal "\n" and advised
    # anomaly[export] on a machine without the package
    reader, onnx = _reader(tmp_path, tiny_cookies, missing="PIL")
    good = min((tiny_cookies / "test" / "good").glob("*.png"))
    done = _run_reader(reader, onnx, good)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "the package 'pillow' is not installed" in done.stderr
    assert "pip install onnxruntime numpy pillow" in done.stderr and not done.stdout
    reader, onnx = _reader(tmp_path / "b", tiny_cookies, missing="onnxruntime")
    done = _run_reader(reader, onnx, good)
    assert done.returncode == 2 and "\\n" not in done.stderr and "anomaly[" not in done.stderr


def test_the_deployed_reader_tells_a_newer_format_from_a_foreign_file(tmp_path, tiny_cookies):
    # a file of a later format was called "not written by anomaly.export", with the advice to
    # export again, which on a plant PC with an older reader gives the same refusal
    import onnx as onnx_lib

    reader, path = _reader(tmp_path, tiny_cookies)
    model = onnx_lib.load(str(path))
    for entry in model.metadata_props:
        if entry.key == "format":
            entry.value = "anomaly-onnx/2"
    onnx_lib.save(model, str(path))
    done = _run_reader(reader, path, min((tiny_cookies / "test" / "good").glob("*.png")))
    assert done.returncode == 2 and "'anomaly-onnx/2'" in done.stderr
    assert "copy onnx_predict.py and onnx_checks.py from that version" in done.stderr
    help_text = _run_reader(reader, "--help").stdout
    assert "tab-separated" in help_text and "141" in help_text  # what its rows hold
    assert "empty frame" in help_text  # (README: its --help says so)


def test_a_conformal_threshold_without_its_record_is_not_told_to_use_conformal():
    # an export of 2026-12-02 carries a conformal threshold without its params: predict said
    # "no guarantee ... (use --rule conformal for one)"
    from anomaly.metrics import Threshold
    from anomaly.threshold_text import threshold_words

    words = threshold_words(Threshold(9.9, "conformal", {}))
    assert "use --rule conformal" not in words and "no record of its guarantee" in words


def test_export_prints_the_files_sha256(tmp_path, tiny_cookies, capsys):
    # the file holds no checksum of its own: a damaged copy's weights score without a word, so
    # export names the digest to compare a copy with (README)
    from helpers import patchknn_export

    from anomaly.cli import main
    from anomaly.safe_files import sha256_file

    patchknn_export(tiny_cookies, tmp_path / "run", size=32)
    capsys.readouterr()
    main(["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "m.onnx")])
    assert f"(SHA-256 {sha256_file(tmp_path / 'm.onnx')})" in capsys.readouterr().out


def test_a_score_out_folder_opened_from_another_folder_saves_into_its_run(
    tiny_cookies, tmp_path, monkeypatch
):
    # shared storage: `score --run runs/pk --out O` (a relative --run) recorded "runs/pk" as
    # typed; the explorer opened on O from another folder found no run, showed no saved
    # threshold and saved one into O, which predict never reads
    import json

    import numpy as np
    from helpers import tiny_config

    import anomaly
    from anomaly.pipeline import score_run, train_run

    monkeypatch.chdir(tmp_path)
    train_run(tiny_config(tiny_cookies, method="meandiff"), "runs/md", progress=False)
    score_run("runs/md", out="out", overlays=False)
    (tmp_path / "nb").mkdir()
    monkeypatch.chdir(tmp_path / "nb")
    ex = anomaly.ThresholdExplorer([str(tmp_path / "out")])
    assert ex.run.saved is not None  # the run's, found from here
    saved = ex.save_threshold()
    ex.close()
    assert saved == tmp_path / "runs" / "md" / "threshold.json"
    assert not (tmp_path / "out" / "threshold.json").exists()
    # a folder scored before (its run recorded relative to another folder): refused, not orphaned
    with np.load(tmp_path / "out" / "predictions.npz") as z:
        arrays = dict(z)
    meta = json.loads(str(arrays["meta"]))
    arrays["meta"] = np.array(json.dumps({**meta, "run": "runs/md"}))
    np.savez(tmp_path / "out" / "predictions.npz", **arrays)
    ex = anomaly.ThresholdExplorer([str(tmp_path / "out")])
    try:
        import pytest

        with pytest.raises(ValueError, match="not found from here"):
            ex.save_threshold()
    finally:
        ex.close()
    assert not (tmp_path / "out" / "threshold.json").exists()


def test_the_metrics_table_refuses_metrics_of_an_earlier_model(
    scored_ae_run, tiny_cookies, tmp_path
):
    # a resume stopped by a full disk had replaced model.pt, and left the earlier model's
    # metrics.json: predict, score and the explorer refused, the notebook's table printed them
    import shutil

    import pytest
    from helpers import copy_run, tiny_config

    from anomaly import notebook as nb
    from anomaly.pipeline import train_run
    from anomaly.runs import RunError

    run = copy_run(scored_ae_run, tmp_path / "a")
    assert "ae" in nb.metrics_table({"ae": run})
    other = tmp_path / "other"
    train_run(tiny_config(tiny_cookies, seed=1), other, progress=False)
    shutil.copy(other / "model.pt", run / "model.pt")
    with pytest.raises(RunError, match="metrics of an earlier model"):
        nb.metrics_table({"ae": run})


def test_score_into_a_folder_it_cannot_write_stops_before_scoring(
    scored_ae_run, tmp_path, monkeypatch
):
    # shared storage: `score --out DIR` into a folder not writable scored the whole test set,
    # then advised "score --out DIR", the flag given
    import errno
    import tempfile

    import pytest

    from anomaly import pipeline
    from anomaly.predict import overlay_folder  # imported before decoding_loader is patched
    from anomaly.runs import RunError

    out = tmp_path / "theirs"
    out.mkdir()
    real = tempfile.mkstemp

    def refused(*args, **kwargs):  # (as root, a mode would not stop the write)
        if str(kwargs.get("dir")) == str(out):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    monkeypatch.setattr(pipeline, "decoding_loader", lambda *a, **k: pytest.fail("scored"))
    with pytest.raises(RunError, match="give --out a folder you can write in"):
        pipeline.score_run(scored_ae_run, out=out, overlays=False)
    with pytest.raises(
        RunError, match="give --out a folder you can write in .Python: overlay_dir="
    ):
        overlay_folder(out, given=True)  # predict --out DIR: not told to give --out DIR


def test_auto_stopped_in_a_candidates_epochs_gives_no_resume_hint(tiny_cookies, monkeypatch):
    # a scale walkthrough: Ctrl-C while auto's flow candidate trained said "interrupted after
    # epoch 1; continue with ... --resume", which then failed: auto saves nothing to resume
    import pytest
    import torch

    from anomaly.build import build_detector
    from anomaly.config import Config
    from anomaly.detectors.auto import AutoDetector
    from anomaly.train import Interrupted

    det = build_detector(Config.for_method("auto", data=str(tiny_cookies), device="cpu"))
    images = torch.zeros(2, 3, 8, 8)
    monkeypatch.setattr(AutoDetector, "_load", lambda self, data: images)
    monkeypatch.setattr(AutoDetector, "split", lambda self, x: (x, x, x, torch.zeros(2, 8, 8)))

    def stopped(self, *args, **kwargs):
        raise Interrupted(epoch=1)

    monkeypatch.setattr(AutoDetector, "_trial", stopped)
    with pytest.raises(KeyboardInterrupt) as stop:
        det.fit(det.dataset(str(tiny_cookies), "train"))  # (its images: _load's)
    assert getattr(stop.value, "epoch", None) is None  # the CLI: "train it again", no --resume


def test_a_colour_jpeg_is_checked_for_grey_pixels_drafted(tmp_path, monkeypatch):
    # a camera-sized set with three greyscale files among colour JPEGs decoded every colour
    # JPEG a second time at full size (5 MP), to see whether it was grey saved as colour
    import numpy as np
    from PIL import Image

    from anomaly.data import image_unlike

    rng = np.random.default_rng(0)
    grey = np.repeat(rng.integers(0, 255, (640, 800, 1), dtype=np.uint8), 3, axis=-1)
    Image.fromarray(grey).save(tmp_path / "grey.jpg")
    colour = grey.copy()
    colour[300:340, 400:440, 0] = 255  # a red mark of 40 px
    Image.fromarray(colour).save(tmp_path / "colour.jpg")
    sizes = []
    real = image_unlike.open_image

    def seen(path, draft=None):
        im = real(path, draft)
        sizes.append(im.size)
        return im

    monkeypatch.setattr(image_unlike, "open_image", seen)
    assert image_unlike.grey_pixels(tmp_path / "grey.jpg")
    assert not image_unlike.grey_pixels(tmp_path / "colour.jpg")
    assert all(max(s) <= 200 for s in sizes), sizes  # an eighth of it, not 800 x 640


def test_a_decoded_image_is_staged_in_a_fast_png(tmp_path, monkeypatch):
    # a camera-sized walkthrough: predict_images of decoded 5 MP frames spent 85 % of its time
    # compressing its temporary PNGs at zlib's default level (1.4 s a frame; level 1: 0.3 s)
    import numpy as np
    from PIL import Image

    from anomaly import uploads

    saved = []
    real = Image.Image.save

    def save(self, fp, format=None, **params):
        saved.append((format, params.get("compress_level")))
        return real(self, fp, format, **params)

    monkeypatch.setattr(Image.Image, "save", save)
    x = Image.fromarray(np.zeros((16, 16, 3), np.uint8))
    path = uploads._write(x, tmp_path / "frame", "frame")
    assert path.suffix == ".png" and saved == [("PNG", 1)]


def test_a_file_it_may_not_read_is_not_called_damaged(tmp_path, monkeypatch):
    # shared storage: an image or model.pt this process may not read (its mode) was called
    # not readable with "re-save it as PNG, or delete it" and "train the run again"
    import errno

    import pytest
    import torch

    from anomaly.data.image_kind import unreadable_fix
    from anomaly.safe_files import RunError, safe_torch_load

    denied = PermissionError(errno.EACCES, "Permission denied")
    words = unreadable_fix(denied, tmp_path / "000.png")
    assert "permissions" in words and "delete" not in words
    (tmp_path / "model.pt").write_bytes(b"x")

    def refused(*args, **kwargs):
        raise denied

    monkeypatch.setattr(torch, "load", refused)
    with pytest.raises(RunError, match="check its permissions") as err:
        safe_torch_load(tmp_path / "model.pt")
    assert "train the run again" not in str(err.value)


def test_a_checkpoint_of_a_later_format_is_not_called_foreign(scored_ae_run, tmp_path):
    # a run of a newer version (model.pt's format anomaly-checkpoint/2) was "not written by
    # anomaly ... load it into your own model"
    import pytest
    import torch
    from helpers import copy_run

    from anomaly.runs import RunDir, RunError

    run = copy_run(scored_ae_run, tmp_path / "newer")
    payload = torch.load(run / "model.pt", weights_only=True)
    torch.save({**payload, "format": "anomaly-checkpoint/2"}, run / "model.pt")
    with pytest.raises(RunError, match="written by another version of anomaly"):
        RunDir(run).checkpoint()


def test_a_full_disk_offers_resume_only_for_a_trainings_file(tmp_path):
    # shared storage: a full disk during score or export ended "(a training cut short: add
    # --resume ...)", which neither command has
    import errno

    import pytest

    from anomaly.safe_files import RunError, disk_full_named

    for name, resume in (("metrics.json", False), ("model.onnx", False), ("last.pt", True)):
        with pytest.raises(RunError) as err, disk_full_named(tmp_path / name):
            raise OSError(errno.ENOSPC, "No space left on device")
        assert ("--resume" in str(err.value)) == resume, name


def test_a_threshold_of_an_unknown_rule_points_at_another_version(scored_ae_run, tmp_path):
    # shared storage: a colleague's threshold.json of a newer version's rule was "does not hold
    # a threshold ...; set one with threshold --rule ...", an invitation to overwrite it
    import json

    import pytest
    from helpers import copy_run

    from anomaly.runs import RunDir, RunError

    run = copy_run(scored_ae_run, tmp_path / "theirs")
    saved = json.loads((run / "threshold.json").read_text())
    (run / "threshold.json").write_text(json.dumps({**saved, "rule": "per_kind"}))
    with pytest.raises(RunError, match="a rule of a newer version of anomaly") as err:
        RunDir(run).threshold()
    assert "set one with" not in str(err.value)  # (a review: still invited replacing it)


def test_score_stopped_while_drawing_says_to_score_again(
    scored_ae_run, tmp_path, monkeypatch, capsys
):
    # camera-sized data: Ctrl-C while score drew its overlays said only "interrupted", with 45
    # of 97 overlays written and nothing said of the rest
    from helpers import copy_run

    from anomaly import overlays
    from anomaly.cli import main

    run = copy_run(scored_ae_run, tmp_path / "run")

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(overlays, "save_overlays", stopped)
    assert main(["score", "--run", str(run)]) == 130
    assert "interrupted; score it again to finish" in capsys.readouterr().err


def test_a_threshold_with_fields_of_another_version_is_said(scored_ae_run, tmp_path):
    # shared storage: threshold.json with fields a newer version might write ("score_transform")
    # was used without a word, while config.json's unknown fields are refused
    import json

    import pytest
    from helpers import copy_run

    from anomaly.runs import RunDir

    run = copy_run(scored_ae_run, tmp_path / "theirs")
    saved = json.loads((run / "threshold.json").read_text())
    assert RunDir(run).threshold().value == saved["value"]  # its own fields: no word
    (run / "threshold.json").write_text(json.dumps({**saved, "score_transform": "log"}))
    with pytest.warns(UserWarning, match="fields this version of anomaly does not know"):
        RunDir(run).threshold()


def test_maps_on_a_tiny_scale_keep_their_pixel_threshold():
    # a detector of one's own whose maps are about 1e-8: the overlays painted nothing and the
    # colour bar read a pixel threshold of 1e-6, while the run's map_range held 1e-8 to 6e-8
    import numpy as np

    from anomaly.overlays import EvidenceScale

    scale = EvidenceScale(1e-8, 6.46e-8)
    assert scale.pixel_threshold == 6.46e-8
    assert scale.evidence(np.float32([6.46e-8]))[0] == np.float32(1.0)
    flat = EvidenceScale(0.0, 0.0)  # all good maps zero: still a finite scale
    assert flat.pixel_threshold > 0 and np.isfinite(flat.evidence(np.float32([1e3]))).all()


def test_a_detector_of_ones_own_is_checked_where_it_would_break_a_run_later(tiny_cookies, tmp_path):
    # a researcher's own detector: a state_dict of numpy arrays was saved, and every load then
    # refused model.pt as "Python objects ... could run code"; scores [B, 1] or maps
    # [B, 1, H, W] made a "trained" run that score and predict failed on with tracebacks
    import numpy as np
    import pytest
    import torch
    from helpers import tiny_config

    from anomaly.detectors import Predictions
    from anomaly.pipeline import train_run
    from anomaly.run_checkpoints import plain_state
    from anomaly.runs import RunError

    assert plain_state({"w": torch.ones(2), "n": [1, 2.0, "a", None]}, "x")  # plain: kept
    with pytest.raises(RunError, match=r"state_dict\(\)\['mean'\] is a numpy.ndarray"):
        plain_state({"mean": np.zeros(3)}, "zscore")
    for scores, maps, wrong in (
        (np.zeros((2, 1)), np.zeros((2, 8, 8)), "scores has shape"),
        (np.zeros(2), np.zeros((2, 1, 8, 8)), "maps has shape"),
    ):
        with pytest.raises(ValueError, match=wrong):
            Predictions(["a", "b"], [0, 1], ["good", "crack"], scores, maps)
    # a built-in method's state passes (every method is trained so in the other tests too)
    train_run(tiny_config(tiny_cookies, method="meandiff"), tmp_path / "md", progress=False)


def test_score_out_folders_follow_their_run_when_moved_copied_or_misplaced(
    tiny_cookies, tmp_path, monkeypatch
):
    # a review of this session's change: with the run recorded absolute, a project moved
    # as a whole lost its `score --out` folders' run; a copied project's folders named the
    # original's run; an --out put in another run's scored/ was taken for that run's; and the
    # notebooks' table printed an --out folder's metrics of an earlier model
    import shutil
    from pathlib import Path

    import pytest
    from helpers import tiny_config

    from anomaly import notebook as nb
    from anomaly.explorer.runs import threshold_home
    from anomaly.pipeline import score_run, train_run
    from anomaly.runs import RunError

    proj = tmp_path / "proj"
    proj.mkdir()
    monkeypatch.chdir(proj)
    train_run(tiny_config(tiny_cookies, method="meandiff"), "runs/a", progress=False)
    train_run(tiny_config(tiny_cookies, method="meandiff", size=32), "runs/b", progress=False)
    score_run("runs/a", out="results/a", overlays=False)
    score_run("runs/b", out="runs/a/scored/b", overlays=False)  # b's scores in a's scored/
    assert threshold_home(proj / "runs/a/scored/b") == proj / "runs/b"
    moved = shutil.move(proj, tmp_path / "moved")
    monkeypatch.chdir(tmp_path)
    assert threshold_home(tmp_path / "moved/results/a") == tmp_path / "moved/runs/a"
    shutil.copytree(tmp_path / "moved", tmp_path / "copy")
    assert threshold_home(tmp_path / "copy/results/a") == tmp_path / "copy/runs/a"
    shutil.copy(tmp_path / "copy/runs/b/model.pt", tmp_path / "copy/runs/a/model.pt")
    with pytest.raises(RunError, match="metrics of an earlier model of .*copy/runs/a"):
        nb.metrics_table({"a": tmp_path / "copy/results/a"})
    assert "0." in nb.metrics_table({"a": Path(moved) / "results/a"})  # the original: its model


def test_a_score_that_fails_leaves_no_empty_folders(scored_ae_run, tmp_path):
    # a review: the write check made RUN/scored/<name>/ and whole --out trees before the data
    # was read, and a score refused for a missing data folder left them behind
    import pytest
    from helpers import copy_run

    from anomaly.pipeline import score_run

    run = copy_run(scored_ae_run, tmp_path / "run")
    for out in (None, tmp_path / "x" / "y" / "z"):
        with pytest.raises((ValueError, OSError)):
            score_run(run, data=str(tmp_path / "nodata"), out=out, overlays=False)
    assert not (run / "scored").exists() and not (tmp_path / "x").exists()


def test_the_report_of_a_scored_folder_names_its_runs_model(scored_ae_run, tiny_cookies, tmp_path):
    # a review: the report of a `score --data` folder had no model.pt SHA-256 and no versions
    # (it looked in the folder of scores, not in the run that made them)
    import json

    from helpers import copy_run

    import anomaly
    from anomaly.pipeline import score_run
    from anomaly.threshold_file import model_sha256

    run = copy_run(scored_ae_run, tmp_path / "run")
    score_run(run, data=str(tiny_cookies), out=tmp_path / "elsewhere", overlays=False)
    ex = anomaly.ThresholdExplorer([str(tmp_path / "elsewhere")])
    text = ex.report_html()
    ex.close()
    torch_version = json.loads((run / "versions.json").read_text())["torch"]
    assert model_sha256(run / "model.pt") in text and f"torch {torch_version}" in text


def test_the_deployed_reader_says_permissions_and_the_version_of_a_newer_file(
    tiny_cookies, tmp_path, monkeypatch
):
    # a review: predict --onnx and the copied reader called an image they may not read
    # "damaged: copy it again", and a model.onnx they may not read "copy it again"; a newer
    # file's refusal did not name the version to copy the reader from
    import errno

    import onnx as onnx_lib
    import pytest
    from helpers import patchknn_export

    from anomaly import onnx_predict
    from anomaly.onnx_predict import ExportError, OnnxDetector

    path = patchknn_export(tiny_cookies, tmp_path / "run", size=32)
    detector = OnnxDetector(path)
    image = min((tiny_cookies / "test" / "good").glob("*.png"))
    real_open = onnx_predict.Path.read_bytes

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(image))

    from PIL import Image

    with monkeypatch.context() as m:
        m.setattr(Image, "open", denied)
        with pytest.raises(ExportError, match="check its permissions") as err:
            detector.read(image)
    assert "damaged" not in str(err.value)
    with monkeypatch.context() as m:
        m.setattr(onnx_predict.Path, "read_bytes", denied)
        with pytest.raises(ExportError, match="cannot be read .*check its permissions"):
            OnnxDetector(path)
    assert onnx_predict.Path.read_bytes is real_open
    model = onnx_lib.load(str(path))
    for entry in model.metadata_props:
        if entry.key == "format":
            entry.value = "anomaly-onnx/2"
    onnx_lib.save(model, str(path))
    with pytest.raises(ExportError, match=r"exported_by: \{.*\"anomaly\""):
        OnnxDetector(path)
    with pytest.raises(ExportError, match="export it first"):
        OnnxDetector(tmp_path)  # a folder without model.onnx


def test_a_model_of_nan_maps_is_refused_at_train(tiny_cookies, tmp_path):
    # a detector of one's own whose maps were NaN trained without a word ("trained"), and
    # predict then said val_scores.json's map_range was damaged: train it again
    import pytest
    from helpers import tiny_config

    from anomaly.detectors import REGISTRY, register
    from anomaly.detectors.meandiff import MeanDiff
    from anomaly.pipeline import train_run
    from anomaly.runs import RunError

    @register("stub-nan-maps")
    class NanMaps(MeanDiff):
        def predict_batch(self, images):
            scores, maps = super().predict_batch(images)
            return scores, maps * float("nan")

    try:
        with pytest.raises(RunError, match="NaN or infinite scores or maps"):
            train_run(
                tiny_config(tiny_cookies, method="stub-nan-maps"), tmp_path / "r", progress=False
            )
    finally:
        del REGISTRY["stub-nan-maps"]


def test_metrics_refuse_labels_other_than_0_and_1():
    # a researcher's own loop: labels coded 1/2 made confusion count every image defective
    # (tp 4, fp 0) without a word, while image_auroc said "all 6 are defective"; NaN labels read
    # as good; labels and scores of two lengths failed with numpy's "boolean index" words
    import numpy as np
    import pytest

    from anomaly.metrics import confusion, f1_max, image_auroc

    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    for labels in ([1, 1, 1, 2, 2, 2], [0, 0, 0, 1, 1, np.nan], [-1, -1, -1, 1, 1, 1]):
        for metric in (image_auroc, f1_max):
            with pytest.raises(ValueError, match="labels are 0 .good. and 1 .defective."):
                metric(labels, scores)
        with pytest.raises(ValueError, match="labels are 0"):
            confusion(labels, scores, 0.5)
    with pytest.raises(ValueError, match="5 labels for 6 scores"):
        image_auroc([0, 0, 1, 1, 1], scores)
    assert confusion([False, False, False, True, True, True], scores, 0.5)["tp"] == 3
    assert image_auroc([0, 0, 0, 1, 1, 1], scores) == 1.0


def test_a_detector_exported_without_a_run_is_not_called_an_old_export(tiny_cookies, tmp_path):
    # the peer benchmark exports a fitted detector (export_detector, no run folder): every file
    # it wrote warned that it searched "as files exported before 2026-12-04 did"
    import warnings

    from helpers import tiny_config

    from anomaly.build import build_detector
    from anomaly.export import OnnxDetector, export_detector

    config = tiny_config(tiny_cookies, method="patchknn", channels=3, search_precision="int8")
    config = config.replace(runtime="onnxruntime")
    detector = build_detector(config)
    detector.fit(detector.dataset(str(tiny_cookies), "train"))
    assert detector.int8
    path = export_detector(detector, tmp_path / "m.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        OnnxDetector(path)


def test_scores_csv_holds_no_cell_a_spreadsheet_would_run(tmp_path):
    # outputs fed to other tools: an image named "=cmd|' -C calc'!A0.png" (or a defect kind
    # "=2+3") went into scores.csv as it is, a live formula once opened in a spreadsheet
    import csv

    import numpy as np

    from anomaly.detectors import Predictions
    from anomaly.runs import RunDir

    names = ["=cmd|' -C calc'!A0", "+1+2", "-3", "@SUM(1)", "plain"]
    paths = [f"/data/test/good/{n}.png" for n in names]
    pred = Predictions(paths, [0] * 5, ["=2+3"] * 5, np.arange(5.0), np.zeros((5, 4, 4)))
    run = RunDir(tmp_path)
    run.save_scores(pred)
    with open(run.file(run.SCORES), newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["file"] for r in rows) == sorted(["'" + n for n in names[:4]] + ["plain"])
    assert all(r["defect"] == "'=2+3" for r in rows) and rows[0]["path"] == paths[0]


def test_the_report_never_shows_a_score_below_the_threshold_as_rejected(scored_ae_run, tmp_path):
    # outputs fed to other tools: with a threshold between a score and its 4-digit rounding,
    # the report read "Threshold 9.41507 ... REJECT: false reject ... score 9.415"
    import re

    from helpers import copy_run

    import anomaly
    from anomaly.metrics import threshold_manual
    from anomaly.runs import RunDir

    run = copy_run(scored_ae_run, tmp_path / "run")
    ex = anomaly.ThresholdExplorer(run)
    scores = sorted(float(s) for s in ex.run.pred.scores)
    s = next(x for x in scores if float(f"{x:.4g}") < x)  # a score whose rounding lies below
    t = (float(f"{s:.4g}") + s) / 2  # the threshold between them: the image is rejected
    ex.close()
    RunDir(run).save_threshold(threshold_manual(t))
    ex = anomaly.ThresholdExplorer(run)
    text = ex.report_html()
    ex.close()
    shown = float(re.search(r'class="threshold">([^<]+)<', text)[1])
    assert shown == t
    tiles = re.findall(r"<b>(PASS|REJECT)[^<]*</b><br>[^<]*score ([0-9.e+-]+)", text)
    assert any(word == "REJECT" for word, _ in tiles)  # the false reject is among them
    for word, score in tiles:
        assert (float(score) >= shown) == (word == "REJECT"), (word, score, shown)


def test_review_numpy_numbers_symlinked_folders_and_snapshot_tiles(scored_ae_run, tmp_path):
    # a second review: plain_state let np.float64 (a float subclass) through, which no load
    # reads back; the notebooks' table refused a folder (reached through a link) whose run is
    # found where it was scored, blaming a run at the same relative place; the snapshot's tiles
    # printed scores in 3 digits beside the threshold in full
    import os

    import numpy as np
    import pytest
    import torch
    from helpers import copy_run

    from anomaly import notebook as nb
    from anomaly.detectors import Predictions
    from anomaly.explorer import ThresholdExplorer
    from anomaly.pipeline import score_run
    from anomaly.run_checkpoints import plain_state
    from anomaly.runs import RunError

    with pytest.raises(RunError, match="numpy.float64"):
        plain_state({"gain": np.float64(1.5)}, "mine")
    run = copy_run(scored_ae_run, tmp_path / "p" / "runs" / "ae")
    score_run(run, out=tmp_path / "p" / "out", overlays=False)
    other = copy_run(scored_ae_run, tmp_path / "q" / "runs" / "ae")
    payload = torch.load(other / "model.pt", weights_only=True)  # q's run: another model now
    torch.save({**payload, "complete": not payload["complete"]}, other / "model.pt")
    os.symlink(tmp_path / "p" / "out", tmp_path / "q" / "latest")
    assert "ae" in nb.metrics_table({"ae": tmp_path / "q" / "latest"})
    scores = np.array([0.2, 0.4, 0.6, 0.8, 1.0, 1.2451, 1.3, 1.5, 1.7, 2.0])
    maps = np.random.default_rng(0).random((10, 16, 16)).astype(np.float32)
    pred = Predictions([f"/x/{i}.png" for i in range(10)], [0] * 5 + [1] * 5,
                       ["good"] * 5 + ["crack"] * 5, scores, maps)  # fmt: skip
    ex = ThresholdExplorer(pred)
    ex.slider.value = 1.2455
    titles = [a.get_title() for a in ex.snapshot().axes if a.get_title()]
    ex.close()
    assert any("1.2451" in t for t in titles) and not any(" 1.25" in t for t in titles)


def test_pixel_metrics_too_large_for_memory_suggest_the_maps_own_size():
    # 8,300 crops of 64 px: the pixel metrics at the default 256 px needed 24 GiB and were
    # refused with "free memory, or score the test images in smaller sets", while their own
    # size (--pixel-size 64, or full) needed a sixteenth of it
    import pytest

    from anomaly.pixel_eval import BYTES_PER_PIXEL, check_memory

    available = 8300 * 100 * 100 * BYTES_PER_PIXEL  # room for 100 x 100, not 256 x 256
    with pytest.raises(ValueError, match="give --pixel-size 64, the maps' own size"):
        check_memory(8300, (256, 256), available, maps=64)
    with pytest.raises(ValueError, match="free memory"):
        check_memory(8300, (256, 256), available, maps=224)  # no smaller size of theirs fits
    check_memory(100, (256, 256), available, maps=64)  # fits: no word


def test_the_metrics_table_says_when_rows_have_pixel_metrics_of_two_sizes(scored_ae_run, tmp_path):
    # many small crops: one run scored at the default 256 px and again at --pixel-size full
    # printed two plain rows, whose pixel metrics (AUPRO) do not compare
    from helpers import copy_run

    from anomaly import notebook as nb
    from anomaly.pipeline import score_run

    a = copy_run(scored_ae_run, tmp_path / "a")
    b = copy_run(scored_ae_run, tmp_path / "b")
    score_run(b, overlays=False, pixel_size="full")
    assert "note:" not in nb.metrics_table({"a": a, "a again": a})
    assert "pixel metrics at different sizes" in nb.metrics_table({"a": a, "b": b})


def test_the_overlay_example_scripts_help_is_its_whole_first_paragraph():
    # README read on a first day: `scripts/overlay_example.py --help` stopped mid-sentence
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "scripts" / "overlay_example.py"
    argv = [sys.executable, str(script), "--help"]
    done = subprocess.run(argv, check=False, capture_output=True, text=True)
    assert done.returncode == 0 and "saved as a JPEG" in " ".join(done.stdout.split())


def test_a_defect_among_the_held_out_good_images_is_named(tmp_path):
    # a contaminated train/good: one defect among the 22 held-out images set train's threshold
    # at its own score (caught 33 of 77 defects, 73 with a clean folder) without a word, while
    # `threshold --good-images` names such images in a folder
    import json
    import warnings

    import numpy as np
    import pytest
    from PIL import Image

    from anomaly.calibration import good_scores
    from anomaly.config import Config
    from anomaly.pipeline import train_run
    from anomaly.runs import RunDir

    rng = np.random.default_rng(0)
    for where, n in (("train/good", 24), ("test/good", 3), ("test/crack", 3)):
        (tmp_path / "d" / where).mkdir(parents=True)
        for i in range(n):
            a = (100 + rng.normal(0, 8, (32, 32, 3))).clip(0, 255).astype(np.uint8)
            if where != "train/good" and "crack" in where or (where == "train/good" and i == 7):
                a[8:24, 8:24] = 255  # a bright defect; in train/good: one slipped in
            Image.fromarray(a).save(tmp_path / "d" / where / f"{i:03d}.png")
    for seed in range(20):  # a seed whose split holds that defect out
        config = Config.for_method("meandiff", data=str(tmp_path / "d"), size=32, seed=seed)
        config = config.replace(val_fraction=0.5, device="cpu")
        out = tmp_path / f"run{seed}"
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            train_run(config, out, progress=False)
        if any(p.endswith("007.png") for p in json.loads((out / "split.json").read_text())["val"]):
            break
    words = [str(w.message) for w in said if "held-out good images" in str(w.message)]
    assert words and "007.png" in words[0] and "train again" in words[0]
    with pytest.warns(UserWarning, match="held-out good images: .*007.png"):
        good_scores(RunDir(out), None)  # threshold --rule on them: said again


def test_score_notes_good_test_images_far_above_the_other_good_ones():
    # a defect filed under test/good (10.99 against good ones up to 7.07) was counted as a
    # false reject by score without a hint, though it distorts every metric
    import numpy as np

    from anomaly.decision import score_summary
    from anomaly.detectors import Predictions
    from anomaly.metrics import evaluate

    rng = np.random.default_rng(0)
    good = 7 + rng.normal(0, 0.1, 20)
    labels, scores = [0] * 21 + [1] * 5, [*good, 10.99, *(11 + rng.random(5))]
    pred = Predictions([f"/t/{i}.png" for i in range(26)], labels, ["good"] * 21 + ["crack"] * 5,
                       scores, np.zeros((26, 4, 4)))  # fmt: skip
    said = score_summary(pred.labels, pred.scores, evaluate(pred), 9.0, pred.defects)
    assert "note: 1 of the 21 good test images score far above" in said and "10.99" in said
    clean = score_summary(pred.labels[:20], pred.scores[:20], {}, 9.0)
    assert "note:" not in clean


def test_a_damaged_field_whose_value_says_newer_keeps_its_fix(scored_ae_run, tmp_path):
    # the last read: runs.threshold told a newer version's rule by the word "newer" in the
    # error, so a damaged param whose value held that word lost the "set one with" fix
    import json

    import pytest
    from helpers import copy_run

    from anomaly.runs import RunDir, RunError

    run = copy_run(scored_ae_run, tmp_path / "run")
    saved = json.loads((run / "threshold.json").read_text())
    damaged = {**saved, "rule": "conformal", "params": {"alpha": "newer"}}
    (run / "threshold.json").write_text(json.dumps(damaged))
    with pytest.raises(RunError, match="set one with"):
        RunDir(run).threshold()
