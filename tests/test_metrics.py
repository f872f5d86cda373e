"""Metrics against scikit-learn, against a slow reference, and on cases worked out by hand."""

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from anomaly.detectors.base import Predictions
from anomaly.metrics import (
    Threshold,
    aupro,
    auroc_interval,
    confusion,
    evaluate,
    f1_max,
    image_ap,
    image_auroc,
    pixel_auroc,
    pro_curve,
    threshold_f1,
    threshold_manual,
    threshold_normal_quantile,
)


def square_masks(n=4, size=16):
    """n images: the first half good, the second half with one 4x4 defect square each."""
    masks = np.zeros((n, size, size), np.uint8)
    masks[n // 2 :, 4:8, 4:8] = 1
    return masks


def slow_aupro(masks, maps, fpr_limit):
    """Reference: loop over every distinct score, as the definition reads, then trapezoid."""
    regions = []  # (image index, region mask), 8-connected
    for i, m in enumerate(masks):
        lab, k = ndimage.label(m, structure=np.ones((3, 3), int))
        regions += [(i, lab == r) for r in range(1, k + 1)]
    normal = masks == 0
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        hit = maps >= t
        fprs.append((hit & normal).sum() / normal.sum())
        pros.append(np.mean([(hit[i] & r).sum() / r.sum() for i, r in regions]))
    x, y = np.array(fprs), np.array(pros)
    i = np.searchsorted(x, fpr_limit, side="right")
    xs, ys = list(x[:i]), list(y[:i])
    if xs[-1] < fpr_limit:
        ys.append(y[i - 1] + (y[i] - y[i - 1]) * (fpr_limit - x[i - 1]) / (x[i] - x[i - 1]))
        xs.append(fpr_limit)
    xs, ys = np.array(xs), np.array(ys)
    return np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2) / fpr_limit


# --- image level --------------------------------------------------------------------------


def test_image_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.normal(labels * 0.7, 1.0), 1)  # rounded: plenty of ties
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert image_ap(labels, scores) == pytest.approx(average_precision_score(labels, scores))


def test_auroc_interval_is_a_bootstrap_of_the_auroc():
    from anomaly.metrics import _auroc_rows

    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(25), np.ones(40)]
    scores = np.round(rng.normal(size=65) + 1.2 * labels, 1)  # with ties
    # the resamples' AUROC is sklearn's, ties counted half
    pos, neg = scores[labels > 0], scores[labels == 0]
    assert _auroc_rows(pos[None], neg[None])[0] == pytest.approx(roc_auc_score(labels, scores))
    low, high = auroc_interval(labels, scores)
    point = image_auroc(labels, scores)
    assert low < point < high and 0.05 < high - low < 0.4
    assert auroc_interval(labels, scores) == (low, high)  # seeded
    narrow = auroc_interval(labels, scores, level=0.5)
    assert low < narrow[0] < narrow[1] < high
    # each image four times (the same AUROC from four times the images): about half the width
    b_low, b_high = auroc_interval(np.tile(labels, 4), np.tile(scores, 4))
    assert 0.4 * (high - low) < b_high - b_low < 0.6 * (high - low)
    # separated: no resample moves it; the bound for 25 good images none of which was seen
    assert auroc_interval(labels, labels) == pytest.approx((0.025 ** (1 / 25), 1.0))
    with pytest.raises(ValueError, match="good and defective"):
        auroc_interval(np.ones(5), np.arange(5))
    with pytest.raises(ValueError, match="level"):
        auroc_interval(labels, scores, level=95)


def test_f1_max_matches_brute_force():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 100)
    scores = np.round(rng.normal(labels, 1.0), 1)
    best = max(confusion(labels, scores, t)["f1"] for t in np.unique(scores))
    f1, t = f1_max(labels, scores)
    assert f1 == pytest.approx(best)
    assert confusion(labels, scores, t)["f1"] == pytest.approx(f1)


def test_perfect_inverted_and_tied_image_scores():
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.8, 0.9])
    assert image_auroc(labels, scores) == 1.0
    assert image_ap(labels, scores) == 1.0
    assert f1_max(labels, scores) == (1.0, 0.5)  # midway between 0.2 (passed) and 0.8
    assert image_auroc(labels, -scores) == 0.0
    assert image_auroc(labels, np.ones(4)) == 0.5


def test_one_class_raises():
    with pytest.raises(ValueError, match="both good and defective"):
        image_auroc([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="both good and defective"):
        f1_max([1, 1], [0.1, 0.2])


# --- pixel level --------------------------------------------------------------------------


def test_pixel_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(2)
    masks = square_masks(6, 12)
    maps = np.round(rng.normal(masks * 0.8, 1.0), 1).astype(np.float32)
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)


def test_aupro_matches_slow_reference():
    rng = np.random.default_rng(3)
    masks = square_masks(4, 12)
    masks[3, 0:2, 0:3] = 1  # a second, smaller region in the last image
    maps = np.round(rng.normal(masks * 1.0, 1.0), 1).astype(np.float32)
    for limit in (0.05, 0.3, 1.0):
        assert aupro(masks, maps, limit) == pytest.approx(slow_aupro(masks, maps, limit))


def test_perfect_inverted_and_tied_maps():
    masks = square_masks()
    perfect = masks.astype(np.float32)
    assert pixel_auroc(masks, perfect) == 1.0
    assert aupro(masks, perfect) == pytest.approx(1.0)
    assert pixel_auroc(masks, 1 - perfect) == 0.0
    assert aupro(masks, 1 - perfect) == pytest.approx(0.0)
    tied = np.ones_like(perfect)
    assert pixel_auroc(masks, tied) == 0.5
    # All tied: the curve is (0, 0) -> (1, 1); up to 0.3 the area is 0.3 * 0.3 / 2 = 0.045.
    assert aupro(masks, tied) == pytest.approx(0.045 / 0.3)


def test_two_regions_one_detected_by_hand():
    # One 8x8 image: region A (2x2, area 4) scores 1, region B (3x3, area 9) scores 0 like
    # the background. PRO counts regions, not pixels: at t = 1 it is (1 + 0) / 2 = 0.5
    # (pixel-wise it would be 4/13), at FPR 0. At t = 0 everything is flagged: FPR 1, PRO 1.
    mask = np.zeros((8, 8), np.uint8)
    mask[0:2, 0:2] = 1
    mask[4:7, 4:7] = 1
    amap = np.zeros((8, 8), np.float32)
    amap[0:2, 0:2] = 1
    fpr, pro = pro_curve(mask[None], amap[None])
    np.testing.assert_allclose(fpr, [0, 0, 1])
    np.testing.assert_allclose(pro, [0, 0.5, 1])
    # Up to FPR 0.3: PRO rises linearly from 0.5 to 0.5 + 0.5 * 0.3 = 0.65, so the area is
    # 0.3 * (0.5 + 0.65) / 2 = 0.1725 and AUPRO = 0.1725 / 0.3 = 0.575.
    assert aupro(mask[None], amap[None], 0.3) == pytest.approx(0.575)


def test_regions_are_8_connected_and_per_image():
    # Diagonal neighbours form one region (8-connectivity): {(0,0), (1,1)} area 2, plus a
    # single pixel at (5,5). Flag (0,0) and (5,5): PRO = (1/2 + 1) / 2 = 0.75 (4-conn: 2/3).
    mask = np.zeros((1, 8, 8), np.uint8)
    mask[0, 0, 0] = mask[0, 1, 1] = mask[0, 5, 5] = 1
    amap = np.zeros((1, 8, 8), np.float32)
    amap[0, 0, 0] = amap[0, 5, 5] = 1
    fpr, pro = pro_curve(mask, amap)
    assert pro[1] == pytest.approx(0.75) and fpr[1] == 0
    # The same place in two images is two regions: area 1 (flagged) and area 3 (not).
    masks = np.zeros((2, 6, 6), np.uint8)
    masks[0, 2, 2] = 1
    masks[1, 2, 1:4] = 1
    maps = np.zeros((2, 6, 6), np.float32)
    maps[0, 2, 2] = 1
    assert pro_curve(masks, maps)[1][1] == pytest.approx(0.5)


def test_pixel_metrics_need_both_kinds_of_pixel():
    with pytest.raises(ValueError, match="defect region"):
        aupro(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="both defect pixels and normal"):
        pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))


# --- evaluate -----------------------------------------------------------------------------


def make_predictions(with_masks=True):
    # 2 good, 2 "crack" found perfectly, 2 "stain" scored and mapped below everything.
    defects = ["good", "good", "crack", "crack", "stain", "stain"]
    labels = np.array([d != "good" for d in defects], int)
    scores = np.array([0.2, 0.3, 0.9, 0.8, 0.1, 0.05])
    masks = np.zeros((6, 8, 8), np.uint8)
    masks[2:, 2:5, 2:5] = 1
    maps = np.full((6, 8, 8), 0.5, np.float32)
    maps[2:4][masks[2:4] > 0] = 1.0
    maps[4:6][masks[4:6] > 0] = 0.0
    paths = [f"/data/test/{d}/{i:03d}.png" for i, d in enumerate(defects)]
    return Predictions(paths, labels, defects, scores, maps, masks if with_masks else None)


def test_evaluate_overall_and_per_defect():
    out = evaluate(make_predictions())
    assert out["n_images"] == 6 and out["n_good"] == 2 and out["n_defective"] == 4
    assert out["image_auroc"] == pytest.approx(0.5)  # crack above all good, stain below all
    crack, stain = out["per_defect"]["crack"], out["per_defect"]["stain"]
    assert crack["image_auroc"] == 1.0 and crack["image_ap"] == 1.0
    assert crack["pixel_auroc"] == 1.0 and crack["aupro"] == pytest.approx(1.0)
    assert stain["image_auroc"] == 0.0
    assert stain["pixel_auroc"] == 0.0 and stain["aupro"] == pytest.approx(0.0)
    # half the defect pixels above every normal one, half below: both are a half exactly
    assert out["aupro"] == pytest.approx(0.5) and out["pixel_auroc"] == pytest.approx(0.5)
    low, high = out["image_auroc_ci"]
    assert 0 <= low <= 0.5 <= high <= 1
    assert out["notes"] == []
    import json

    json.dumps(out)  # JSON-able


def test_evaluate_without_masks_or_good_images():
    out = evaluate(make_predictions(with_masks=False))
    assert out["pixel_auroc"] is None and out["aupro"] is None
    assert out["per_defect"]["crack"]["image_auroc"] == 1.0
    assert any("no ground-truth masks" in n for n in out["notes"])
    pred = make_predictions()
    keep = [2, 3]
    only_crack = Predictions(
        [pred.paths[i] for i in keep],
        pred.labels[keep],
        [pred.defects[i] for i in keep],
        pred.scores[keep],
        pred.maps[keep],
        pred.masks[keep],
    )
    out = evaluate(only_crack)
    assert out["image_auroc"] is None and out["image_f1_max"] is None
    assert out["image_auroc_ci"] is None
    assert out["per_defect"]["crack"]["image_auroc"] is None
    assert any("all 2 are defective" in n for n in out["notes"])


# --- thresholds and confusion -------------------------------------------------------------

LABELS = np.array([0, 0, 1, 1, 0])
SCORES = np.array([0.1, 0.4, 0.35, 0.8, 0.2])


def test_threshold_rules():
    assert threshold_manual(0.5).value == 0.5
    # the next float above the quantile: a held-out score equal to it passes ("score >= t")
    assert threshold_normal_quantile([0, 1, 2, 3, 4], q=0.5).value == np.nextafter(2.0, 3)
    t = threshold_normal_quantile([0.3, 0.1, 0.2], q=1.0)
    assert t.value == np.nextafter(0.3, 1) and t.rule == "normal_quantile" and t.params["q"] == 1
    assert not (np.array([0.3, 0.1, 0.2]) >= t.value).any()  # q=1 rejects none of them
    # By hand: t=0.8 F1 2/3, t=0.4 F1 1/2, t=0.35 P 2/3 R 1 F1 0.8, t=0.2 2/3, t=0.1 4/7;
    # the threshold sits midway between 0.35 (the lowest flagged) and 0.2 (the highest passed)
    t = threshold_f1(LABELS, SCORES)
    assert t.value == pytest.approx(0.275) and t.params["f1"] == pytest.approx(0.8)


def test_threshold_save_load(tmp_path):
    t = threshold_normal_quantile([0.1, 0.2, 0.3], q=0.99)
    path = t.save(tmp_path / "threshold.json")
    assert path == tmp_path / "threshold.json"
    assert Threshold.load(path) == t
    # a run folder's threshold is RunDir's (anomaly.runs): a folder is refused, not guessed into
    with pytest.raises(IsADirectoryError, match="RunDir"):
        t.save(tmp_path)
    with pytest.raises(IsADirectoryError, match="RunDir"):
        Threshold.load(tmp_path)
    assert Threshold.from_json(t.to_json()) == t
    np.testing.assert_array_equal(t.predict([0.0, t.value, 1.0]), [0, 1, 1])


def test_confusion_counts_by_hand():
    c = confusion(LABELS, SCORES, 0.35)
    assert (c["tp"], c["fp"], c["tn"], c["fn"]) == (2, 1, 2, 0)
    assert c["precision"] == pytest.approx(2 / 3) and c["recall"] == 1.0
    assert c["f1"] == pytest.approx(0.8)
    assert c["false_reject_rate"] == pytest.approx(1 / 3) and c["escape_rate"] == 0.0
    c = confusion(LABELS, SCORES, Threshold(0.4))  # score == threshold counts as anomalous
    assert (c["tp"], c["fp"], c["tn"], c["fn"]) == (1, 1, 2, 1)
    assert c["escape_rate"] == 0.5
    c = confusion(LABELS, SCORES, 10.0)  # nothing flagged: precision defined as 0
    assert c["precision"] == 0.0 and c["escape_rate"] == 1.0 and c["false_reject_rate"] == 0.0


def test_score_summary_gives_the_interval_with_the_auroc():
    from anomaly.decision import score_summary

    labels, scores = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    metrics = {"image_auroc": 0.75, "image_auroc_ci": [0.25, 1.0], "image_ap": 0.83}
    line = score_summary(labels, scores, metrics).splitlines()[1]
    assert line == "image_auroc 0.750 (95 % interval 0.25-1.00)  image_ap 0.830"
    del metrics["image_auroc_ci"]
    assert "interval" not in score_summary(labels, scores, metrics)


def test_image_metrics_equal_scikit_learns_with_ties():
    """image_auroc, image_ap and f1_max are computed here (score needs no sklearn import);
    they agree with scikit-learn's on random labels and scores, with and without ties."""
    from sklearn.metrics import precision_recall_curve

    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(2, 60))
        labels = rng.integers(0, 2, n)
        labels[:2] = (0, 1)
        scores = rng.integers(0, 6, n).astype(float) if trial % 2 else rng.normal(size=n)
        assert image_auroc(labels, scores) == pytest.approx(
            roc_auc_score(labels, scores), abs=1e-12
        )
        assert image_ap(labels, scores) == pytest.approx(
            average_precision_score(labels, scores), abs=1e-12
        )
        precision, recall, thresholds = precision_recall_curve(labels, scores)
        p, r = precision[:-1], recall[:-1]
        f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=p + r > 0)
        best = int(np.flatnonzero(f1 >= f1.max() - 1e-12)[0])  # the lowest cut of the best F1
        got, t = f1_max(labels, scores)
        assert got == pytest.approx(f1[best], abs=1e-12)
        below = np.max(scores[scores < thresholds[best]], initial=-np.inf)  # sklearn's cut
        assert below < t <= thresholds[best] and (t < thresholds[best] or below == -np.inf)


def test_the_f1_threshold_sits_between_scores_not_on_one():
    """`threshold --rule f1` put the threshold exactly on the lowest kept defect's score, so the
    same image re-scored with float noise (ONNX, another machine: ~1e-6) could flip to PASS; it
    now sits midway between that score and the next lower one, with the same F1."""
    labels, scores = [0, 0, 1, 1, 0], [0.1, 0.4, 0.35, 0.8, 0.2]
    t = threshold_f1(labels, scores)
    noisy = np.array(scores) + np.array([1, 1, -1, -1, 1]) * 1e-6  # each a little worse
    assert confusion(labels, noisy, t) == {**confusion(labels, scores, t), "threshold": t.value}
    assert confusion(labels, scores, t)["f1"] == pytest.approx(t.params["f1"])
    # every image flagged: there is no lower score, so it stays on the lowest one
    assert f1_max([1, 1, 0], [0.5, 0.7, 0.5]) == (pytest.approx(0.8), 0.5)
    # neighbouring floats: nothing lies between, so the flagged score itself
    low = np.nextafter(1.0, 0.0)
    assert f1_max([0, 1], [low, 1.0]) == (1.0, 1.0)


def test_f1_threshold_is_the_lowest_cut_of_the_best_f1_even_when_floats_differ():
    """2PR / (P + R) gave equal F1s unequal floats, and argmax took the higher cut (session
    18's metrics audit): the saved f1 threshold then passed a defect the lower cut flags."""
    from anomaly.metrics import f1_max

    labels = np.array([0, 0, 1, 0, 1, 1, 0, 0, 1])
    scores = np.array([1.0, 4, 0, 4, 3, 5, 2, 1, 5])
    f1, threshold = f1_max(labels, scores)  # cuts at 3 and at 5 both give F1 = 2/3 exactly
    assert f1 == pytest.approx(2 / 3) and threshold == 2.5


@pytest.mark.parametrize("name", ["image_auroc", "image_ap", "f1_max", "auroc_interval"])
def test_image_metrics_refuse_nan_scores(name):
    from anomaly import metrics

    with pytest.raises(ValueError, match="1 of the 4 scores are NaN or infinite"):
        getattr(metrics, name)(np.array([0, 0, 1, 1]), np.array([0.1, np.nan, 0.5, 0.7]))


def test_pixel_metrics_refuse_nan_maps():
    from anomaly.pixel_metrics import aupro, pixel_auroc

    masks = np.zeros((1, 4, 4), np.uint8)
    masks[0, :2, :2] = 1
    maps = np.random.default_rng(0).random((1, 4, 4))
    maps[0, 3, 3] = np.nan
    for metric in (pixel_auroc, aupro):
        with pytest.raises(ValueError, match="NaN or infinite"):
            metric(masks, maps)


def test_detectability_rejects_at_most_the_stated_share_of_good_images():
    """The interpolated quantile rejected 2 of 25 good images at a 5 % false-reject rate."""
    from anomaly.benchmark_tables import detectability
    from anomaly.detectors.base import Predictions

    rng = np.random.default_rng(0)
    for n_good in (25, 100, 7):
        n = n_good + 10
        labels = np.r_[np.zeros(n_good), np.ones(10)].astype(int)
        masks = np.zeros((n, 8, 8), np.uint8)
        masks[n_good:, :2, :2] = 1
        pred = Predictions(
            [str(i) for i in range(n)], labels, ["good"] * n_good + ["x"] * 10,
            rng.random(n), np.zeros((n, 8, 8)), masks,
        )  # fmt: skip
        t = detectability(pred, frr=0.05)["threshold"]
        rejected = int((pred.scores[:n_good] >= t).sum())
        assert rejected == int(0.05 * n_good)  # 1 of 25, 5 of 100, 0 of 7


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_evaluate_sorts_pixels_once_and_gives_the_same_numbers(dtype):
    """evaluate hands pixel_auroc and aupro each group's normal pixels sorted once: every number
    is what they compute from the masks and maps alone, ties, blank masks, a defective image
    without a mask file and a kind without any included; a `normal` of the wrong pixels, or
    not sorted, is refused."""
    from anomaly.pixel_metrics import merge_sorted, sorted_normal

    rng = np.random.default_rng(3)
    defects = ["good"] * 5 + ["crack"] * 4 + ["stain"] * 3 + ["hole"]
    n = len(defects)
    masks = np.zeros((n, 16, 16), np.uint8)
    for i in range(5, n):
        y, x = rng.integers(0, 10, 2)
        masks[i, y : y + rng.integers(1, 6), x : x + rng.integers(1, 6)] = 1
    masks[7, 0, 0] = 1  # a second region
    maps = (rng.integers(0, 20, masks.shape) + 4 * masks + rng.random(masks.shape)).astype(dtype)
    labels = np.array([d != "good" for d in defects], int)
    known = np.ones(n, bool)
    known[[11, 12]] = False  # a stain without its mask file, and the only hole
    paths = [f"/d/{i}.png" for i in range(n)]
    pred = Predictions(paths, labels, defects, maps.max((1, 2)), maps, masks, mask_known=known)
    out = evaluate(pred)
    assert out["pixel_auroc"] == pixel_auroc(masks[known], maps[known])
    assert out["aupro"] == aupro(masks[known], maps[known])
    kinds = np.array(defects)
    for kind in ("crack", "stain"):
        rows = ((kinds == kind) | (kinds == "good")) & known
        assert out["per_defect"][kind]["pixel_auroc"] == pixel_auroc(masks[rows], maps[rows])
        assert out["per_defect"][kind]["aupro"] == aupro(masks[rows], maps[rows])
    parts = [sorted_normal(masks[:6], maps[:6]), sorted_normal(masks[6:], maps[6:])]
    merged = merge_sorted(parts)
    assert np.array_equal(merged, sorted_normal(masks, maps))
    assert aupro(masks, maps, 0.3, merged) == aupro(masks, maps)
    with pytest.raises(ValueError, match="normal holds"):
        pixel_auroc(masks, maps, parts[0])
    with pytest.raises(ValueError, match="sorted ascending"):
        aupro(masks, maps, 0.3, merged[::-1])
    assert out["per_defect"]["hole"]["pixel_auroc"] is None  # no known mask: said in notes
    assert any(note.startswith("hole/pixel_auroc") for note in out["notes"])
