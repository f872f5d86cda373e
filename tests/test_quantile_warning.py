"""`train`'s threshold (the 0.99 quantile of the held-out good images) aims at a false-reject
rate too: `score` says when the labelled good test images are rejected far more often than it
could be, had they been like the held-out ones (a walkthrough's test crops, from another part
of the photo, were all rejected and nothing was said)."""

import numpy as np

from anomaly.decision import guarantee_broken, score_summary
from anomaly.metrics import Threshold, threshold_manual, threshold_normal_quantile


def _labels(good: int = 25, bad: int = 10) -> np.ndarray:
    return np.r_[np.zeros(good), np.ones(bad)]


def test_a_quantile_threshold_that_rejects_most_good_test_images_is_said():
    rng = np.random.default_rng(0)
    t = threshold_normal_quantile(rng.normal(size=20), q=0.99)
    shifted = np.r_[rng.normal(size=25) + 2.5, np.full(10, 9.0)]
    summary = score_summary(_labels(), shifted, {}, t)
    assert "good test images are rejected, far more than the 1 % its rule aims at" in summary
    assert "(the 0.99 quantile of 20 good images)" in summary
    assert "The threshold does not suit them" in summary and "--good-images" in summary
    assert guarantee_broken(_labels(), shifted, threshold_manual(float(t))) is None


def test_it_is_rarely_said_when_the_test_images_are_like_the_held_out_ones():
    rng = np.random.default_rng(1)
    alarms = 0
    for _ in range(1000):
        t = threshold_normal_quantile(rng.normal(size=20), q=0.99)
        scores = np.r_[rng.normal(size=25), np.full(10, 9.0)]
        alarms += guarantee_broken(_labels(), scores, t) is not None
    assert alarms <= 20  # level 0.01, and the test is conservative for a quantile


def test_three_held_out_images_prove_nothing_and_damaged_params_test_nothing():
    """From 3 held-out images the 0.99 quantile lies above the 2nd smallest: 6 of 6 good
    images above it has a chance of 1/12 even when they are alike, so nothing is said."""
    rng = np.random.default_rng(2)
    t = threshold_normal_quantile(rng.normal(size=3), q=0.99)
    labels = _labels(6, 2)
    assert guarantee_broken(labels, np.full(8, 50.0), t) is None
    shifted = np.r_[rng.normal(size=25) + 3, np.full(10, 9.0)]
    for params in ({"q": float("nan"), "n_normal": 20}, {"q": True, "n_normal": 20}, {"q": 0.99}):
        damaged = Threshold(float(t), "normal_quantile", params)
        assert guarantee_broken(_labels(), shifted, damaged) is None


def test_train_says_when_its_threshold_rests_on_a_handful_of_images(tiny_cookies, tmp_path, capsys):
    """30 training photos hold out 3: the 0.99 quantile of 3 scores is about their largest, and
    a quarter of new good parts score above it; `train` said nothing of it."""
    from anomaly.cli import main
    from anomaly.runs import RunDir

    run = tmp_path / "run"
    assert (
        main(["train", "--method", "meandiff", "--data", str(tiny_cookies), "--out", str(run)]) == 0
    )
    n = RunDir(run).threshold().params["n_normal"]
    assert n < 10
    err = capsys.readouterr().err
    assert f"its threshold is the 0.99 quantile of only {n} held-out good image" in err
    assert "--val-fraction" in err and "--good-images FOLDER" in err


def test_the_rate_said_is_the_rate_new_good_parts_see():
    """(n - q (n - 1)) / (n + 1): the mean share of new normal scores above the quantile."""
    from scipy.stats import norm

    from anomaly.decision import few_held_out

    rng = np.random.default_rng(3)
    for n in (3, 9):
        above = [
            norm.sf(float(threshold_normal_quantile(rng.normal(size=n), q=0.99)))
            for _ in range(4000)
        ]
        t = threshold_normal_quantile(rng.normal(size=n), q=0.99)
        t.params["set_by"] = "train"
        rate = (n - 0.99 * (n - 1)) / (n + 1)
        assert abs(np.mean(above) - rate) < 0.01  # 25.5 % from 3 images, 10.8 % from 9
        assert f"about {100 * rate:.0f} % of the time, not 1 %" in few_held_out(t, "RUN")
    many = threshold_normal_quantile(rng.normal(size=20), q=0.99)
    many.params["set_by"] = "train"
    assert few_held_out(many, "RUN") is None  # 20 held out: nothing said
    mine = threshold_normal_quantile(rng.normal(size=3), q=0.99)
    mine.params["set_by"] = "threshold"
    # a user's own choice on held-out images is noted too since session 32 (a walkthrough:
    # `threshold --rule normal-quantile` on 2 images said nothing of the rate they give)
    assert "quantile of only 3 held-out good images" in few_held_out(mine, "RUN")


def test_with_none_held_out_the_note_says_training_images(tiny_cookies, tmp_path, capsys):
    """`--val-fraction 0`: the threshold is set on the training images' own scores; the note
    called them held-out, gave them a rate that holds for held-out images only, and advised
    --val-fraction for a run of one image (a walkthrough)."""
    from anomaly.cli import main
    from anomaly.explorer.text import describe_rule
    from anomaly.runs import RunDir

    run = tmp_path / "run"
    args = ["train", "--method", "meandiff", "--data", str(tiny_cookies), "--out", str(run)]
    assert main([*args, "--val-fraction", "0"]) == 0
    saved = RunDir(run).threshold()
    assert saved.params["on_training_images"] is True
    err = capsys.readouterr().err
    note = err[err.index("note: ") :]
    n = saved.params["n_normal"]
    assert f"the 0.99 quantile of the {n} training images themselves (none was held out)" in note
    assert "held-out" not in note and "--good-images FOLDER" in note
    assert "training images (none held out)" in describe_rule(saved)
    # held out as usual: no such flag, and the held-out note as before
    assert main([*args[:-1], str(tmp_path / "held")]) == 0
    assert "on_training_images" not in RunDir(tmp_path / "held").threshold().params
