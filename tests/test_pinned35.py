"""Behaviour a helper's mutation audit found unpinned (session 35): each test fails under a
one-line change that every other test let through (a wrong denominator, a self-check that
passed an edited threshold, an off-by-one rank, a rounding)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from anomaly import threshold_file as tf
from anomaly.decision import far_above, guarantee_broken, summary_line
from anomaly.detectors.base import Predictions
from anomaly.metrics import (
    Threshold,
    auroc_interval,
    confusion_from_counts,
    evaluate,
    threshold_conformal,
    threshold_normal_quantile,
)


def test_escape_rate_and_false_reject_rate_have_their_own_denominators() -> None:
    c = confusion_from_counts(tp=65, fp=3, tn=47, fn=25, threshold=1.0)
    assert c["escape_rate"] == pytest.approx(25 / 90)  # of the defective: fn + tp
    assert c["false_reject_rate"] == pytest.approx(3 / 50)  # of the good: fp + tn
    assert c["recall"] == pytest.approx(65 / 90) and c["precision"] == pytest.approx(65 / 68)


def test_the_verdict_line_counts_defective_and_good_apart() -> None:
    c = confusion_from_counts(tp=65, fp=3, tn=47, fn=25, threshold=9.5)
    assert summary_line(c) == "at threshold 9.5: 65/90 defective caught, 3/50 good rejected"


def test_each_kinds_image_count_is_its_own() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    defects = ["good"] * 3 + ["crack"] * 2 + ["stain"] * 3
    pred = Predictions(
        [f"{i}.png" for i in range(8)],
        labels,
        defects,
        np.arange(8, dtype=np.float32),
        np.zeros((8, 4, 4), np.float32),
        np.zeros((8, 4, 4), np.uint8),
        method="x",
    )
    per = evaluate(pred)["per_defect"]
    assert per["crack"]["n_images"] == 2 and per["stain"]["n_images"] == 3


def _unsupported(tmp_path, threshold: Threshold, scores) -> bool:
    (tmp_path / "val_scores.json").write_text(json.dumps({"scores": scores}))
    t = Threshold.from_json(threshold.to_json())
    tf.check_numbers(t, lambda name: tmp_path / name, "val_scores.json", "calib.json")
    return tf.UNSUPPORTED in t.params


def test_a_conformal_threshold_edited_down_or_given_another_n_claims_no_guarantee(tmp_path):
    scores = [float(x) for x in np.linspace(1.0, 3.0, 20)]
    honest = threshold_conformal(scores, 0.1)
    assert not _unsupported(tmp_path, honest, scores)
    lowered = Threshold(honest.value - 0.5, honest.rule, dict(honest.params))
    assert _unsupported(tmp_path, lowered, scores)  # rejects more, says the same guarantee
    more = Threshold(honest.value, honest.rule, dict(honest.params, n=2000))
    assert _unsupported(tmp_path, more, scores)  # "exchangeable with the 2000 ..."


def test_a_quantile_threshold_edited_by_a_millionth_is_caught(tmp_path) -> None:
    scores = [float(x) for x in np.linspace(1.0, 3.0, 30)]
    honest = threshold_normal_quantile(scores, 0.9)
    assert not _unsupported(tmp_path, honest, scores)
    nudged = Threshold(honest.value * (1 + 1e-6), honest.rule, dict(honest.params))
    assert _unsupported(tmp_path, nudged, scores)


@pytest.mark.parametrize("field", ["q", "f1", "false_reject_rate"])
@pytest.mark.parametrize("value", [-3, 7.5])
def test_saved_rates_outside_0_to_1_are_refused(field: str, value: float) -> None:
    text = json.dumps({"value": 1.0, "rule": "f1", "params": {field: value}})
    with pytest.raises(ValueError, match=f"{field} is .*not a number from 0 to 1"):
        Threshold.from_json(text)


def test_the_l2_map_averages_the_colour_channels() -> None:
    from anomaly.maps import l2_map

    x = torch.zeros(1, 3, 2, 2)
    y = x.clone()
    y[0, 0] = 0.5  # one channel off by 0.5: a mean square error of 0.25 / 3
    assert torch.allclose(l2_map(x, y), torch.full((1, 2, 2), 0.25 / 3))


def test_the_bootstrap_draws_every_image() -> None:
    """With one good image scoring above every defective one, resamples that draw it make the
    AUROC 0, others 1: the interval spans both (a draw that skipped the last image gave 1-1)."""
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.9, 0.5, 0.6, 0.7])
    low, high = auroc_interval(labels, scores, n_boot=400)
    assert low < 0.7 and high == 1.0


def test_a_quantile_thresholds_chance_uses_numpys_rank() -> None:
    """k = floor(q (n - 1)) + 1: the chance printed for a normal-quantile threshold."""
    from scipy.stats import betabinom

    n, q, m, rejected = 20, 0.9, 30, 20
    threshold = Threshold(5.0, "normal_quantile", {"q": q, "n_normal": n})
    labels = np.zeros(m, int)
    scores = np.r_[np.full(rejected, 6.0), np.full(m - rejected, 1.0)]
    words = guarantee_broken(labels, scores, threshold)
    k = math.floor(q * (n - 1)) + 1
    chance = betabinom.sf(rejected - 1, m, n + 1 - k, k)
    assert f"chance of {chance:.1g}." in words, words


def test_far_above_is_scale_free_and_needs_eight_scores() -> None:
    s = np.r_[np.linspace(0.001, 0.002, 13), 0.05]
    assert list(far_above(s)) == list(far_above(s * 1000)) == [13]
    assert len(far_above([1, 1, 1.01, 1.02, 100])) == 0  # too few for quartiles


def test_topk_takes_the_ceiling_of_a_fraction_of_pixels() -> None:
    from anomaly.maps import image_score

    m = torch.zeros(1, 64, 64)
    m.view(-1)[:41] = torch.arange(41, 0, -1, dtype=torch.float32)  # 41, 40, ..., 1
    # 1 % of 4,096 pixels is 40.96: the top 41, whose mean is 21 (the top 40 would give 21.5)
    assert float(image_score(m, topk=0.01)) == pytest.approx(21.0)
