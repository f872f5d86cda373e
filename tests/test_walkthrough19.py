"""Session 19: a saved threshold's guarantee is claimed only for the model it was chosen for,
everywhere the threshold is shown (predict, the explorer, the notebooks' text, an export)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from helpers import tiny_config

from anomaly.calibration import set_threshold
from anomaly.cli import main
from anomaly.explorer.text import guarantee
from anomaly.metrics import Threshold
from anomaly.notebook_photos import threshold_text
from anomaly.pipeline import score_run, train_run
from anomaly.runs import RunDir
from anomaly.threshold_file import MODEL_RECORD, UNRECORDED, guarantee_words


@pytest.fixture(scope="module")
def conformal_run(tiny_cookies, tmp_path_factory):
    """A scored meandiff run with a conformal threshold on its held-out images."""
    run = tmp_path_factory.mktemp("w19") / "md"
    train_run(tiny_config(tiny_cookies, "meandiff"), run, progress=False)
    score_run(run, overlays=False)
    set_threshold(run, "conformal", 0.5)
    return run


@pytest.fixture
def unrecorded(conformal_run, tmp_path):
    """A copy of the run whose threshold.json lost its record of the model (an older version's
    file, or a copy of another run's threshold with the record deleted)."""
    run = shutil.copytree(conformal_run, tmp_path / "md")
    saved = json.loads((run / "threshold.json").read_text())
    del saved[MODEL_RECORD]
    (run / "threshold.json").write_text(json.dumps(saved))
    return run


def _image(tiny_cookies):
    return str(min((tiny_cookies / "test" / "good").glob("*.png")))


def test_a_threshold_without_its_models_record_claims_no_guarantee(
    conformal_run, unrecorded, tiny_cookies, capsys
):
    recorded = RunDir(conformal_run).threshold()
    assert guarantee_words(recorded.rule, recorded.params)  # the run's own: a guarantee
    kept = RunDir(unrecorded).threshold()
    assert kept.value == recorded.value and kept.params[UNRECORDED] is True
    assert guarantee_words(kept.rule, kept.params) is None
    assert main(["predict", "--run", str(unrecorded), "--no-overlays", _image(tiny_cookies)]) == 0
    err = capsys.readouterr().err
    assert "does not record the model it was chosen for" in err and "guarantee:" not in err
    assert (
        main(["predict", "--run", str(conformal_run), "--no-overlays", _image(tiny_cookies)]) == 0
    )
    assert "guarantee: false-reject rate <=" in capsys.readouterr().err
    assert guarantee(kept) is None and guarantee(recorded).startswith("<= ")  # the explorer
    text = threshold_text(unrecorded, kept)  # notebook 07's, with no guarantee sentence after
    assert "guarantee: none: the model it was chosen for is not recorded" in text
    assert "The guarantee holds only if" not in text
    assert "The guarantee holds only if" in threshold_text(conformal_run, recorded)
    RunDir(unrecorded).save_threshold(kept)  # saved again: recording it does not make it this
    saved = json.loads((unrecorded / "threshold.json").read_text())  # model's: no guarantee
    assert MODEL_RECORD in saved and UNRECORDED not in saved["params"]
    assert "guarantee" not in saved["params"] and saved["params"]["earlier_model"] is True


def test_a_threshold_of_an_earlier_model_claims_no_guarantee_anywhere(conformal_run):
    """Kept after train --resume: predict said so, but the explorer and the notebooks' text made
    the guarantee again from alpha and n."""
    params = {"alpha": 0.5, "n": 3, "rank": 2, "earlier_model": True}
    kept = Threshold(1.0, "conformal", params)
    assert guarantee_words("conformal", params) is None
    assert guarantee(kept) is None
    text = threshold_text(conformal_run, kept)
    assert "guarantee: none: chosen on an earlier model" in text
    assert "The guarantee holds only if" not in text


def test_an_export_claims_no_guarantee_for_a_threshold_without_the_record(
    tiny_cookies, tmp_path, capsys
):
    """Exported as "earlier_model", which readers of exports (older copies of the standalone
    onnx_predict.py too) know: a new key would make older copies refuse the file. The reason
    is in the metadata key threshold_void, which older readers pass over, so predict --onnx
    says it as predict --run does (session 21: it said "an earlier model")."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    # meandiff cannot be exported: a patchknn run with its record deleted
    run = tmp_path / "pk"
    train_run(tiny_config(tiny_cookies, "patchknn"), run, progress=False)
    set_threshold(run, "conformal", 0.5)
    saved = json.loads((run / "threshold.json").read_text())
    del saved[MODEL_RECORD]
    (run / "threshold.json").write_text(json.dumps(saved))
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "pk.onnx")]) == 0
    capsys.readouterr()
    flags = ["--no-overlays", _image(tiny_cookies)]
    assert main(["predict", "--onnx", str(tmp_path / "pk.onnx"), *flags]) == 0
    err = capsys.readouterr().err
    assert "does not record the model it was chosen for" in err and "guarantee:" not in err
    assert "earlier model" not in err
    from anomaly.export import OnnxDetector

    meta = OnnxDetector(tmp_path / "pk.onnx").meta
    params = json.loads(meta["threshold_params"])
    assert (
        params["earlier_model"] is True and "guarantee" not in params and UNRECORDED not in params
    )
    assert meta["threshold_void"] == UNRECORDED


def test_tables_align_names_longer_than_eight_characters(scored_ae_run):
    """Notebooks 03 and 04 name a run `orig-unet` (9 characters): its row sat one column right."""
    import anomaly.notebook as nb

    lines = nb.metrics_table({"orig-unet": scored_ae_run, "ae": scored_ae_run}).splitlines()
    assert len({len(line) for line in lines}) == 1  # header and rows end in one column
    assert lines[1].startswith("orig-unet ") and lines[2].startswith("ae        ")
    rows = nb.copy_through_table({"orig-unet": scored_ae_run, "ae": scored_ae_run}).splitlines()
    assert len({len(line) for line in rows}) == 1


def test_a_batch_job_scores_past_an_unreadable_file(tiny_cookies, tmp_path):
    """predict_onnx stops at the first file it cannot read (and holds every map); predict_each
    names it and scores the rest, one map at a time, as predict_onnx scores them."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from anomaly.export import ExportError, export_onnx, predict_each, predict_onnx

    run = tmp_path / "pk"
    train_run(tiny_config(tiny_cookies, "patchknn"), run, progress=False)
    path = export_onnx(run, tmp_path / "pk.onnx")
    good = sorted((tiny_cookies / "test" / "good").glob("*.png"))[:2]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG nothing")
    with pytest.raises(ExportError, match="broken.png"):
        predict_onnx(path, [good[0], broken, good[1]])
    rows = list(predict_each(path, (f for f in [good[0], broken, good[1]])))  # a generator too
    assert [r[0] for r in rows] == [good[0], broken, good[1]]
    assert rows[1][1:3] == (None, None) and "broken.png: cannot read this image" in rows[1][3]
    scores, maps = predict_onnx(path, good)
    for (_, score, amap, error), want, want_map in zip([rows[0], rows[2]], scores, maps):
        assert error is None and score == pytest.approx(float(want), abs=1e-6)
        np.testing.assert_array_equal(amap, want_map)
    with pytest.raises(ExportError, match="takes images of shape"):  # a caller's mistake raises
        list(predict_each(path, [np.zeros((3, 5, 5), np.float32)]))


def _stopped_at_second(monkeypatch):
    """scored_result raising KeyboardInterrupt (Ctrl-C) on the second image it is given."""
    import anomaly.predict

    real, calls = anomaly.predict.scored_result, []

    def scored(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(anomaly.predict, "scored_result", scored)


def test_predict_prints_each_row_as_it_is_scored(
    conformal_run, tiny_cookies, tmp_path, capsys, monkeypatch
):
    """Rows were printed only once every image was scored: a long predict stopped part-way
    (Ctrl-C, a killed job) lost every verdict it had made. Now each row is out when scored."""
    folder = tmp_path / "new"
    folder.mkdir()
    for f in sorted((tiny_cookies / "test" / "good").glob("*.png"))[:3]:
        shutil.copy(f, folder / f.name)
    first = min(folder.iterdir())
    _stopped_at_second(monkeypatch)
    assert main(["predict", "--run", str(conformal_run), "--no-overlays", str(folder)]) == 130
    out = capsys.readouterr().out.splitlines()
    assert (
        len(out) == 1
        and out[0].startswith(f"{first}\t")
        and out[0].split("\t")[2]
        in (
            "PASS",
            "REJECT",
        )
    )


def test_predict_onnx_prints_each_row_as_it_is_scored(tiny_cookies, tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from anomaly.export import export_onnx

    run = tmp_path / "pk"
    train_run(tiny_config(tiny_cookies, "patchknn"), run, progress=False)
    path = export_onnx(run, tmp_path / "pk.onnx")
    files = [str(f) for f in sorted((tiny_cookies / "test" / "good").glob("*.png"))[:3]]
    _stopped_at_second(monkeypatch)
    assert main(["predict", "--onnx", str(path), "--no-overlays", *files]) == 130
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith(f"{files[0]}\t")


def test_predict_into_a_closed_pipe_stops_quietly(conformal_run, tiny_cookies, tmp_path):
    """`predict ... | head -1`: with the rows streamed, a reader that stops early closed the pipe
    while predict was still writing; it printed "error: [Errno 32] Broken pipe" and exited 2.
    Now it stops quietly with 141 (128 + SIGPIPE), as Unix tools do."""
    import subprocess
    import sys

    folder = tmp_path / "many"
    folder.mkdir()
    image = min((tiny_cookies / "test" / "good").glob("*.png"))
    for i in range(1500):  # rows well beyond a pipe's buffer
        os.link(image, folder / f"a_long_name_so_that_the_rows_fill_the_pipe_{i:04d}.png")
    args = ["predict", "--run", str(conformal_run), "--no-overlays", str(folder)]
    with (tmp_path / "err.txt").open("w") as log:  # a file: stderr can never fill a pipe
        proc = subprocess.Popen(
            [sys.executable, "-m", "anomaly", *args], stdout=subprocess.PIPE, stderr=log, text=True
        )
        try:
            assert proc.stdout.readline().endswith("\n")
            proc.stdout.close()  # the reader is done
            assert proc.wait(timeout=300) == 141
        finally:
            proc.kill()
    err = (tmp_path / "err.txt").read_text()
    assert "Broken pipe" not in err and "Traceback" not in err and "Exception ignored" not in err


def test_another_broken_pipe_is_an_error(conformal_run, tiny_cookies, capsys, monkeypatch):
    """Only predict's own stdout closing is quiet: a broken pipe elsewhere (a decoding worker's,
    say) is an error to report, not a reader that stopped."""
    import anomaly.predict

    def broken(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(anomaly.predict, "predict_images", broken)
    assert main(["predict", "--run", str(conformal_run), _image(tiny_cookies)]) == 2
    assert "error: [Errno 32] Broken pipe" in capsys.readouterr().err


def test_the_explorer_says_why_a_saved_conformal_threshold_guarantees_nothing():
    from anomaly.explorer.text import rule_html
    from anomaly.metrics import confusion

    counts = confusion(np.array([0, 0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 1.5, 0.5]), 1.0)
    for flag, why in (("earlier_model", "earlier model"), (UNRECORDED, "is not recorded")):
        saved = Threshold(1.0, "conformal", {"alpha": 0.5, "n": 3, flag: True})
        text = rule_html(saved, 1.0, counts, None)
        assert "It guarantees nothing" in text and why in text
    assert "guarantees a false-reject rate" in rule_html(
        Threshold(1.0, "conformal", {"alpha": 0.5, "n": 3}), 1.0, counts, None
    )
