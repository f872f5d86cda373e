"""The same training gives the same model.pt: a threshold chosen for one run is accepted by an
identical retraining (same data, same seed), and still refused for a run trained otherwise."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import tiny_config

from anomaly.calibration import set_threshold
from anomaly.pipeline import train_run
from anomaly.runs import RunDir, RunError


def test_a_threshold_fits_an_identical_retraining_not_another_seed(tiny_cookies, tmp_path):
    """model.pt recorded `fit_seconds`, so two identical trainings gave two files and a
    threshold.json copied from the first was "set for another model"."""
    for name, seed in (("a", 3), ("b", 3), ("other", 4)):
        config = tiny_config(tiny_cookies, "ae", epochs=1, seed=seed)
        train_run(config, tmp_path / name, progress=False)
    a, b, other = (RunDir(tmp_path / n) for n in ("a", "b", "other"))
    assert a.file(a.MODEL).read_bytes() == b.file(b.MODEL).read_bytes()
    assert json.loads(a.file(a.VERSIONS).read_text())["fit_seconds"] >= 0  # timing kept here

    chosen = set_threshold(a.path, "manual", 0.5)
    shutil.copy(a.file(a.THRESHOLD), b.file(b.THRESHOLD))
    assert b.threshold().value == chosen.value  # the same model
    shutil.copy(a.file(a.THRESHOLD), other.file(other.THRESHOLD))
    with pytest.raises(RunError, match="set for another model"):
        other.threshold()


def test_an_older_model_with_its_timing_keeps_its_threshold(tiny_cookies, tmp_path):
    """A model.pt from before still holds fit_seconds, and its threshold.json the SHA-256 of
    that file: it loads as it did, and a copy of it is refused by a run whose file differs."""
    old, new = RunDir(tmp_path / "old"), RunDir(tmp_path / "new")
    for run in (old, new):
        train_run(tiny_config(tiny_cookies, "meandiff"), run.path, progress=False)
    payload = torch.load(old.file(old.MODEL), weights_only=True)
    torch.save({**payload, "fit_seconds": 1.25}, old.file(old.MODEL))  # as older versions wrote
    set_threshold(old.path, "manual", 0.5)
    assert old.threshold().value == 0.5
    shutil.copy(old.file(old.THRESHOLD), new.file(new.THRESHOLD))
    with pytest.raises(RunError, match="set for another model"):
        new.threshold()
