"""What a threshold decides, at every threshold at once: counts, costs and the cost optimum.

The explorer moves a threshold over thousands of candidate values; `threshold_table` sorts the
scores once so that the counts at any threshold are one binary search (`counts_at`). The cost
of a threshold is cost_false_reject * false rejects + cost_escape * escapes; `cost_optimum`
finds its minimum, and `cross_validated_cost` says how that rule does on images it did not
choose on. `summary_line` is the one sentence the CLI and the explorer print.

Same convention as `anomaly.metrics` (whose `confusion` dict every function here returns): an
image is predicted defective iff its score is >= the threshold.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from anomaly.config import builds_on
from anomaly.metrics import confusion, confusion_from_counts
from anomaly.terminal import printable, shell_word
from anomaly.threshold_file import UNSUPPORTED, good_images_folder


@dataclass(frozen=True)
class ThresholdTable:
    """The confusion counts at every threshold that makes a difference, for one set of scores.

    Row k holds the counts when the images scoring >= thresholds[k] are flagged defective.
    `thresholds` are the distinct scores in ascending order, then +inf (nothing flagged), so
    any threshold t gives the counts of the first row with thresholds[k] >= t.
    """

    thresholds: np.ndarray  # [M + 1], ascending, last = +inf
    tp: np.ndarray  # defective images flagged
    fp: np.ndarray  # good images flagged: false rejects
    tn: np.ndarray  # good images passed
    fn: np.ndarray  # defective images passed: escapes

    @property
    def n_good(self) -> int:
        return int(self.fp[0] + self.tn[0])

    @property
    def n_defective(self) -> int:
        return int(self.tp[0] + self.fn[0])


def threshold_table(labels, scores) -> ThresholdTable:
    """Counts at every distinct score (and at +inf), by sorting once: O(N log N)."""
    labels = np.asarray(labels).ravel() > 0
    scores = np.asarray(scores, np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.size} labels but {scores.size} scores")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN: the detector produced an invalid score")
    thresholds = np.append(np.unique(scores), np.inf)
    good, bad = np.sort(scores[~labels]), np.sort(scores[labels])
    fp = good.size - np.searchsorted(good, thresholds, side="left")
    tp = bad.size - np.searchsorted(bad, thresholds, side="left")
    return ThresholdTable(thresholds, tp, fp, good.size - fp, bad.size - tp)


def counts_at(table: ThresholdTable, threshold: float) -> dict:
    """`confusion` at one threshold by one binary search in the table: O(log N)."""
    k = min(
        int(np.searchsorted(table.thresholds, threshold, side="left")), len(table.thresholds) - 1
    )
    return confusion_from_counts(
        int(table.tp[k]), int(table.fp[k]), int(table.tn[k]), int(table.fn[k]), threshold
    )


def score_range(scores) -> tuple[float, float]:
    """The scores' span plus 5% each side, so "flag all" and "flag none" are both reachable."""
    scores = np.asarray(scores, np.float64)
    lo, hi = float(scores.min()), float(scores.max())
    if not np.isfinite(2.2 * (hi - lo)):  # its span (and a histogram's bins) past a float's
        raise ValueError(
            f"the scores span {lo:.3g} to {hi:.3g}, more than a float can hold with room to "
            "spare, so no slider or histogram can show them: divide them by a large factor"
        )
    pad = 0.05 * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1.0)
    return lo - pad, hi + pad


def cost_optimum(
    table: ThresholdTable, cost_false_reject: float, cost_escape: float, lo: float, hi: float
) -> tuple[float, float]:
    """`cost_optimal_threshold` on a prepared table and range [lo, hi]: O(M).

    The threshold is the middle of the cheapest interval (u[k-1], u[k]] of the table, so a
    slider that rounds it a little keeps the same counts.
    """
    if cost_false_reject < 0 or cost_escape < 0:
        raise ValueError("costs must be >= 0")
    cost = cost_false_reject * table.fp + cost_escape * table.fn
    k = int(np.argmin(cost))  # first minimum = lowest threshold = fewest escapes among ties
    edges = np.concatenate([[lo], table.thresholds[:-1], [hi]])
    return float((edges[k] + edges[k + 1]) / 2), float(cost[k])


def cost_optimal_threshold(
    labels, scores, cost_false_reject: float = 1.0, cost_escape: float = 1.0
) -> tuple[float, float]:
    """The threshold that minimises cost_false_reject * false rejects + cost_escape * escapes.

    Every threshold between two neighbouring distinct scores gives the same counts; the one
    returned is the middle of the best such interval (or 5% of the score span beyond the
    lowest / highest score when flagging everything / nothing is best). Among equally cheap
    intervals the lowest threshold wins: it lets the fewest defective parts escape. The cost
    is in-sample (the same images chose the threshold): see `cross_validated_cost`.

    Returns:
        (threshold, total cost over these images).
    """
    lo, hi = score_range(scores)
    return cost_optimum(threshold_table(labels, scores), cost_false_reject, cost_escape, lo, hi)


def cross_validated_cost(
    labels,
    scores,
    cost_false_reject: float = 1.0,
    cost_escape: float = 1.0,
    folds: int = 2,
    seed: int = 0,
    repeats: int = 1,
) -> dict:
    """How the cost-optimal rule does on images it did not see: k-fold cross-validation.

    The images are split into `folds` parts (stratified: good and defective shared out
    evenly, by a seeded shuffle); each part is judged at the cost optimum chosen on the other
    parts, and the counts of all parts are added up. Choosing and judging a threshold on the
    same images flatters it; this is the honest estimate of the rule "pick the cost optimum".

    One split is one draw: with a few dozen images another shuffle can move the held-out cost
    by a factor of two. With `repeats` > 1 the whole cross-validation runs on that many
    shuffles (seeds `seed`, `seed` + 1, ...) and the one of median cost is returned (an odd
    number of repeats has one), with the spread of all of them.

    Returns:
        the `confusion` keys for the pooled held-out counts (threshold: the mean of the fold
        thresholds), plus cost (total), folds, fold_thresholds, repeats, and costs (the
        cost of every repeat, ascending); None when there are fewer good or defective images
        than folds (some part would be chosen on, or judged by, one class alone).
    """
    labels = np.asarray(labels).ravel() > 0
    scores = np.asarray(scores, np.float64).ravel()
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if min(int(labels.sum()), int((~labels).sum())) < folds:
        return None
    runs = [
        _one_cross_validation(labels, scores, cost_false_reject, cost_escape, folds, seed + i)
        for i in range(repeats)
    ]
    runs.sort(key=lambda r: r["cost"])
    out = runs[(repeats - 1) // 2]
    out.update(repeats=repeats, costs=[r["cost"] for r in runs])
    return out


def _one_cross_validation(labels, scores, cost_false_reject, cost_escape, folds, seed) -> dict:
    rng = np.random.default_rng(seed)
    part = np.empty(labels.size, np.int64)
    for value in (False, True):
        idx = np.flatnonzero(labels == value)
        part[rng.permutation(idx)] = np.arange(idx.size) % folds
    total = np.zeros(4, np.int64)
    chosen = []
    for f in range(folds):
        fit, held = part != f, part == f
        if not fit.any() or not held.any():
            continue
        t, _ = cost_optimal_threshold(labels[fit], scores[fit], cost_false_reject, cost_escape)
        c = confusion(labels[held], scores[held], t)
        total += [c["tp"], c["fp"], c["tn"], c["fn"]]
        chosen.append(t)
    out = confusion_from_counts(*total.tolist(), float(np.mean(chosen)))
    out.update(
        cost=float(cost_false_reject * out["fp"] + cost_escape * out["fn"]),
        folds=folds,
        fold_thresholds=chosen,
    )
    return out


def summary_line(counts: dict, rule: str | None = None) -> str:
    """One human sentence for a confusion dict, e.g. "at threshold 29.88 (normal-quantile):
    75/90 defective caught, 0/50 good rejected"."""
    n_bad, n_good = counts["tp"] + counts["fn"], counts["fp"] + counts["tn"]
    how = f" ({rule})" if rule else ""
    return (
        f"at threshold {counts['threshold']:.4g}{how}: {counts['tp']}/{n_bad} defective "
        f"caught, {counts['fp']}/{n_good} good rejected"
    )


SUMMARY_METRICS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "aupro")


def score_summary(labels, scores, metrics: dict, threshold=None, defects=None) -> str:
    """What `score` prints: the verdicts at the run's threshold in one sentence, then the
    metrics to 3 decimals (as the tables give them: 0.9995 is 1.000, never a bare 1), e.g.

        at threshold 29.88 (normal_quantile): 75/90 defective caught, 0/50 good rejected
        image_auroc 0.981 (95 % interval 0.96-0.99)  image_ap 0.990  image_f1_max 0.953  ...
        (140 images: good 50, crack 30, mustard 30, plastic 30; 12.3 images/s predicted)

    `threshold` is a `metrics.Threshold` (or a number, or None when the run has none);
    `defects`, each image's kind, are counted (a folder read as a defect kind is seen).
    """
    lines = []
    if threshold is not None:
        rule = getattr(threshold, "rule", None)
        lines.append(summary_line(confusion(labels, scores, float(threshold)), rule))
    else:
        lines.append("no threshold saved: set one with `python -m anomaly threshold`")
    shown = [f"{k} {metrics[k]:.3f}" for k in SUMMARY_METRICS if metrics.get(k) is not None]
    ci = metrics.get("image_auroc_ci")
    if ci is not None and shown and shown[0].startswith("image_auroc "):
        shown[0] += f" (95 % interval {ci[0]:.2f}-{ci[1]:.2f})"
    size = metrics.get("pixel_metrics_size")  # said when not the default (`score --pixel-size`)
    if size not in (None, 256) and any(
        metrics.get(k) is not None for k in ("pixel_auroc", "aupro")
    ):
        h, w = (size, size) if isinstance(size, int) else size
        shown.append(f"(pixel metrics at {w}x{h})")
    lines.append("  ".join(shown) if shown else "no metric could be computed (see notes)")
    speed = metrics.get("predict_images_per_s")
    tail = f", {speed:.3g} images/s predicted" if speed else ""  # the model's rate alone
    kinds = ""
    if defects is not None:
        names, counts = np.unique(np.asarray(defects, str), return_counts=True)
        order = sorted(zip(names, counts), key=lambda nc: (nc[0] != "good", nc[0]))
        kinds = ": " + ", ".join(f"{n} {c}" for n, c in order)
    tail = f";{tail[1:]}" if kinds and tail else tail
    lines.append(f"({len(np.asarray(labels))} images{kinds}{tail})")
    if threshold is not None and (broken := guarantee_broken(labels, scores, threshold)):
        lines.append(broken)
    good = np.asarray(scores, np.float64)[np.asarray(labels) == 0]
    good = good[np.isfinite(good)]
    if len(far := far_above(good)):  # a defect filed under good/?
        lines.append(
            f"note: {len(far)} of the {good.size} good test images score far above the other "
            f"good ones (up to {good[far[0]]:.4g}, median "
            f"{np.median(good):.4g}): defects labelled good, or the model's long tail? They "
            "count as false rejects; the explorer shows them first among the good images"
        )
    return "\n".join(lines)


def rate_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) `level` interval of a rate seen as `k` of `n`: what a count
    of rejected good images (or caught defects) on a test set says of the rate on new parts."""
    from scipy.stats import beta

    if not 0 <= k <= n or n < 1:
        raise ValueError(f"rate_interval: {k} of {n} is not a count of a sample")
    tail = (1 - level) / 2
    lo = float(beta.ppf(tail, k, n - k + 1)) if k > 0 else 0.0
    hi = float(beta.ppf(1 - tail, k + 1, n - k)) if k < n else 1.0
    return lo, hi


def guarantee_broken(labels, scores, threshold, level: float = 0.01) -> str | None:
    """Words saying that the good test images are rejected far more often than the threshold's
    rule allows, or None: so much more that, had they been exchangeable with the n images it
    was set on, the chance of so many would be under `level`.

    Given those n images, a threshold just above the k-th smallest of their scores passes a
    fraction of new good parts distributed as Beta(k, n + 1 - k) (where a new score falls
    among n + 1 exchangeable ones), so the count it rejects of m good images is beta-binomial
    (m, n + 1 - k, k): an exact test of the rule's assumption on the labelled test set. A
    conformal threshold records k; a normal-quantile one (`train`'s, 1 - q the rate it aims
    at) lies above the k-th smallest with k = floor(q (n - 1)) + 1 (numpy's interpolated
    quantile), which makes the test conservative. Other rules (manual, f1) aim at no rate."""
    from scipy.stats import betabinom

    from anomaly.threshold_file import guarantee_words

    params = getattr(threshold, "params", None) or {}
    rule = getattr(threshold, "rule", None)
    if rule == "conformal" and guarantee_words("conformal", params):
        n, k, alpha = params.get("n"), params.get("rank"), params["alpha"]
        aim = f"the guarantee's {100 * alpha:.3g} %"
    elif rule == "normal_quantile" and (saved := _quantile_of(params)):
        n, q = saved
        k, alpha = math.floor(q * (n - 1)) + 1, 1 - q
        aim = f"the {100 * alpha:.3g} % its rule aims at (the {q:g} quantile of {n} good images)"
    else:
        return None  # no rate claimed or aimed at: nothing to test
    labels, scores = np.asarray(labels), np.asarray(scores, np.float64)
    if not (type(n) is int and type(k) is int and 1 <= k <= n) or not np.any(labels == 0):
        return None
    m = int(np.sum(labels == 0))
    rejected = int(np.sum(scores[labels == 0] >= float(threshold)))
    # the upper tail summed from its terms: scipy's sf is 1 - cdf, which bottoms out near 1e-16
    # where the exact chance is far smaller (50 of 50 rejected: 6.2e-18, printed as 1e-16)
    tail = betabinom.logpmf(np.arange(rejected, m + 1), m, n + 1 - k, k)
    chance = float(np.exp(np.logaddexp.reduce(tail))) if rejected else 1.0
    if rejected <= alpha * m or chance >= level:
        return None
    verdict = (
        "the guarantee does not hold for" if rule == "conformal" else "the threshold does not suit"
    )
    return (
        f"warning: {rejected} of the {m} good test images are rejected, far more than {aim}: "
        f"had they been like the {n} images the threshold was set on, so many would have a "
        f"chance of {chance:.1g}. {verdict.capitalize()} them (were those images near-copies of "
        "training ones, or of another batch or camera?); set the threshold on good images like "
        "these: threshold --good-images FOLDER, or where the camera, focus or lighting changed, "
        "retrain on images of the new setup first (a new threshold alone loses defects)"
    )


def rested_on(run, threshold) -> list[float] | None:
    """The good images' scores `threshold` rests on: those its params record (a folder's, or
    the held-out ones less copies of training images), else the run's held-out scores; None
    where there are none to read."""
    from anomaly.safe_files import RunError, finite

    recorded = ((getattr(threshold, "params", None) or {}).get("calibration") or {}).get("scores")
    if isinstance(recorded, list) and all(finite(x) for x in recorded):
        return [float(x) for x in recorded]
    try:
        return [float(x) for x in run.val_scores()["scores"]]
    except (RunError, OSError, KeyError, TypeError, ValueError):
        return None


def batch_outside(scores, good, below_only: bool = False, level: float = 1e-3) -> str | None:
    """Words when more of a batch's `scores` lie outside the range of the `good` scores a
    threshold rests on than good parts like those would put there (chance under `level`), or
    None. Below their lowest: images unlike them that score low (smoother: another focus,
    resolution or compression), where a defect may pass unseen; above their highest, for half
    a batch of 10 or more (not with `below_only`): a batch that bad, or a changed camera or
    lighting rejecting good parts. A new score falls below all n good ones with chance
    Beta(1, n), so a batch of m puts a beta-binomial (m, 1, n) count there (above: the same)."""
    scores = np.asarray([s for s in scores if math.isfinite(s)], np.float64)
    m, n = len(scores), len(good or [])
    if m < 5 or n < 5:
        return None
    from scipy.stats import betabinom  # (a one-image predict: not imported)

    lo, hi = min(good), max(good)
    below, above = int(np.sum(scores < lo)), int(np.sum(scores > hi))
    what = f"score {{}} every one of the {n} good images the threshold rests on"
    if below and (chance := float(betabinom.sf(below - 1, m, 1, n))) < level:
        return (
            f"{below} of these {m} images {what.format('below')} (lowest {lo:.4g}); good parts "
            f"like those would do so with a chance of {chance:.1g}. Images unlike them "
            "(smoother: another focus, resolution or compression?) score low, and a defect in "
            "them may pass: check the camera, and if it changed, retrain on images of the new setup"
        )
    if below_only or m < 10 or above < m / 2:
        return None
    if (chance := float(betabinom.sf(above - 1, m, 1, n))) < level:
        return (
            f"{above} of these {m} images {what.format('above')} (highest {hi:.4g}): a batch "
            "this bad, or images unlike those (camera, focus, lighting or JPEG setting "
            "changed?). Look at a few of them; if good parts are rejected, retrain on images "
            "of the new setup (a threshold set on them alone loses defects)"
        )
    return None


def warn_outside(run, threshold, scores, below_only: bool = False) -> None:
    """Warn, as `batch_outside` words it, of a batch of 5 or more `scores` outside the range of
    the good images' scores `threshold` rests on (`rested_on`; read only for such a batch)."""
    if len(scores) >= 5 and (said := batch_outside(scores, rested_on(run, threshold), below_only)):
        warnings.warn(said, stacklevel=3)


def _quantile_of(params: dict) -> tuple[int, float] | None:
    """(n, q) of a normal-quantile threshold's params, read from a file: n a positive int and q
    a number in [0, 1] (not a bool, not NaN), else None."""
    n, q = params.get("n_normal"), params.get("q")
    if type(n) is not int or n < 1 or isinstance(q, bool) or not isinstance(q, (int, float)):
        return None
    return (n, float(q)) if 0 <= q <= 1 else None


FEWEST_HELD_OUT = 10  # below it train's quantile threshold is about the largest of a handful


def few_held_out(threshold, run, config=None) -> str | None:
    """Words saying that a `normal_quantile` threshold (`train`'s, or `threshold`'s on the held-out
    or a folder's good images) rests on fewer than `FEWEST_HELD_OUT` good images, or on training
    images (none held out), or None.
    numpy's quantile lies at h = q (n - 1) among their n sorted scores (0-based, interpolated),
    and a new good part like them scores above the j-th smallest a fraction (n + 1 - j) / (n +
    1) of the time on average, so above the threshold about (n - h) / (n + 1): from 3 images at
    q 0.99, 26 %, not the 1 % the quantile names (from 20, 5.7 %). Training images score lower
    than new ones (the model learned them), by an amount nothing here measures. `config`: the
    run's, where it builds on another run (`config.builds_on`: kmeans' --from, an `encoder:`
    backbone), whose held-out images it holds out (its own --val-fraction is ignored)."""
    params = getattr(threshold, "params", None) or {}
    if getattr(threshold, "rule", None) != "normal_quantile" or params.get(UNSUPPORTED):
        return None  # (one whose value its scores do not give is said to be no quantile)
    if not (saved := _quantile_of(params)):
        return None
    n, q = saved
    record = params.get("calibration")
    folder = record.get("folder") if isinstance(record, dict) else None
    given = good_images_folder(record)  # resolved: a command works from any working directory
    fix = (
        f"python -m anomaly threshold --run {shell_word(run)} --rule conformal --value 0.05 --good-images "
        + (shell_word(given) if given is not None else "FOLDER")
    )
    own = params.get("set_by") != "train" and isinstance(folder, str)  # threshold --good-images
    if params.get("on_training_images") is True and not own:
        return (
            f"note: {printable(str(run))}: its threshold is the {q:g} quantile of the {n} training "
            f"image{'s' * (n != 1)} themselves (none was held out), which the model learned: new "
            f"good parts score above it more often than {100 * (1 - q):.3g} %, by how much "
            f"nothing here can tell. Set it on other good images: {fix}"
        )
    rate = (n - q * (n - 1)) / (n + 1)
    if n >= FEWEST_HELD_OUT or rate <= 2 * (1 - q):  # a low q: about what it names (and the
        return None  # quantile then lies between their two largest whenever it says this)
    images = (
        f"good image{'s' * (n != 1)} in {printable(folder)}"
        if own
        else (f"held-out good image{'s' * (n != 1)}")
    )
    source = builds_on(config.method, config.backbone) if config is not None else ""
    more = "--val-fraction" + f" of its {source} run: the run holds out what it did" * bool(source)
    advice = (
        "Add good images to the folder, or set a conformal threshold, whose rate counts how few "
        "they are"
        if own
        else f"Hold out more good images ({more}), or set the threshold on other good images"
    )
    largest = "which is that image's score" if n == 1 else "which lies near their largest"
    return (
        f"note: {printable(str(run))}: its threshold is the {q:g} quantile of only {n} {images}, "
        f"{largest}: new good parts like them score above it about {100 * rate:.0f} % of the "
        f"time, not {100 * (1 - q):.3g} %. {advice}: {fix}"
    )


# above the upper quartile by this many interquartile ranges (Tukey's "far out" is 3): over the
# good test images of the benchmark's runs (random 20 of each), 3 fired on 35-85 % of the sets
# of ae, draem, vae and unet+kmeans and on most of tissue's flow; 5 on under 10 % of the runs
# but vae (26 %), unet+kmeans (60 %) and tissue's flow, and still on a typical defect among 19
# good images for patchknn and auto on the cookies and 6 of 8 photo sets (session 30)
FAR_OUT = 5.0


def far_above(scores) -> np.ndarray:
    """The indices of the scores far above the rest (more than `FAR_OUT` interquartile ranges
    above the upper quartile), highest first; none under 8 scores, too few for quartiles. In a
    folder of good images such a score may be a defective part that slipped in, which would
    raise a threshold set on the folder to its level; or a heavy tail of the model's scores."""
    s = np.asarray(scores, np.float64)
    if len(s) < 8:
        return np.empty(0, int)
    q1, q3 = np.quantile(s, [0.25, 0.75])
    out = np.flatnonzero(s > q3 + FAR_OUT * (q3 - q1))
    return out[np.argsort(-s[out])]


# what to do with train's held-out images that score far above the rest (`far_above_words`)
HELD_OUT_FIX = (
    "take them out of the training images and train again (a defect in train/good is learned "
    "as normal, and one held out sets the threshold at its own score)"
)


def far_above_words(names: list[str], scores, fix: str | None = None) -> str | None:
    """Words naming the images (`names`) whose `scores` are far above the rest (`far_above`),
    and what to do (`fix`; default: for a folder of good images that sets a threshold); None
    when there are none."""
    s = np.asarray(scores, np.float64)
    if not len(far := far_above(s)):
        return None
    named = lambda i: names[i] if i < len(names) else f"image {i + 1}"  # (a record without them)
    which = ", ".join(f"{named(i)} ({s[i]:.4g})" for i in far[:3]) + ", ..." * (len(far) > 3)
    fix = fix or (
        "take them out and set the threshold again (it is set as high as the good images' "
        "highest scores allow, so defects among them let defects through)"
    )
    return (
        f"{len(far)} of its {len(s)} images score far above the others (median "
        f"{np.median(s):.4g}): {which}. Look at them: if they are defective parts, {fix}"
    )
