"""Session 28's walkthrough of the explorer and the notebooks' figures on folders other than a
plain run: `score --data`'s RUN/scored/<name>/, a run trained further after its threshold was
set on good photos from the line, and runs or results the figures cannot draw."""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings

import numpy as np
import pytest
from helpers import copy_run, tiny_config

from anomaly import notebook as nb
from anomaly import notebook_photos
from anomaly.calibration import set_threshold
from anomaly.data import make_cookies
from anomaly.explorer import ThresholdExplorer
from anomaly.pipeline import score_run, train_run
from anomaly.runs import RunDir, RunError


@pytest.fixture(scope="module")
def scored_elsewhere(scored_ae_run, tiny_cookies, tmp_path_factory):
    """(run, RUN/scored/other/): the tiny run scored on a copy of its data with one good test
    image fewer (another data set, so another number of images)."""
    root = tmp_path_factory.mktemp("walk28")
    run = copy_run(scored_ae_run, root / "run")
    other = root / "other"
    shutil.copytree(tiny_cookies, other)
    next(iter(sorted((other / "test" / "good").iterdir()))).unlink()
    score_run(run, data=str(other), overlays=False)
    return run, run / "scored" / "other"


def test_evidence_figure_of_scored_folder_uses_the_runs_threshold(scored_elsewhere, monkeypatch):
    """RUN/scored/<name>/ has no threshold.json: every tile said PASS against an infinite one,
    while `score`'s overlays of the same images used the run's threshold."""
    import anomaly.overlays

    run, scored = scored_elsewhere
    seen = []
    draw = anomaly.overlays.prediction_overlay

    def spy(pred, i, image, scale, threshold):
        seen.append(threshold)
        return draw(pred, i, image, scale, threshold)

    monkeypatch.setattr(anomaly.overlays, "prediction_overlay", spy)
    nb.evidence_figure(scored, per_kind=1, ncols=4)
    assert seen and set(seen) == {RunDir(run).threshold().value}


def test_histogram_of_scored_folder_names_the_run(scored_elsewhere, tmp_path):
    """It read RUN/scored/<name>/threshold.json, which `score` never writes, and suggested
    `threshold --run RUN/scored/<name>`, which fails: not a run folder."""
    run, scored = scored_elsewhere
    fig = nb.histogram_figure(scored)  # the run's threshold
    assert fig.axes
    bare = copy_run(run, tmp_path / "bare")
    (bare / "threshold.json").unlink()
    with pytest.raises(RunError) as err:
        nb.histogram_figure(bare / "scored" / "other")
    assert f"threshold --run {bare} " in str(err.value)
    assert f"--run {bare / 'scored'}" not in str(err.value)


def test_overlays_figure_of_scored_folder_reads_the_runs_config(scored_elsewhere):
    """It read RUN/scored/<name>/config.json, which `score` never writes."""
    _, scored = scored_elsewhere
    assert nb.overlays_figure(scored, kind="heat").axes


def test_line_scores_of_an_earlier_model_are_not_shown(scored_ae_run, tiny_cookies, tmp_path):
    """calibration_scores.json records no model and outlives a retraining: held_out_vs_new
    showed an earlier model's scores as the "good photos from the line"."""
    run = copy_run(scored_ae_run, tmp_path / "run")
    make_cookies(tmp_path / "more", preset="tiny", seed=5, size=64)  # other good cookies
    line = tmp_path / "more" / "train" / "good"
    set_threshold(run, "normal-quantile", 0.9, good_images=line)
    assert "good photos from the line (" in notebook_photos.held_out_vs_new(run)
    train_run(tiny_config(tiny_cookies, epochs=4), run, resume=True, progress=False)
    score_run(run, overlays=False)
    text = notebook_photos.held_out_vs_new(run)
    assert "good photos from the line (" not in text
    assert "another model than this model.pt" in text
    assert f"threshold --run {run} --rule normal-quantile --value 0.9 --good-images" in text


def test_save_threshold_from_code_shows_it_saved(scored_ae_run, tmp_path):
    """Only the Save button's callback refreshed the status, the rule and the histogram."""
    run = copy_run(scored_ae_run, tmp_path / "run")
    ex = ThresholdExplorer([run])
    old = ex.rule.value
    ex.slider.value = float(np.mean([ex.slider.min, ex.slider.max]))
    assert ex.rule.value != old  # "set by hand" now
    ex.save_threshold()
    assert "Saved threshold" in ex.status.value
    assert "saved rule" in ex.rule.value and ex.run.saved.value == ex.threshold


def test_save_from_scored_folder_says_where_and_on_what(scored_elsewhere, tmp_path):
    """The tooltip named RUN/scored/<name>/threshold.json while RUN/threshold.json was written,
    and the record said it was chosen on "the test images" (the run's)."""
    run, _ = scored_elsewhere
    run = copy_run(run, tmp_path / "run")
    ex = ThresholdExplorer([run / "scored" / "other"])
    assert ex.save_button.tooltip == f"Write {run / 'threshold.json'}"
    assert ex.save_threshold() == run / "threshold.json"
    params = json.loads((run / "threshold.json").read_text())["params"]
    assert params["chosen_on_data"] == str(scored_elsewhere[0].parent / "other")
    assert f"test images of {params['chosen_on_data']}" in ex.rule.value


def test_runs_of_other_images_say_which(scored_elsewhere):
    """It said "different numbers of images ([n, m]): compare runs scored on the same data"."""
    run, scored = scored_elsewhere
    with pytest.raises(ValueError) as err:
        ThresholdExplorer([run, scored])
    text = str(err.value)
    assert "its own test images" in text and "score --data" in text
    assert "different numbers" not in text


def test_rule_line_without_saved_threshold_is_a_sentence(scored_ae_run, tmp_path):
    """It read "Threshold <b>the cost optimum</b> on these images"."""
    run = copy_run(scored_ae_run, tmp_path / "run")
    (run / "threshold.json").unlink()
    ex = ThresholdExplorer([run])
    assert "This threshold is <b>the cost optimum</b> of these images" in ex.rule.value


def test_detectability_of_unknown_set_names_the_known_ones():
    """An unknown set drew an empty figure, with a matplotlib warning about the legend."""
    bins = [{"area_lo": 0.01, "area_hi": 0.02, "caught": 0.5}]
    result = {"rows": [{"set": "cookies", "method": "ae", "detectability": {"bins": bins}}]}
    assert nb.detectability_figure(result).axes
    with pytest.raises(ValueError, match="'cookies'"):
        nb.detectability_figure(result, "nope")


def test_roc_of_a_run_without_defects_says_so(scored_ae_run, tmp_path):
    """scikit-learn's UndefinedMetricWarning came through, and a NaN AUROC in the legend."""
    run = copy_run(scored_ae_run, tmp_path / "good")
    pred = RunDir(run).predictions()
    good = dataclasses.replace(
        pred, labels=np.zeros_like(pred.labels), defects=["good"] * len(pred)
    )
    good.save(run / "predictions.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = nb.roc_figure({"ae": scored_ae_run, "good": run})
    assert "No ROC curve for good (no defective test image)" in fig.axes[0].get_title()


def test_a_score_out_folder_goes_with_the_run_that_scored_it(scored_elsewhere, tmp_path):
    """Session 28's code review: `score --data OTHER --out FOLDER` (no run there, not in
    RUN/scored/) drew every tile at an infinite threshold, and the explorer's Save named
    FOLDER/threshold.json, which predict never reads; while the run holds the model that
    scored it, the folder goes with that run."""
    import anomaly.overlays
    from anomaly.explorer.runs import threshold_home

    run, _ = scored_elsewhere
    out = tmp_path / "elsewhere"
    score_run(run, data=str(RunDir(run).config().data), out=str(out), overlays=False)
    assert threshold_home(out) == run
    seen = []
    draw = anomaly.overlays.prediction_overlay

    def spy(pred, i, image, scale, threshold):
        seen.append(threshold)
        return draw(pred, i, image, scale, threshold)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(anomaly.overlays, "prediction_overlay", spy)
        nb.evidence_figure(out, per_kind=1, ncols=4)
    assert seen and set(seen) == {RunDir(run).threshold().value}
    (run / "model.pt").rename(run / "model.moved")  # another model, or none: its own folder
    try:
        assert threshold_home(out) == out
    finally:
        (run / "model.moved").rename(run / "model.pt")
