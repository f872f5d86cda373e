"""The threshold explorer: its pure logic by hand, then its widget wiring by setting values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from anomaly import metrics
from anomaly.decision import (
    cost_optimal_threshold,
    counts_at,
    cross_validated_cost,
    score_range,
    summary_line,
    threshold_table,
)
from anomaly.detectors.base import Predictions
from anomaly.explorer import ThresholdExplorer, format_confusion_html
from anomaly.explorer.server import how_to_share, page_url, runs_from_env, voila_command
from anomaly.explorer.widget import CV_REPEATS
from anomaly.metrics import Threshold


def synthetic_predictions(
    n: int = 40, size: int = 16, seed: int = 0, shift: float = 1.5, method: str = "ae"
) -> Predictions:
    """Good images score ~N(0, 1), defective ones ~N(shift, 1); defects are a square."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 3 == 0).astype(int)
    scores = rng.normal(0, 1, n) + shift * labels
    maps = rng.random((n, size, size), dtype=np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    q = size // 4
    masks[labels == 1, q : 2 * q, q : 2 * q] = 1
    maps[masks == 1] += 1.0
    defects = ["crack" if label else "good" for label in labels]
    return Predictions(
        [f"/nowhere/img_{i:03d}.png" for i in range(n)],
        labels,
        defects,
        scores,
        maps,
        masks,
        method=method,
    )


# ---------------------------------------------------------------------------------------------
# Pure logic
# ---------------------------------------------------------------------------------------------

LABELS = np.array([0, 0, 0, 1, 1])
SCORES = np.array([0.1, 0.2, 0.6, 0.4, 0.9])  # good: .1 .2 .6   defective: .4 .9


def test_counts_at_a_threshold_by_hand():
    table = threshold_table(LABELS, SCORES)
    c = counts_at(table, 0.5)  # flagged: .6 (good) and .9 (defective)
    assert (c["tp"], c["fp"], c["tn"], c["fn"]) == (1, 1, 2, 1)
    assert c["precision"] == pytest.approx(0.5)
    assert c["recall"] == pytest.approx(0.5)
    assert c["f1"] == pytest.approx(0.5)
    assert c["false_reject_rate"] == pytest.approx(1 / 3)
    assert c["escape_rate"] == pytest.approx(0.5)
    assert c["threshold"] == 0.5


def test_score_equal_to_threshold_is_flagged():
    table = threshold_table(LABELS, SCORES)
    c = counts_at(table, 0.4)  # .4 itself is flagged (>=), with .6 and .9
    assert (c["tp"], c["fp"], c["tn"], c["fn"]) == (2, 1, 2, 0)


def test_extreme_thresholds_flag_all_or_nothing():
    table = threshold_table(LABELS, SCORES)
    low, high = counts_at(table, -10.0), counts_at(table, 10.0)
    assert (low["tp"], low["fp"]) == (2, 3) and low["false_reject_rate"] == 1.0
    assert (high["tp"], high["fp"], high["fn"]) == (0, 0, 2)
    assert high["precision"] == 0.0  # undefined -> 0.0, as anomaly.metrics.confusion
    assert high["escape_rate"] == 1.0
    assert counts_at(table, np.inf)["tn"] == 3


def test_tied_scores_are_one_row():
    table = threshold_table([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.7])
    assert list(table.thresholds) == [0.2, 0.5, 0.7, np.inf]
    c = counts_at(table, 0.5)  # both .5 images flagged together
    assert (c["tp"], c["fp"], c["tn"], c["fn"]) == (2, 1, 1, 0)
    c = counts_at(table, 0.50001)
    assert (c["tp"], c["fp"], c["tn"], c["fn"]) == (1, 0, 2, 1)


def test_counts_agree_with_brute_force_everywhere():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.normal(size=200), 1)  # many ties
    table = threshold_table(labels, scores)
    for t in np.linspace(-4, 4, 97):
        flagged = scores >= t
        c = counts_at(table, t)
        assert c["tp"] == np.sum(flagged & (labels == 1))
        assert c["fp"] == np.sum(flagged & (labels == 0))
        assert c["fn"] == np.sum(~flagged & (labels == 1))
        assert c["tn"] == np.sum(~flagged & (labels == 0))


def test_counts_match_metrics_confusion():
    table = threshold_table(LABELS, SCORES)
    for t in (0.0, 0.15, 0.4, 0.5, 0.95):
        assert counts_at(table, t) == pytest.approx(metrics.confusion(LABELS, SCORES, t))


def test_cost_optimum_by_hand():
    # Candidate intervals and their (false rejects, escapes):
    #   t <= .1: (3, 0)   (.1, .2]: (2, 0)   (.2, .4]: (1, 0)   (.4, .6]: (1, 1)
    #   (.6, .9]: (0, 1)  t > .9: (0, 2)
    # Escapes cost 1, false rejects 1: (.2,.4] and (.6,.9] both cost 1 -> the lower one wins.
    t, cost = cost_optimal_threshold(LABELS, SCORES, cost_false_reject=1, cost_escape=1)
    assert cost == 1 and t == pytest.approx(0.3)
    # Escapes cheap: (.6, .9] costs 0.1.
    t, cost = cost_optimal_threshold(LABELS, SCORES, cost_false_reject=1, cost_escape=0.1)
    assert cost == pytest.approx(0.1) and t == pytest.approx(0.75)
    # Escapes very expensive, false rejects free: flag everything (below the lowest score).
    t, cost = cost_optimal_threshold(LABELS, SCORES, cost_false_reject=0, cost_escape=5)
    assert cost == 0 and t < 0.1
    c = counts_at(threshold_table(LABELS, SCORES), t)
    assert c["fn"] == 0 and c["fp"] == 3
    # Escapes free: (.6, .9] and t > .9 both cost 0 -> the lower interval wins the tie.
    t, cost = cost_optimal_threshold(LABELS, SCORES, cost_false_reject=5, cost_escape=0)
    assert cost == 0 and t == pytest.approx(0.75)


def test_cost_optimum_can_flag_nothing():
    # Flag all: 1 false reject (5); flag (.2, .8]: 1 + 1 (6); flag nothing: 1 escape (1).
    t, cost = cost_optimal_threshold([1, 0], [0.2, 0.8], cost_false_reject=5, cost_escape=1)
    _, hi = score_range([0.2, 0.8])
    assert cost == 1 and 0.8 < t < hi


def test_cost_optimum_separable_data_costs_nothing():
    t, cost = cost_optimal_threshold([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], 1, 1)
    assert cost == 0 and t == pytest.approx(0.25)


def test_cost_optimum_rejects_negative_costs():
    with pytest.raises(ValueError):
        cost_optimal_threshold(LABELS, SCORES, -1, 1)


def test_confusion_html_shows_the_counts():
    text = format_confusion_html(counts_at(threshold_table(LABELS, SCORES), 0.5))
    assert "anomaly-confusion" in text
    assert "1 false rejects" in text and "1 escapes" in text and "2 passed" in text
    assert "1 caught" in text and "0.333" in text


def test_runs_from_env_accepts_json_and_pathsep(monkeypatch):
    import os

    assert runs_from_env('["/a", "/b"]') == ["/a", "/b"]
    assert runs_from_env(os.pathsep.join(["/a", "/b"])) == ["/a", "/b"]
    monkeypatch.delenv("ANOMALY_RUNS", raising=False)
    assert runs_from_env() == []


def test_voila_command_names_the_notebook_and_runs(tmp_path):
    synthetic_predictions(6).save(tmp_path / "predictions.npz")
    cmd, env = voila_command([tmp_path], port=8899)
    assert cmd[1:3] == ["-m", "voila"] and cmd[3].endswith("explorer_app.ipynb")
    assert "--port=8899" in cmd and "--no-browser" in cmd
    assert json.loads(env["ANOMALY_RUNS"]) == [str(tmp_path.resolve())]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        voila_command([tmp_path / "missing"])
    (tmp_path / "unscored").mkdir()
    with pytest.raises(FileNotFoundError, match="score the run first"):
        voila_command([tmp_path / "unscored"])


def test_voila_serves_locally_with_a_token_and_no_tracebacks(tmp_path):
    synthetic_predictions(6).save(tmp_path / "predictions.npz")
    cmd, _ = voila_command([tmp_path], port=8899)
    assert "--Voila.ip=127.0.0.1" in cmd and "--show_tracebacks=False" in cmd
    tokens = [a.split("=", 1)[1] for a in cmd if a.startswith("--token=")]
    assert len(tokens) == 1 and len(tokens[0]) >= 24  # random, unguessable
    assert voila_command([tmp_path])[0] != cmd  # a new token each time
    assert page_url(cmd) == f"http://127.0.0.1:8899/?token={tokens[0]}"
    assert "ssh -N -L 8899:127.0.0.1:8899" in how_to_share(8899)
    assert "WARNING" in how_to_share(8899, host="0.0.0.0")
    assert any(a.startswith("--MappingKernelManager.cull_idle_timeout=") for a in cmd)
    with pytest.raises(ValueError, match="cull_idle_s"):
        voila_command([tmp_path], cull_idle_s=5)


# ---------------------------------------------------------------------------------------------
# Widget wiring
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def pred():
    return synthetic_predictions()


def test_slider_updates_counts_matrix_and_histogram(pred):
    ex = ThresholdExplorer(pred)
    before_html, before_png = ex.confusion.value, ex.histogram.value
    t = float(np.quantile(pred.scores, 0.8))
    assert counts_at(ex.run.table, ex.slider.value)["tp"] != counts_at(ex.run.table, t)["tp"]
    ex.slider.value = t
    expected = counts_at(threshold_table(pred.labels, pred.scores), t)
    assert ex.counts == expected
    assert ex.confusion.value == format_confusion_html(expected)
    assert ex.confusion.value != before_html
    assert ex.histogram.value != before_png and ex.histogram.value[:4] == b"\x89PNG"
    flagged = pred.scores >= t
    assert ex.counts["fp"] == int(np.sum(flagged & (pred.labels == 0)))


def test_gallery_tiles_of_passing_images_show_no_red(pred):
    """The gallery paints as `score`'s overlays do: red only on an image the slider rejects."""
    from anomaly.overlays import strong_red_fraction

    ex = ThresholdExplorer(pred)
    ex.pixel_slider.value = ex.pixel_slider.min  # every raised pixel above the pixel threshold
    ex.slider.value = ex.slider.max
    assert all(strong_red_fraction(ex.gallery.overlay(ex.run, i)) == 0 for i in range(len(pred)))
    ex.slider.value = ex.slider.min
    assert any(strong_red_fraction(ex.gallery.overlay(ex.run, i)) > 0 for i in range(len(pred)))


def test_gallery_shows_misclassified_first(pred):
    ex = ThresholdExplorer(pred, gallery_size=6)
    ex.gallery.show.value = "all"
    ex.slider.value = float(np.median(pred.scores))
    order = ex.gallery.order()
    wrong = (pred.scores >= ex.threshold) != (pred.labels > 0)
    n_wrong = int(wrong.sum())
    assert n_wrong > 0
    assert wrong[order[:n_wrong]].all() and not wrong[order[n_wrong:]].any()
    shown = min(n_wrong, 6)
    captions = [c.value for c in ex.gallery.captions[:shown]]
    assert all(("escape" in c) or ("false reject" in c) for c in captions)
    assert all(img.value[:4] == b"\x89PNG" for img in ex.gallery.images)
    assert f"{n_wrong} misclassified" in ex.gallery.title.value


def test_pixel_threshold_changes_the_overlays(pred):
    ex = ThresholdExplorer(pred, gallery_size=3)
    before = [img.value for img in ex.gallery.images]
    ex.pixel_slider.value = ex.pixel_slider.min
    after = [img.value for img in ex.gallery.images]
    assert before != after


def test_cost_optimum_button_moves_the_slider(pred):
    ex = ThresholdExplorer(pred)
    ex.cost_false_reject.value, ex.cost_escape.value = 1.0, 3.0
    ex.slider.value = ex.slider.max  # somewhere else first
    ex.optimum_button.click()
    t_opt, cost = cost_optimal_threshold(pred.labels, pred.scores, 1.0, 3.0)
    assert ex.slider.value == pytest.approx(t_opt)
    c = ex.counts
    assert c["fp"] + 3.0 * c["fn"] == pytest.approx(cost)
    assert f"{cost:.4g}" in ex.cost_label.value


def test_changing_costs_moves_the_optimum(pred):
    ex = ThresholdExplorer(pred)
    ex.cost_escape.value = 100.0
    t_hi_escape = ex.go_to_optimum()
    ex.cost_escape.value, ex.cost_false_reject.value = 0.01, 100.0
    t_hi_reject = ex.go_to_optimum()
    assert t_hi_escape < t_hi_reject


def test_save_button_writes_threshold_json(pred, tmp_path):
    ex = ThresholdExplorer(pred, run_dirs=tmp_path)
    t = float(np.quantile(pred.scores, 0.7))
    ex.slider.value = t
    ex.save_button.click()
    saved = json.loads((tmp_path / "threshold.json").read_text())
    assert saved["value"] == pytest.approx(t)
    assert saved["rule"] == "explorer"
    assert saved["params"]["fp"] == ex.counts["fp"]
    assert "pixel_threshold" in saved["params"]
    assert "Saved" in ex.status.value
    ex.optimum_button.click()
    ex.save_button.click()
    assert json.loads((tmp_path / "threshold.json").read_text())["rule"] == "cost-optimal"


def test_save_without_a_run_folder_says_why(pred):
    ex = ThresholdExplorer(pred)
    assert ex.save_button.disabled
    ex._on_save(None)
    assert "Not saved" in ex.status.value and "run_dirs" in ex.status.value


def test_loads_run_folders_and_starts_at_the_saved_threshold(pred, tmp_path):
    pred.save(tmp_path / "predictions.npz")
    (tmp_path / "threshold.json").write_text(
        json.dumps({"value": 0.123, "rule": "manual", "params": {}})
    )
    ex = ThresholdExplorer([tmp_path])
    assert ex.slider.value == pytest.approx(0.123)
    (tmp_path / "threshold.json").write_text(json.dumps({"value": 99.0}))
    ex = ThresholdExplorer(tmp_path)  # beyond every score: the slider reaches it
    assert ex.slider.value == pytest.approx(99.0) and ex.counts["tp"] + ex.counts["fp"] == 0
    assert ex.run.folder == tmp_path and not ex.save_button.disabled


def test_run_dropdown_switches_the_data(tmp_path):
    a = synthetic_predictions(seed=1, shift=1.0, method="ae")
    b = synthetic_predictions(seed=2, shift=6.0, method="unet")
    ex = ThresholdExplorer(
        {"ae": a, "unet": b}, run_dirs={"ae": tmp_path / "a", "unet": tmp_path / "b"}
    )
    assert list(ex.run_select.options) == [("ae", "ae"), ("unet", "unet")]
    assert ex.run.name == "ae"
    ex.run_select.value = "unet"
    assert ex.run.pred is b
    assert (ex.slider.min, ex.slider.max) == pytest.approx(score_range(b.scores))
    t_opt, _ = cost_optimal_threshold(b.labels, b.scores, 1.0, 10.0)
    assert ex.slider.value == pytest.approx(t_opt)  # no saved threshold: the cost optimum
    assert ex.confusion.value == format_confusion_html(
        counts_at(threshold_table(b.labels, b.scores), ex.slider.value)
    )
    ex.save_button.click()
    assert (tmp_path / "b" / "threshold.json").exists()
    assert not (tmp_path / "a" / "threshold.json").exists()
    ex.run_select.value = "ae"  # each run keeps its own threshold
    ex.run_select.value = "unet"
    assert ex.slider.value == pytest.approx(t_opt)


def test_runs_of_different_sizes_are_refused():
    with pytest.raises(ValueError, match="same data"):
        ThresholdExplorer({"a": synthetic_predictions(10), "b": synthetic_predictions(12)})


# ---------------------------------------------------------------------------------------------
# Held-out cost, summary, rules and guarantees
# ---------------------------------------------------------------------------------------------


def test_cross_validated_cost_counts_every_image_once_out_of_sample():
    rng = np.random.default_rng(5)
    labels = np.array([0] * 30 + [1] * 20)
    scores = rng.normal(labels * 2.0, 1.0)
    cv = cross_validated_cost(labels, scores, 1.0, 5.0, folds=2, seed=0)
    assert cv["tp"] + cv["fn"] == 20 and cv["fp"] + cv["tn"] == 30
    assert len(cv["fold_thresholds"]) == 2
    assert cv["cost"] == pytest.approx(cv["fp"] + 5.0 * cv["fn"])
    _, in_sample = cost_optimal_threshold(labels, scores, 1.0, 5.0)
    assert cv["cost"] >= in_sample  # choosing on the same images flatters the optimum
    # Separable scores: the held-out rule is perfect too.
    sep = cross_validated_cost([0, 0, 0, 0, 1, 1, 1, 1], [1, 2, 3, 4, 11, 12, 13, 14], 1, 1)
    assert sep["cost"] == 0
    with pytest.raises(ValueError):
        cross_validated_cost(LABELS, SCORES, folds=1)


def test_summary_line_reads_as_a_sentence():
    c = metrics.confusion(LABELS, SCORES, 0.5)
    assert summary_line(c, "normal-quantile") == (
        "at threshold 0.5 (normal-quantile): 1/2 defective caught, 1/3 good rejected"
    )


def test_explorer_shows_the_rule_and_the_conformal_guarantee(pred, tmp_path):
    pred.save(tmp_path / "predictions.npz")
    good = pred.scores[pred.labels == 0]
    Threshold(
        float(np.quantile(good, 0.9)), "conformal", {"alpha": 0.1, "n": 19, "guarantee": "..."}
    ).save(tmp_path / "threshold.json")
    ex = ThresholdExplorer(tmp_path)
    assert "conformal" in ex.rule.value and "&lt;= 10%" not in ex.rule.value
    assert "guarantees a false-reject rate <= 10%" in ex.rule.value
    assert "guaranteed <= 10%" in ex.confusion.value
    ex.slider.value = ex.slider.max  # moved by hand: no guarantee any more
    assert "set by hand" in ex.rule.value and "guaranteed" not in ex.confusion.value
    assert "2-fold cross-validation" in ex.cost_label.value and "in-sample" in ex.cost_label.value
    cv = cross_validated_cost(pred.labels, pred.scores, 1.0, 10.0, folds=2, repeats=CV_REPEATS)
    assert f"{cv['cost']:.4g}</b>" in ex.cost_label.value
    assert f"from {cv['costs'][0]:.4g} to {cv['costs'][-1]:.4g}" in ex.cost_label.value


def test_held_out_cost_is_the_median_of_several_halvings_with_their_spread():
    rng = np.random.default_rng(3)
    labels = np.array([0] * 25 + [1] * 15)
    scores = rng.normal(labels * 1.5, 1.0)
    assert cross_validated_cost([0, 1], [0.2, 0.7], repeats=3) is None  # a class per half
    one = [cross_validated_cost(labels, scores, 1.0, 10.0, seed=s)["cost"] for s in range(9)]
    cv = cross_validated_cost(labels, scores, 1.0, 10.0, seed=0, repeats=9)
    assert cv["costs"] == sorted(one) and cv["repeats"] == 9
    assert cv["cost"] == sorted(one)[4] and min(one) < max(one)  # one halving is one draw
    assert cv["cost"] == pytest.approx(cv["fp"] + 10.0 * cv["fn"])  # its counts, not averages
    assert cross_validated_cost(labels, scores, 1.0, 10.0, seed=0)["cost"] == one[0]
    with pytest.raises(ValueError, match="repeats"):
        cross_validated_cost(labels, scores, repeats=0)


def test_explorer_says_when_there_are_too_few_images_for_a_held_out_check():
    ex = ThresholdExplorer(synthetic_predictions(3))  # one defective image: no half has both
    assert "Too few good or defective images" in ex.cost_label.value
    assert "Too few good or defective images" in ex.report_html()
    ex.snapshot()  # its short words too


def test_explorer_offers_no_optimum_when_both_costs_are_zero(pred):
    ex = ThresholdExplorer(pred)
    assert not ex.optimum_button.disabled
    ex.cost_false_reject.value, ex.cost_escape.value = 0.0, 0.0
    assert ex.optimum_button.disabled and "both costs are 0" in ex.cost_label.value
    with pytest.raises(ValueError, match="both costs are 0"):
        ex.go_to_optimum()
    ex.cost_escape.value = 5.0
    assert not ex.optimum_button.disabled and "Cost optimum" in ex.cost_label.value


# ---------------------------------------------------------------------------------------------
# Gallery: paging, filter, large view, comparison; report and picture
# ---------------------------------------------------------------------------------------------


def test_gallery_pages_through_every_misclassified_image(pred):
    ex = ThresholdExplorer(pred, gallery_size=4)
    ex.slider.value = float(np.median(pred.scores))
    wrong = set(np.flatnonzero(ex.gallery.wrong()).tolist())
    assert len(wrong) > 4
    seen = []
    for page in range(ex.gallery.n_pages):
        assert ex.gallery.go_to_page(page) == page
        shown = [int(i) for i in ex.gallery.order()[page * 4 : (page + 1) * 4]]
        assert all(c.value for c in ex.gallery.captions[: len(shown)])
        seen += shown
    assert sorted(seen) == sorted(wrong) and len(seen) == len(set(seen))
    assert f"of {len(wrong)}" in ex.gallery.page_label.value
    assert ex.gallery.next_button.disabled and ex.gallery.go_to_page(99) == ex.gallery.n_pages - 1


def test_gallery_filters_by_defect_kind(pred):
    pred.defects = [
        "good" if label == 0 else ("crack" if i % 2 else "hole")
        for i, label in enumerate(pred.labels)
    ]
    ex = ThresholdExplorer(pred)
    assert [v for _, v in ex.gallery.kind.options] == ["", "good", "crack", "hole"]
    ex.gallery.show.value = "all"
    ex.gallery.kind.value = "hole"
    order = ex.gallery.order()
    assert len(order) == pred.defects.count("hole")
    assert {pred.defects[i] for i in order} == {"hole"}
    assert "hole" in ex.gallery.title.value


def test_zoom_shows_image_evidence_and_mask_large(pred):
    ex = ThresholdExplorer(pred, gallery_size=3)
    assert ex.gallery.zoom_box.layout.display == "none"
    ex.gallery.zoom_buttons[1].click()
    i = int(ex.gallery.order()[1])
    assert ex.gallery.zoomed == i and ex.gallery.zoom_box.layout.display is None
    assert len(ex.gallery.zoom_images.children) == 3  # image, evidence, mask
    assert Path(pred.paths[i]).name in ex.gallery.zoom_title.value
    ex.gallery.close_button.click()
    assert ex.gallery.zoom_box.layout.display == "none" and ex.gallery.zoomed is None


def test_compare_two_runs_on_the_same_images():
    a = synthetic_predictions(seed=1, shift=1.0, method="ae")
    b = synthetic_predictions(seed=2, shift=6.0, method="unet")
    ex = ThresholdExplorer({"ae": a, "unet": b})
    g = ex.gallery
    assert [v for _, v in g.compare.options] == ["", "unet"]
    g.compare.value = "unet"
    wa, wb = g.wrong(ex.runs["ae"]), g.wrong(ex.runs["unet"])
    assert f"both right {int(np.sum(~wa & ~wb))}" in g.title.value
    assert "unet: " in g.captions[0].value
    g.show.value = "disagree"
    ta, tb = ex.threshold, ex.threshold_of(ex.runs["unet"])
    expected = np.flatnonzero((a.scores >= ta) != (b.scores >= tb))
    assert sorted(g.order().tolist()) == expected.tolist()
    assert len(expected) > 0
    g.zoom_buttons[0].click()
    assert len(g.zoom_images.children) == 4  # image, evidence, mask, the other's evidence


def test_report_into_a_folder_not_made_yet(pred, tmp_path):
    """Notebook 05 writes its report into runs/notebooks, which exists only once a notebook
    trained a run of its own."""
    pred.save(tmp_path / "predictions.npz")
    path = ThresholdExplorer(tmp_path).export_report(tmp_path / "new" / "report_05.html")
    assert path.read_text().startswith("<!DOCTYPE html>")


def test_report_is_self_contained_html(pred, tmp_path):
    pred.save(tmp_path / "predictions.npz")
    ex = ThresholdExplorer(tmp_path)
    ex.slider.value = float(np.median(pred.scores))
    path = ex.export_report()
    text = path.read_text()
    assert path == tmp_path / "report.html" and text.startswith("<!DOCTYPE html>")
    assert f"{float(ex.threshold)!r}" in text and "anomaly-confusion" in text and "<svg" in text
    n_wrong = int(ex.gallery.wrong().sum())
    assert f"Misclassified images ({n_wrong})" in text
    assert "pixel threshold on a rejected image (on one that passes, the\nstrongest yellow)" in text
    assert text.count("data:image/jpeg;base64,") == n_wrong
    assert "image list sha256" in text and "predictions.npz sha256" in text
    for ref in ("src='http", 'src="http', "href='http", 'href="http', "<script"):
        assert ref not in text  # nothing to fetch, nothing to run: opens without Python
    ex.report_button.click()
    assert "data:text/html;base64," in ex.report_link.value


def test_snapshot_is_a_picture_and_the_widget_has_no_raw_text(pred):
    ex = ThresholdExplorer(pred)
    fig = ex.snapshot()
    assert len(fig.axes) >= 3
    bundle = ex._repr_mimebundle_()
    assert "VBox" not in bundle["text/plain"] and "explorer" in bundle["text/plain"]
    assert "application/vnd.jupyter.widget-view+json" in bundle


def test_app_without_runs_shows_instructions_as_html_not_widget_text(monkeypatch):
    from anomaly.explorer.server import RUNS_ENV, app

    monkeypatch.delenv(RUNS_ENV, raising=False)
    shown = app()
    assert "python -m anomaly explore --run" in shown._repr_html_()
    assert not hasattr(shown, "model_id")  # not a widget: no raw VBox(...) text on the web
