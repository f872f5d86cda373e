"""What session 18's walkthroughs ran into, each with the fix: predict on a run shared
read-only, two predict calls writing overlays into one folder at once, rows a script can read
when some images fail, and file names with control characters."""

from __future__ import annotations

import errno
import shutil

import numpy as np
from helpers import copy_run
from PIL import Image

from anomaly import safe_files
from anomaly.cli import main
from anomaly.metrics import Threshold
from anomaly.overlays import png_bytes
from anomaly.predict import scored_result


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _image(tiny_cookies, kind="good", i=0):
    return tiny_cookies / "test" / kind / f"{i:03d}.png"


def test_predict_on_a_run_it_may_not_write_to_says_out_and_no_overlays(
    scored_ae_run, tiny_cookies, tmp_path, capsys, monkeypatch
):
    run = copy_run(scored_ae_run, tmp_path / "run")
    shutil.rmtree(run / "predict", ignore_errors=True)  # an earlier test's predict, if any
    (run / "predict").mkdir()
    real = safe_files.tempfile.mkstemp

    def refused(*args, dir=None, **kwargs):  # a folder shared read-only (root may write anyway)
        if dir is not None and str(dir).startswith(str(run)):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(safe_files.tempfile, "mkstemp", refused)
    image = _image(tiny_cookies)
    code, out, err = _cli(capsys, "predict", "--run", run, image)
    assert code == 2 and out == "" and "Traceback" not in err
    assert f"cannot write in {run / 'predict'} (Permission denied)" in err
    assert "--out DIR" in err and "--no-overlays" in err
    code, out, err = _cli(capsys, "predict", "--run", run, image, "--out", tmp_path / "mine")
    assert code == 0 and str(tmp_path / "mine" / "000_overlay.png") in out
    assert (tmp_path / "mine" / "000_overlay.png").is_file()
    code, out, err = _cli(capsys, "predict", "--run", run, image, "--no-overlays")
    assert code == 0 and out.rstrip("\n").split("\t")[3] == "-" and "no overlays written" in err
    assert list((run / "predict").iterdir()) == []
    code, _, err = _cli(capsys, "predict", "--run", run, image, "--no-overlays", "--out", tmp_path)
    assert code == 2 and "give one" in err


def test_two_predict_calls_at_once_never_replace_each_others_overlays(tmp_path):
    """Each call listed the folder once when it began: a second call started before the first
    wrote took the same names and replaced its overlays (a REJECT pointing at a PASS's picture)."""
    threshold = Threshold(1.0, "manual", {})
    first, second = np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8)
    first, second = png_bytes(first), png_bytes(second)
    a = scored_result(tmp_path / "camA" / "002.png", 0.5, first, tmp_path, set(), threshold)
    b = scored_result(tmp_path / "camB" / "002.png", 2.0, second, tmp_path, set(), threshold)
    assert a["overlay"] != b["overlay"]
    assert np.asarray(Image.open(a["overlay"])).max() == 0  # the first call's picture stays
    assert np.asarray(Image.open(b["overlay"])).min() == 255


def test_predict_prints_a_row_per_input_and_counts_the_failures(
    scored_ae_run, tiny_cookies, tmp_path, capsys
):
    run = copy_run(scored_ae_run, tmp_path / "run")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    good = _image(tiny_cookies)
    code, out, err = _cli(capsys, "predict", "--run", run, empty, good)
    rows = [line.split("\t") for line in out.splitlines()]
    assert code == 2 and [r[0] for r in rows] == [str(empty), str(good)]
    assert rows[0][1:] == ["-", "ERROR", "-"] and rows[1][2] in ("PASS", "REJECT")
    assert "1 of the 2 images were not scored" in err and "threshold " in err
    assert f"{empty} is empty (0 bytes)" in err


def test_a_tab_or_new_line_in_a_file_name_breaks_no_row(
    scored_ae_run, tiny_cookies, tmp_path, capsys
):
    run = copy_run(scored_ae_run, tmp_path / "run")
    odd = tmp_path / "line\tone\nx.png"
    shutil.copy(_image(tiny_cookies), odd)
    code, out, _ = _cli(capsys, "predict", "--run", run, odd)
    (row,) = out.splitlines()
    fields = row.split("\t")
    assert code == 0 and len(fields) == 4 and fields[0].endswith("line\\tone\\nx.png")
    assert fields[3].endswith("/line_one_x_overlay.png") and "\n" not in fields[3]


def test_the_standalone_onnx_reader_names_an_empty_file(tmp_path):
    import pytest

    from anomaly.onnx_predict import ExportError, preprocess

    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ExportError, match=r"empty\.png is empty \(0 bytes\)"):
        preprocess(empty, 32, 3)


def test_the_copied_onnx_reader_says_once_that_it_names_no_unlike_image(monkeypatch, capsys):
    """Copied without the package, it skipped the unlike-image warnings without a word."""
    import sys
    from types import SimpleNamespace

    from anomaly import onnx_predict

    monkeypatch.setitem(sys.modules, "anomaly.data.image_kind", None)  # import fails
    monkeypatch.setitem(sys.modules, "anomaly.data.image_unlike", None)
    monkeypatch.setattr(onnx_predict, "_SAID_NO_CHECK", [])
    stub = SimpleNamespace(trained_images={"colour": [True]}, channels=3, size=32)
    for _ in range(2):
        assert onnx_predict.OnnxDetector.warn_unlike(stub, ["a.png"]) == []
    err = capsys.readouterr().err
    assert err.count("note: without the anomaly package") == 1


# --- a run folder from someone else (session 18's audit) ------------------------------------
def test_a_new_model_empties_only_the_folders_score_wrote_in_scored(
    scored_ae_run, tiny_cookies, tmp_path, capsys
):
    run = copy_run(scored_ae_run, tmp_path / "run")
    other = tmp_path / "other"
    shutil.copytree(tiny_cookies, other)
    assert main(["score", "--run", str(run), "--data", str(other), "--no-overlays"]) == 0
    mine = run / "scored" / "my_notes"
    mine.mkdir()
    (mine / "scores.csv").write_text("my own table")
    assert main(["train", "--out", str(run), "--resume", "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert (mine / "scores.csv").read_text() == "my own table"
    assert "nothing of scored/my_notes/ (score did not write it)" in out
    assert not (run / "scored" / "other").exists()  # score's own: gone


def test_a_pipe_or_a_huge_file_as_a_record_is_refused_at_once(tmp_path):
    import os
    import signal

    import pytest

    from anomaly.run_lock import check_not_in_use
    from anomaly.safe_files import RunError, read_record

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    signal.alarm(10)  # a read that waits for a writer would hang the test
    try:
        with pytest.raises(RunError, match="not a regular file"):
            read_record(fifo)
        check_not_in_use(tmp_path, "fifo", "score")  # a lock that reads as none: not in use
    finally:
        signal.alarm(0)
    huge = tmp_path / "huge"
    with open(huge, "wb") as f:
        f.truncate(300 * 2**20)  # sparse: no disk used
    (tmp_path / ".lock").symlink_to(huge)
    with pytest.raises(RunError, match="far more than any record"):
        read_record(tmp_path / ".lock")
    check_not_in_use(tmp_path, ".lock", "score")


def test_a_lock_of_someone_elses_is_read_with_care(tmp_path):
    import json
    import os

    import pytest

    from anomaly.run_lock import check_not_in_use
    from anomaly.safe_files import RunError

    lock = tmp_path / ".lock"
    lock.write_text(json.dumps({"pid": str(os.getppid()), "command": "train"}))
    check_not_in_use(tmp_path, ".lock", "score")  # "1": not a lock this package wrote
    lock.write_text(json.dumps({"pid": os.getppid(), "command": "\x1b[2Jevil"}))
    with pytest.raises(RunError) as err:
        check_not_in_use(tmp_path, ".lock", "score")
    assert "\x1b" not in str(err.value) and "?[2Jevil" in str(err.value)


def test_maps_beyond_float16_are_saved_finite(tmp_path):
    from anomaly.detectors.base import Predictions

    maps = np.full((2, 4, 4), 1e6, np.float32)
    pred = Predictions(["a", "b"], np.array([0, 1]), ["good", "x"], np.array([1e6, 2e6]), maps)
    pred.save(tmp_path / "p.npz")
    back = Predictions.load(tmp_path / "p.npz")
    assert np.isfinite(back.maps).all() and back.maps.max() == 1e6
    small = Predictions(["a"], np.array([0]), ["good"], np.array([1.0]), maps[:1] / 1e6)
    small.save(tmp_path / "s.npz")
    assert np.load(tmp_path / "s.npz")["maps"].dtype == np.float16  # as before when in range


def test_predictions_of_the_wrong_shapes_or_labels_are_refused_by_name(scored_ae_run, tmp_path):
    import pytest

    from anomaly.runs import RunDir, RunError

    run = copy_run(scored_ae_run, tmp_path / "run")
    z = dict(np.load(run / "predictions.npz", allow_pickle=False))
    for key, value, said in (
        ("scores", z["scores"][:, None], "wrong shapes"),
        ("labels", np.full(len(z["labels"]), np.nan), "labels are not one 0 or 1"),
    ):
        np.savez(run / "predictions.npz", **{**z, key: value})
        with pytest.raises(RunError, match=said) as err:
            RunDir(run).predictions()
        assert "predictions.npz" in str(err.value)


def _edit_json(path, **changes):
    import json

    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


def test_held_out_scores_and_map_range_of_the_wrong_kind_are_refused_by_name(
    scored_ae_run, tmp_path
):
    import json

    import pytest

    from anomaly.runs import RunDir, RunError

    run = copy_run(scored_ae_run, tmp_path / "run")
    vs = run / "val_scores.json"
    n = len(json.loads(vs.read_text())["scores"])
    good = vs.read_text()
    for changes, said in (
        ({"paths": [[1]] * n}, "'paths' as text"),
        ({"paths": [], "scores": []}, "holds no held-out scores"),
        ({"map_range": "12"}, "map_range is not two finite numbers"),
    ):
        vs.write_text(good)
        _edit_json(vs, **changes)
        with pytest.raises(RunError, match=said) as err:
            if "map_range" in changes:
                RunDir(run).map_range()
            else:
                RunDir(run).val_scores()
        assert str(vs) in str(err.value)


def test_a_split_whose_digests_do_not_match_its_images_is_damaged(scored_ae_run, tmp_path):
    import json

    import pytest

    from anomaly.runs import RunDir, RunError

    run = copy_run(scored_ae_run, tmp_path / "run")
    split = json.loads((run / "split.json").read_text())
    _edit_json(run / "split.json", train=[*split["train"], "/etc/passwd"])
    with pytest.raises(RunError, match="SHA-256 digests for its"):
        RunDir(run).split()


def test_a_config_that_is_not_utf8_is_named(scored_ae_run, tiny_cookies, tmp_path, capsys):
    run = copy_run(scored_ae_run, tmp_path / "run")
    config = run / "config.json"
    config.write_bytes(config.read_bytes().replace(b'"data"', b'"d\xffata"'))
    code, _, err = _cli(capsys, "predict", "--run", run, _image(tiny_cookies))
    assert code == 2 and f"{config} is not valid JSON" in err


def test_more_decoding_processes_than_cores_are_capped(monkeypatch):
    import warnings

    from anomaly.config import Config
    from anomaly.pipeline import decoding_loader

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        loader = decoding_loader([1, 2, 3], Config(workers=64, batch_size=1))
    assert loader.num_workers == 2 and "2 are started" in str(said[0].message)


def test_a_partly_transparent_image_is_named_unless_the_training_images_were(tmp_path, capsys):
    from anomaly.data.image_kind import summarize
    from anomaly.data.image_unlike import warn_unlike

    rgb = np.full((32, 32, 3), 120, np.uint8)
    opaque, clear = tmp_path / "opaque.png", tmp_path / "clear.png"
    Image.fromarray(rgb).save(opaque)
    rgba = np.dstack([rgb, np.full((32, 32), 255, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "alpha_opaque.png")  # an alpha channel, all opaque
    rgba[:4, :4, 3] = 0
    Image.fromarray(rgba).save(clear)
    palette = Image.fromarray(rgb).convert("P")
    palette.save(tmp_path / "palette.png", transparency=palette.getpixel((0, 0)))
    trained = summarize([opaque])
    assert trained["transparent"] == [False]
    files = [clear, tmp_path / "alpha_opaque.png", tmp_path / "palette.png"]
    said = warn_unlike(files, trained, 3, 32)
    assert [line.split(": ")[1] for line in said] == [str(clear), str(tmp_path / "palette.png")]
    assert all("partly transparent" in line for line in said)
    assert warn_unlike([clear], summarize([clear]), 3, 32) == []  # trained on such images
    capsys.readouterr()


def test_copies_of_the_runs_test_images_as_good_images_are_named(scored_ae_run, tmp_path, capsys):
    """Only the test images' own paths were recognised; copies of them passed unnamed."""
    import csv

    run = copy_run(scored_ae_run, tmp_path / "run")
    with open(run / "scores.csv") as f:
        tested = [r["path"] for r in csv.DictReader(f) if r["label"] == "0"]
    good = tmp_path / "production-good"
    good.mkdir()
    for i, path in enumerate(tested):
        shutil.copy(path, good / f"part_{i:03d}.png")  # renamed copies
    code, _, err = _cli(
        capsys, "threshold", "--run", run, "--rule", "normal-quantile", "--good-images", good
    )
    assert code == 0 and f"{len(tested)} of its {len(tested)} images are test images" in err


def test_a_file_name_that_is_not_utf8_is_printed(scored_ae_run, tiny_cookies, tmp_path, capsys):
    import os

    run = copy_run(scored_ae_run, tmp_path / "run")
    odd = os.path.join(os.fsencode(tmp_path), b"caf\xe9.png")  # Latin-1, as old cameras write
    shutil.copy(_image(tiny_cookies), odd)
    code, out, _ = _cli(capsys, "predict", "--run", run, os.fsdecode(odd))
    assert code == 0 and out.split("\t")[0].endswith("caf\\udce9.png")


# --- reproducing a run (session 18's audit) --------------------------------------------------
def test_a_run_resumed_on_moved_data_can_be_resumed_again(tiny_cookies, tmp_path, capsys):
    """--resume --data NEW saved config.json with NEW but kept split.json's old paths: the
    next --resume said the images had changed."""
    import json

    from helpers import tiny_config

    from anomaly.pipeline import train_run

    data = tmp_path / "data"
    shutil.copytree(tiny_cookies, data)
    run = tmp_path / "run"
    train_run(tiny_config(data, "ae"), run, progress=False)
    moved = tmp_path / "moved"
    data.rename(moved)
    assert (
        main(["train", "--out", str(run), "--resume", "--epochs", "3", "--data", str(moved)]) == 0
    )
    split = json.loads((run / "split.json").read_text())
    assert all(p.startswith(str(moved)) for p in split["train"] + split["val"])
    assert main(["train", "--out", str(run), "--resume", "--epochs", "4"]) == 0
    capsys.readouterr()


def test_a_plain_data_set_moved_keeps_its_split_when_scored_there(tmp_path, capsys):
    """On a moved plain data set score tested trained images and skipped new ones (the split
    applied only at the folder the run was trained on)."""
    import csv

    from anomaly.config import Config
    from anomaly.pipeline import score_run, train_run

    rng = np.random.default_rng(0)
    data = tmp_path / "plain"
    for kind, n in (("good", 20), ("stain", 4)):
        (data / kind).mkdir(parents=True)
        for i in range(n):
            a = rng.integers(90, 110, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(a).save(data / kind / f"{i:03d}.png")
    run = tmp_path / "run"
    train_run(Config.for_method("meandiff", data=str(data), size=32), run, progress=False)
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    for i in range(2):  # new good photos there, named to sort first
        a = rng.integers(90, 110, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(a).save(moved / "good" / f"0{i}.png")
    score_run(run, data=str(moved), out=run, overlays=False)
    with open(run / "scores.csv") as f:
        tested = sorted(r["file"] for r in csv.DictReader(f) if r["label"] == "0")
    split = (run / "split.json").read_text()
    assert not any(f"good/{name}.png" in split for name in tested)  # none trained or held out
    assert {"00", "01"} <= set(tested) and len(tested) == 6  # the 4 held back, and the new two
    capsys.readouterr()


def test_versions_json_records_what_changes_results(scored_ae_run):
    import json

    record = json.loads((scored_ae_run / "versions.json").read_text())
    for key in ("processor", "torch_threads", "onnxruntime", "pillow", "scipy"):
        assert key in record
    assert record["pillow"] and isinstance(record["torch_threads"], int)
