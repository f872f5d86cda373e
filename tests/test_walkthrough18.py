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
    monkeypatch.setattr(onnx_predict, "_SAID_NO_CHECK", [])
    stub = SimpleNamespace(trained_images={"colour": [True]}, channels=3, size=32)
    for _ in range(2):
        assert onnx_predict.OnnxDetector.warn_unlike(stub, ["a.png"]) == []
    err = capsys.readouterr().err
    assert err.count("note: without the anomaly package") == 1
