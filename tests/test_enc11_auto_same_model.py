"""`--method auto` gives the same model.pt for the same training: its record of the choice in
model.pt holds no times (selection.json keeps them), so a threshold chosen for one run is
accepted by an identical retraining; older model.pt files that hold the times load as before."""

from __future__ import annotations

import json
import shutil
import warnings

import torch

from anomaly.calibration import set_threshold
from anomaly.config import Config
from anomaly.detectors import auto
from anomaly.detectors.auto import format_selection, without_timings
from anomaly.pipeline import load_run, train_run
from anomaly.runs import RunDir
from anomaly.selection import read_selection

FAST = {"method": "patchknn", "size": 48, "coreset_ratio": 0.1}  # test_auto's smallest grid
TIMES = ("fit_s", "score_s")


def _train(data, out, monkeypatch) -> RunDir:
    monkeypatch.setattr(auto, "CANDIDATES", [FAST, {**FAST, "score_topk": 0.05}])
    config = Config.for_method("auto", data=str(data), size=48, batch_size=8, seed=2)
    train_run(config, out, progress=False)
    return RunDir(out)


def _model_record(run: RunDir) -> dict:
    return json.loads(run.checkpoint()["state"]["selection"])


def test_two_identical_auto_trainings_give_the_same_model(tiny_cookies, tmp_path, monkeypatch):
    a, b = (_train(tiny_cookies, tmp_path / n, monkeypatch) for n in "ab")
    assert a.file(a.MODEL).read_bytes() == b.file(b.MODEL).read_bytes()
    saved = json.loads(a.file(a.SELECTION).read_text())  # the times users read stay here
    assert saved["total_s"] >= 0 and all(r["fit_s"] >= 0 for r in saved["candidates"])
    own = _model_record(a)
    assert "total_s" not in own and not any(t in r for r in own["candidates"] for t in TIMES)
    assert own == without_timings(saved)

    set_threshold(a.path, "manual", 0.5)
    shutil.copy(a.file(a.THRESHOLD), b.file(b.THRESHOLD))
    assert b.threshold().value == 0.5  # not "set for another model"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # selection.json agrees with model.pt: not a word
        load_run(b.path)
        assert read_selection(b.path) == json.loads(
            b.file(b.SELECTION).read_text()
        )  # the model's record with selection.json's times

    b.file(b.SELECTION).unlink()  # model.pt alone: the table shows no times, not an error
    table = format_selection(read_selection(b.path))
    assert "fit     - s  predict    - ms/image" in table and table.startswith("auto chose")


def test_an_older_auto_model_with_its_times_still_loads_and_checks(
    tiny_cookies, tmp_path, monkeypatch
):
    run = _train(tiny_cookies, tmp_path / "old", monkeypatch)
    saved = json.loads(run.file(run.SELECTION).read_text())
    payload = torch.load(run.file(run.MODEL), weights_only=True)
    payload["state"]["selection"] = json.dumps(saved)  # as auto wrote model.pt before
    torch.save(payload, run.file(run.MODEL))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_run(run.path)
        assert read_selection(run.path) == saved

    lie = {**saved, "chosen_index": 1 - saved["chosen_index"]}
    run.file(run.SELECTION).write_text(json.dumps(lie))
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        load_run(run.path)
        assert read_selection(run.path) == saved  # the model's own record, with its own times
    assert len(said) == 2 and all("changed after training" in str(w.message) for w in said)
