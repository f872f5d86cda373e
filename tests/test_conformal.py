"""The conformal threshold: its exact rank, its refusal, and that its guarantee holds.

The coverage tests draw many random calibration/test splits of normal scores and check the mean
false-reject rate: at most alpha (up to sampling error), and not far below alpha - 1/(n+1), the
known lower end of split conformal prediction for scores without ties.
"""

import numpy as np
import pytest

from anomaly.metrics import Threshold, conformal_n_needed, threshold_conformal


def _mean_false_reject(
    pool: np.ndarray, n_cal: int, alpha: float, splits: int, seed: int = 0, rank_shift: int = 0
) -> tuple[float, float]:
    """Mean and standard error of the false-reject rate over random splits of `pool`."""
    rng = np.random.default_rng(seed)
    rates = []
    for _ in range(splits):
        order = rng.permutation(len(pool))
        cal, test = pool[order[:n_cal]], pool[order[n_cal:]]
        t = threshold_conformal(cal, alpha)
        if rank_shift:  # a deliberately wrong rule, to show the check can fail
            t = Threshold(
                float(np.nextafter(np.sort(cal)[t.params["rank"] - 1 + rank_shift], np.inf))
            )
        rates.append(np.mean(t.predict(test)))
    rates = np.asarray(rates)
    return float(rates.mean()), float(rates.std(ddof=1) / np.sqrt(splits))


def test_threshold_is_just_above_the_kth_smallest_score():
    scores = np.random.default_rng(1).permutation(np.arange(1.0, 21.0))  # 1..20, shuffled
    t = threshold_conformal(scores, alpha=0.1)
    # n = 20: k = ceil(21 * 0.9) = ceil(18.9) = 19, the 19th smallest is 19.0
    assert t.params["rank"] == 19 and t.params["n"] == 20 and t.rule == "conformal"
    assert 19.0 < t.value < 19.0 + 1e-9
    assert t.predict([19.0, 20.0]).tolist() == [0, 1]  # a tie with the k-th score passes
    assert "<= 10% for new good parts" in t.params["guarantee"]
    assert "20 held-out good images" in t.params["guarantee"]


def test_smallest_n_takes_the_maximum_and_survives_json():
    scores = np.linspace(0, 1, 99)
    t = threshold_conformal(scores, alpha=0.01)  # 1/(99+1) = 0.01 exactly: allowed
    assert t.params["rank"] == 99 and t.value > 1.0
    back = Threshold.from_json(t.to_json())
    assert back == t


def test_refuses_an_alpha_that_n_scores_cannot_guarantee():
    assert conformal_n_needed(0.01) == 99
    assert conformal_n_needed(0.05) == 19
    assert conformal_n_needed(0.5) == 1
    with pytest.raises(ValueError, match="needs at least 99 held-out normal images.*has 20"):
        threshold_conformal(np.arange(20.0), alpha=0.01)
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        threshold_conformal(np.arange(20.0), alpha=0.0)
    with pytest.raises(ValueError, match="NaN"):
        threshold_conformal(np.array([1.0, np.nan] * 20), alpha=0.1)


@pytest.mark.parametrize("n_cal,alpha", [(19, 0.1), (50, 0.05), (99, 0.01)])
def test_coverage_on_synthetic_scores(n_cal, alpha):
    # continuous scores (no ties); each split draws fresh calibration and test normals
    rng = np.random.default_rng(n_cal)
    rates = []
    for _ in range(2000):
        cal, test = rng.gamma(2.0, size=n_cal), rng.gamma(2.0, size=50)
        rates.append(np.mean(threshold_conformal(cal, alpha).predict(test)))
    mean, se = float(np.mean(rates)), float(np.std(rates, ddof=1) / np.sqrt(len(rates)))
    margin = 4 * se
    assert mean <= alpha + margin
    assert mean >= alpha - 1 / (n_cal + 1) - margin


def test_coverage_check_catches_a_rank_one_too_low():
    # the same check on a rule one rank lower (k - 1) must fail: the test has power
    pool = np.random.default_rng(3).normal(size=200)
    mean, se = _mean_false_reject(pool, n_cal=19, alpha=0.1, splits=2000, rank_shift=-1)
    assert mean > 0.1 + 4 * se  # expected 3/20 = 0.15


@pytest.fixture(scope="module")
def real_normal_scores(tiny_cookies, tmp_path_factory):
    """patchknn (64 px) fitted on the tiny set's 8 good images, scoring 24 other good cookies
    (the toy preset of another seed: the same generator, so exchangeable normal parts)."""
    from anomaly.config import Config
    from anomaly.data import AnomalyDataset, make_cookies
    from anomaly.detectors import get_detector

    toy = tmp_path_factory.mktemp("conformal") / "toy"
    make_cookies(toy, preset="toy", seed=1, size=64)
    config = Config.for_method("patchknn", data=str(tiny_cookies), size=64)
    detector = get_detector("patchknn")(config)
    detector.fit(AnomalyDataset(tiny_cookies, "train", size=64, channels=3))
    normal = [AnomalyDataset(toy, split, size=64, channels=3) for split in ("train", "test")]
    scores = np.concatenate([detector.predict(d).scores[d.labels == 0] for d in normal])
    assert len(scores) == 24 and len(np.unique(scores)) == 24
    return scores


def test_coverage_on_a_real_runs_normal_scores(real_normal_scores):
    n_cal, alpha = 19, 0.1  # k = 18: exactly 2 of 20 ranks above the threshold
    mean, se = _mean_false_reject(real_normal_scores, n_cal, alpha, splits=2000)
    assert mean <= alpha + 4 * se
    assert mean >= alpha - 1 / (n_cal + 1) - 4 * se
