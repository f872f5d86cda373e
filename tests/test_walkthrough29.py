"""Session 29's fixes, each with the check that failed before it."""

from __future__ import annotations

import json

import pytest
from helpers import copy_run

from anomaly import notebook_photos
from anomaly.calibration import set_threshold
from anomaly.data import make_cookies
from anomaly.runs import RunDir, RunError
from anomaly.threshold_file import MODEL_RECORD, model_sha256


def test_line_scores_outlive_a_threshold_set_by_hand(scored_ae_run, tmp_path):
    """calibration_scores.json recorded no model, so its scores were shown only while the
    threshold set on them was kept: after a manual (or the explorer's) threshold replaced it,
    notebook 07 hid the same model's scores of the good photos from the line."""
    run = copy_run(scored_ae_run, tmp_path / "run")
    make_cookies(tmp_path / "more", preset="tiny", seed=5, size=64)
    set_threshold(run, "normal-quantile", 0.9, good_images=tmp_path / "more" / "train" / "good")
    rd = RunDir(run)
    assert rd.calibration()[MODEL_RECORD] == model_sha256(rd.file(rd.MODEL))
    set_threshold(run, "manual", 1.0)
    scores, why = notebook_photos.line_scores(rd)
    assert why == "" and scores is not None and scores.size == len(rd.calibration()["paths"])
    assert "good photos from the line (" in notebook_photos.held_out_vs_new(run)


def test_line_scores_of_another_model_are_named(scored_ae_run, tmp_path):
    """Scores recorded for another model.pt are not shown, whatever threshold.json says."""
    run = copy_run(scored_ae_run, tmp_path / "run")
    make_cookies(tmp_path / "more", preset="tiny", seed=5, size=64)
    set_threshold(run, "normal-quantile", 0.9, good_images=tmp_path / "more" / "train" / "good")
    path = run / "calibration_scores.json"
    kept = json.loads(path.read_text())
    path.write_text(json.dumps({**kept, MODEL_RECORD: "0" * 64}))
    scores, why = notebook_photos.line_scores(RunDir(run))
    assert scores is None and "another model than this model.pt" in why


def test_threshold_on_a_run_without_its_model_is_refused(scored_ae_run, tmp_path):
    """`threshold --rule manual` on a run whose model.pt was gone saved a threshold recording
    no model, which the next model.pt in that folder then took as its own."""
    run = copy_run(scored_ae_run, tmp_path / "run")
    (run / "model.pt").unlink()
    before = (run / "threshold.json").read_bytes()
    for rule, value in (("manual", 1.0), ("normal-quantile", 0.9), ("f1", None)):
        with pytest.raises(RunError, match=r"has no model\.pt .*--resume"):
            set_threshold(run, rule, value)
    assert (run / "threshold.json").read_bytes() == before


def test_explorer_save_on_a_run_without_its_model_is_refused(scored_ae_run, tmp_path):
    """The explorer's Save wrote a threshold recording no model into such a run."""
    from anomaly.explorer import ThresholdExplorer

    run = copy_run(scored_ae_run, tmp_path / "run")
    ex = ThresholdExplorer([run])
    (run / "model.pt").unlink()
    before = (run / "threshold.json").read_bytes()
    with pytest.raises(RunError, match=r"has no model\.pt"):
        ex.save_threshold()
    ex._on_save(None)
    assert "Not saved" in ex.status.value and "model.pt" in ex.status.value
    assert (run / "threshold.json").read_bytes() == before


def test_a_rerun_from_config_json_gives_the_same_model_pt(tiny_cookies, tmp_path):
    """The defaults share one "auto" string among three fields, a config read from config.json
    has three: pickle wrote them apart, so the rerun's model.pt had other bytes (the same
    model) and the first run's threshold.json was refused as another model's."""
    from anomaly.config import Config
    from anomaly.pipeline import train_run

    config = Config.for_method("patchknn", data=str(tiny_cookies), size=64)
    assert config.device is config.runtime  # one object, as the defaults give
    train_run(config, tmp_path / "a", progress=False)
    again = Config.load(tmp_path / "a" / "config.json")
    assert again.device == again.runtime and again.device is not again.runtime
    train_run(again, tmp_path / "b", progress=False)
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()
