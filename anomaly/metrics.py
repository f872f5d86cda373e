"""Metrics and thresholds for anomaly detection: image AUROC / AP / F1-max, pixel AUROC, AUPRO.

Image-level metrics rank whole images by score; pixel-level metrics rank every pixel of the
anomaly maps against the ground-truth masks (`anomaly.pixel_metrics`, whose pixel_auroc,
pro_curve and aupro are re-exported here; MVTec AD's AUPRO is cited there). `evaluate` computes
them all, and the rest of the module chooses thresholds and counts what one decides.

One convention holds everywhere in the project: an image (or pixel) is predicted anomalous iff
its score is >= the threshold. Every function here that takes a threshold follows it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from anomaly.pixel_metrics import (  # noqa: F401 (pixel_auroc, aupro, pro_curve re-exported)
    aupro,
    merge_sorted,
    pixel_auroc,
    pro_curve,
    sorted_normal,
)
from anomaly.threshold_file import check_threshold, conformal_rank, normal_quantile

# --- Image-level metrics -------------------------------------------------------------------------


def _labels(labels, what: str, n: int) -> np.ndarray:
    """`n` labels as booleans (0 good, 1 defective); ValueError for others ("> 0" misreads 1/2)."""
    a = np.asarray(labels).ravel()
    if a.size != n:
        raise ValueError(f"{what}: {a.size} labels for {n} scores")
    if a.dtype != bool and a.size and not (known := np.isin(a, (0, 1))).all():
        odd = np.unique(a[~known])[:5].tolist()
        raise ValueError(f"{what}: labels are 0 (good) and 1 (defective), not {odd}")
    return a > 0


def _check_binary(labels: np.ndarray, what: str) -> None:
    n_pos = int(np.count_nonzero(labels))
    if n_pos == 0 or n_pos == labels.size:
        kind = "defective" if n_pos else "good"
        raise ValueError(
            f"{what} needs both good and defective samples, but all {labels.size} are {kind}"
        )


def image_auroc(labels, scores) -> float:
    """Area under the ROC curve of image scores (0.5 = chance, 1.0 = perfect ranking); ties
    count one half, as scikit-learn's roc_auc_score (the same value, without importing it)."""
    labels, scores = _checked(labels, scores, "image_auroc")
    return float(_auroc_rows(scores[labels][None], scores[~labels][None])[0])


def auroc_interval(
    labels, scores, level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """A bootstrap confidence interval of the image AUROC: (low, high) at `level`.

    Stratified: each of `n_boot` resamples draws the good and the defective images separately,
    with replacement, in their own numbers; the interval is the resamples' AUROC percentiles.
    It says how much the AUROC could move with another draw of test images of the same kinds,
    which is large for the small test sets anomaly detection has (0.70-0.90 around 0.80 at 25
    good and 42 defective images, the photo suite's sets): methods whose AUROCs differ by less
    than that are not shown apart by such a test set. It does not cover another training set
    or seed. Deterministic for a `seed`.

    Perfectly separated scores (AUROC 1 or 0) give every resample the same AUROC, an interval
    of no width however few the images (1.00-1.00 from one good and one defective image): there
    the bound is how many of the smaller class could lie on the other side unseen, Clopper and
    Pearson's for none seen of n at the same tail, 1 - ((1 - level) / 2) ** (1 / n) (0.14 at
    n = 25, 0.98 at n = 1). An AUROC within that bound of 1 (or 0) has its interval reach it
    too: one that is nearly separated is no surer than one that is separated.
    """
    labels, scores = _checked(labels, scores, "auroc_interval")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level is a probability in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    pos, neg = scores[labels], scores[~labels]
    pos = pos[rng.integers(0, len(pos), (n_boot, len(pos)))]
    neg = neg[rng.integers(0, len(neg), (n_boot, len(neg)))]
    auc = _auroc_rows(pos, neg)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(auc, [tail, 100 - tail])
    unseen = 1 - ((1 - level) / 2) ** (1 / min(len(pos[0]), len(neg[0])))
    auroc = image_auroc(labels, scores)
    if auroc >= 1 - unseen:
        low = min(low, 1 - unseen)
    elif auroc <= unseen:
        high = max(high, unseen)
    return float(low), float(high)


def _auroc_rows(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC of each row pair: defective scores pos [B, P] against good scores neg [B, N].

    P(defective > good) + P(tie) / 2 over all pairs, by sorted search: B x P log N instead of
    B x P x N comparisons."""
    neg = np.sort(neg, axis=1)
    below = np.stack([np.searchsorted(n, p, side="left") for n, p in zip(neg, pos)])
    upto = np.stack([np.searchsorted(n, p, side="right") for n, p in zip(neg, pos)])
    return (below + 0.5 * (upto - below)).sum(1) / (pos.shape[1] * neg.shape[1])


def _cuts(labels: np.ndarray, scores: np.ndarray):
    """Counts of "anomalous iff score >= t" at every distinct score t, thresholds descending:
    (true positives, images flagged, t)."""
    order = np.argsort(-scores, kind="mergesort")
    ranked, hits = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(ranked)), ranked.size - 1]  # each score's last image
    return np.cumsum(hits)[last], last + 1, ranked[last]


def _precision_recall(labels: np.ndarray, scores: np.ndarray):
    """Precision and recall of "anomalous iff score >= t" at every distinct score t, thresholds
    ascending: scikit-learn's precision_recall_curve without its final (1, 0) point."""
    tp, flagged, thresholds = _cuts(labels, scores)
    precision, recall = tp / flagged, tp / tp[-1]
    return precision[::-1], recall[::-1], thresholds[::-1]


def _checked(labels, scores, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels as booleans and scores as float64, flat; ValueError when the labels are of one
    class or a score is NaN or infinite (it has no place in a ranking)."""
    scores = np.asarray(scores, np.float64).ravel()
    labels = _labels(labels, what, scores.size)
    _check_binary(labels, what)
    if not np.isfinite(scores).all():
        bad = int(np.count_nonzero(~np.isfinite(scores)))
        raise ValueError(
            f"{what}: {bad} of the {scores.size} scores are NaN or infinite; a model that gives "
            "them ranks nothing (train it again)"
        )
    return labels, scores


def image_ap(labels, scores) -> float:
    """Average precision of image scores: sum over thresholds of precision times the recall it
    adds (scikit-learn's average_precision_score, no interpolation)."""
    labels, scores = _checked(labels, scores, "image_ap")
    precision, recall, _ = _precision_recall(labels, scores)
    return float(np.sum(np.diff(np.r_[0.0, recall[::-1]]) * precision[::-1]))


def f1_max(labels, scores) -> tuple[float, float]:
    """Best F1 over all thresholds, and a threshold that reaches it (anomalous iff >= it).

    Of the cuts between two neighbouring distinct scores that reach the best F1, the lowest;
    the threshold sits midway between the lowest score it flags and the highest it passes
    (the next lower score in the data), not on the flagged score itself, so the same image
    scored again with float noise (ONNX, another machine: about 1e-6) keeps its verdict. When
    every image is flagged there is no lower score: it is then the lowest score.
    """
    labels, scores = _checked(labels, scores, "f1_max")
    tp, flagged, thresholds = (a[::-1] for a in _cuts(labels, scores))  # thresholds ascending
    # F1 = 2 tp / (flagged + positives), from whole counts: equal F1s are equal floats, so the
    # first maximum is the lowest cut (2PR / (P + R) could differ by a rounding step)
    f1 = 2 * tp / (flagged + np.count_nonzero(labels))
    best = int(np.argmax(f1))
    value = float(thresholds[best])
    if best:  # a lower score passes: midway between it and the lowest flagged one
        value = _between(float(thresholds[best - 1]), value)
    return float(f1[best]), value


def _between(passed: float, flagged: float) -> float:
    """A value midway between two scores, passed < flagged: one >= it is `flagged`'s and not
    `passed`'s (`flagged` itself when no float lies strictly between them)."""
    mid = float(passed / 2 + flagged / 2)  # halves first: no overflow near the float maximum
    return mid if passed < mid <= flagged else float(flagged)


# --- Everything at once, overall and per defect kind ---------------------------------------------


def _try(fn, *args, notes: list[str], name: str, **kwargs):
    try:
        return fn(*args, **kwargs)
    except ValueError as err:
        notes.append(f"{name}: {err}")
        return None


def _pixel_metrics(masks, maps, fpr_limit: float, notes: list[str], prefix: str, normal) -> dict:
    return {
        "pixel_auroc": _try(
            pixel_auroc, masks, maps, normal, notes=notes, name=f"{prefix}pixel_auroc"
        ),
        "aupro": _try(aupro, masks, maps, fpr_limit, normal, notes=notes, name=f"{prefix}aupro"),
    }


def _sorted_normals(pred, known: np.ndarray) -> dict[str, np.ndarray] | None:
    """Each defect kind's (and the good images') normal pixels, sorted once for all of
    `evaluate`'s pixel metrics; None where the maps cannot be ranked (the metrics say why)."""
    from anomaly.prefetch import in_threads  # numpy sorts outside Python's lock: two at once

    defects = np.asarray(pred.defects)
    kinds = [k for k in sorted(set(defects[known])) if (known & (defects == k)).any()]
    try:
        return dict(
            zip(kinds, in_threads(lambda k: _sorted_of(pred, known & (defects == k)), kinds, 2))
        )
    except ValueError:
        return None


def _sorted_of(pred, rows: np.ndarray) -> np.ndarray:
    return sorted_normal(pred.masks[rows], pred.maps[rows])


def _normal_of(normals: dict[str, np.ndarray] | None, kinds) -> np.ndarray | None:
    if normals is None:
        return None
    return merge_sorted([normals[k] for k in sorted(set(kinds)) if k in normals] or [np.empty(0)])


def evaluate(pred, fpr_limit: float = 0.3) -> dict:
    """All metrics of a `Predictions`, overall and per defect kind, as a JSON-able dict.

    Overall: image_auroc with its 95 % bootstrap interval image_auroc_ci (`auroc_interval`),
    image_ap, image_f1_max, f1_threshold, and pixel_auroc, aupro when the predictions carry
    ground-truth masks. `per_defect[kind]` evaluates the images of one kind
    against the good images only. A metric that cannot be computed (for example only one
    class present, or no masks) is None, and `notes` says why. Defective images whose mask is
    unknown (`pred.mask_known` False: no mask file) are left out of the pixel metrics, and
    `n_missing_masks` counts them.

    Pixel metrics are computed at the maps' own size (the model's); `score` computes them at
    256 x 256 (or `--pixel-size`), so its metrics.json can differ in the third decimal, and AUPRO
    more (README, "Trust and safety"). For score's numbers from Python, evaluate
    `anomaly.pixel_eval.at_eval_size(pred, mask_paths, 256)`, as `score_run` does.
    """
    notes: list[str] = []
    labels, scores = pred.labels, pred.scores
    known = getattr(pred, "mask_known", None)
    known = np.ones(len(labels), bool) if known is None else np.asarray(known, bool)
    out: dict = {
        "n_images": len(pred),
        "n_good": int(np.sum(labels == 0)),
        "n_defective": int(np.sum(labels > 0)),
        "image_auroc": _try(image_auroc, labels, scores, notes=notes, name="image_auroc"),
        "image_ap": _try(image_ap, labels, scores, notes=notes, name="image_ap"),
    }
    out["image_auroc_ci"] = (  # no second note when there is no AUROC to bound
        auroc_interval(labels, scores) if out["image_auroc"] is not None else None
    )
    best = _try(f1_max, labels, scores, notes=notes, name="f1_max")
    out["image_f1_max"], out["f1_threshold"] = best if best else (None, None)
    defects = np.asarray(pred.defects)
    normals = _sorted_normals(pred, known) if pred.has_masks else None
    at = len(notes)  # where the overall pixel metrics' notes go: they are computed last
    if pred.has_masks:
        out["pixel_auroc"] = out["aupro"] = None  # set after the kinds', when the parts are gone
        out["fpr_limit"] = fpr_limit
        out["n_missing_masks"] = int((~known).sum())
        if out["n_missing_masks"]:
            notes.append(
                f"pixel metrics: {out['n_missing_masks']} defective images have no mask "
                "file and are left out of them"
            )
    else:
        out["pixel_auroc"] = out["aupro"] = None
        notes.append("pixel metrics: the predictions have no ground-truth masks")

    out["per_defect"] = {}
    for kind in sorted(set(pred.defects) - {"good"}):
        rows = (defects == kind) | (defects == "good")
        sub_labels, sub_scores = labels[rows], scores[rows]
        per = {
            "n_images": int(np.sum(defects == kind)),
            "image_auroc": _try(
                image_auroc, sub_labels, sub_scores, notes=notes, name=f"{kind}/image_auroc"
            ),
            "image_ap": _try(
                image_ap, sub_labels, sub_scores, notes=notes, name=f"{kind}/image_ap"
            ),
            "pixel_auroc": None,
            "aupro": None,
        }
        if pred.has_masks:
            rows = rows & known
            normal = _normal_of(normals, ("good", kind))
            masks, maps = pred.masks[rows], pred.maps[rows]
            per.update(_pixel_metrics(masks, maps, fpr_limit, notes, f"{kind}/", normal))
        out["per_defect"][kind] = per
    if pred.has_masks:  # merged last, the kinds' parts let go first: one copy of the pixels
        normal, normals = _normal_of(normals, defects), None
        overall: list[str] = []
        masks, maps = pred.masks[known], pred.maps[known]
        out.update(_pixel_metrics(masks, maps, fpr_limit, overall, "", normal))
        notes[at:at] = overall
    out["notes"] = notes
    return out


# --- Thresholds and the confusion matrix at one threshold ----------------------------------------


@dataclass
class Threshold:
    """A decision threshold and how it was chosen; a score >= value means anomalous.

    Attributes:
        value: the threshold on the image score.
        rule: how it was chosen: "manual", "normal_quantile", "conformal" or "f1".
        params: what the rule used (the quantile, the F1 reached, ...).
    """

    value: float
    rule: str = "manual"
    params: dict = field(default_factory=dict)

    def __float__(self) -> float:
        return float(self.value)

    def predict(self, scores) -> np.ndarray:
        """1 where score >= value (anomalous), else 0; a NaN score (a broken model) is 1:
        rejected, never passed, as `predict` says it."""
        return rejected_by(scores, self.value).astype(np.int64)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str, where: str = "a saved threshold") -> Threshold:
        """Read `to_json`'s text (of the file `where`); ValueError for what would decide wrongly
        or crash a reader (a value that is not a finite number, an unknown rule, a param of the
        wrong kind: `anomaly.threshold_file.check_threshold`)."""
        return cls(*check_threshold(json.loads(text), where))

    def save(self, path: str | Path) -> Path:
        """Write to the file `path` (a run folder's threshold: `anomaly.runs.RunDir`)."""
        path = _threshold_file(path)
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Threshold:
        """Read the file `path` (a run folder's threshold: `anomaly.runs.RunDir`)."""
        from anomaly.safe_files import read_record

        return cls.from_json(read_record(_threshold_file(path)))


def _threshold_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"{path} is a folder: pass the threshold's file; a run folder's threshold is read "
            "with RunDir(run).threshold() and set with anomaly.set_threshold(run, 'manual', value) "
            "(which also removes score's overlays drawn at the earlier one)"
        )
    return path


def rejected_by(scores, threshold: float) -> np.ndarray:
    """Whether each score is predicted defective: at or above `threshold`, or NaN (a score that
    is not a number rejects its part; it never passes)."""
    scores = np.asarray(scores, np.float64)
    return (scores >= float(threshold)) | np.isnan(scores)


def threshold_manual(value: float) -> Threshold:
    """A threshold set by hand."""
    return Threshold(float(value), "manual", {})


def threshold_normal_quantile(normal_scores, q: float = 0.99) -> Threshold:
    """The q-quantile of held-out normal scores (q=1.0 is their maximum).

    About (1 - q) of normal parts like these score above it and would be rejected. The value is
    the next float above the quantile, as for `threshold_conformal`: with "anomalous iff score
    >= threshold", a held-out score equal to the quantile (their maximum at q=1.0) passes, so
    q=1.0 rejects none of them (it rejected the maximum).
    """
    normal_scores = np.asarray(normal_scores, np.float64).ravel()
    if normal_scores.size == 0:
        raise ValueError("threshold_normal_quantile needs at least one normal score")
    if not np.all(np.isfinite(normal_scores)):  # its quantile would be NaN: every part rejected
        raise ValueError("threshold_normal_quantile: the normal scores contain NaN or inf")
    if not 0 <= q <= 1:
        raise ValueError(f"q must be in [0, 1], got {q}")
    value = normal_quantile(normal_scores, q)
    return Threshold(value, "normal_quantile", {"q": q, "n_normal": int(normal_scores.size)})


def conformal_n_needed(alpha: float) -> int:
    """The fewest held-out normal images for which `threshold_conformal` accepts `alpha`."""
    if not 0 < alpha < 1:
        percent = f" (for {alpha:g} %, give {alpha / 100:g})" if 1 <= alpha < 100 else ""
        raise ValueError(
            f"alpha (the false-reject rate to guarantee) must be in (0, 1), got {alpha}{percent}"
        )
    return max(1, int(np.ceil((1 - alpha) / alpha - 1e-9)))


def smallest_alpha(n: int) -> str:
    """The smallest alpha that a conformal threshold on `n` normal images accepts, 1/(n+1),
    written with 4 significant digits rounded up, so that the value suggested is accepted (a
    rounded 1/9 = 0.1111 is below it and was refused by the same check that suggested it)."""
    exact = 1 / (n + 1)
    step = 10.0 ** (math.floor(math.log10(exact)) - 3)
    value = math.ceil(exact / step - 1e-9) * step
    while conformal_n_needed(float(f"{value:.4g}")) > n:  # a last digit lost to float rounding
        value += step
    return f"{value:.4g}"


def threshold_conformal(normal_scores, alpha: float) -> Threshold:
    """A threshold with a guaranteed false-reject rate: split conformal prediction.

    With the n held-out normal scores sorted, the threshold sits just above the k-th smallest,
    k = ceil((n + 1)(1 - alpha)). If a new good part's score is exchangeable with those n (the
    same process, nothing about it singles it out: the held-out images were not used to train),
    the chance it scores above all but n - k of them is at most (n + 1 - k) / (n + 1) <= alpha,
    so at most alpha of new good parts are rejected on average over the choice of held-out
    images (and at least alpha - 1 / (n + 1) when scores have no ties). Vovk, Gammerman, Shafer,
    "Algorithmic Learning in a Random World", 2005; Angelopoulos and Bates, "A Gentle
    Introduction to Conformal Prediction", 2021.

    The value is the next float above that score, so "anomalous iff score >= threshold" flags
    exactly the scores above it, and ties with the k-th score pass (the guarantee holds with
    ties too). Refuses alpha < 1 / (n + 1): no rank of n scores can guarantee it.
    """
    normal_scores = np.asarray(normal_scores, np.float64).ravel()
    n = int(normal_scores.size)
    need = conformal_n_needed(alpha)
    if not np.all(np.isfinite(normal_scores)):
        raise ValueError("threshold_conformal: the held-out normal scores contain NaN or inf")
    if n < need:
        raise ValueError(
            f"a conformal threshold at alpha={alpha:g} needs at least {need} held-out normal "
            f"images (alpha >= 1/(n+1)); this run has {n}. Hold out more good images (a larger "
            f"val_fraction or more training images), or use alpha >= {smallest_alpha(n)}"
        )
    k = conformal_rank(n, alpha)
    kth = float(np.sort(normal_scores)[k - 1])
    guarantee = (
        f"false-reject rate <= {100 * alpha:.3g}% for new good parts from the same "
        f"process (exchangeable with the {n} held-out good image{'s' * (n != 1)})"
    )
    return Threshold(
        float(np.nextafter(kth, np.inf)),
        "conformal",
        {"alpha": float(alpha), "n": n, "rank": k, "guarantee": guarantee},
    )


def threshold_f1(labels, scores) -> Threshold:
    """The threshold that maximises F1 on labelled scores (optimistic if they are test data)."""
    flags = np.asarray(labels).ravel() > 0
    if flags.size and (flags.all() or not flags.any()):  # the command's user needs the fix
        raise ValueError(
            f"--rule f1 chooses the threshold on scored test images, good and defective, but all "
            f"{flags.size} are {'defective' if flags.all() else 'good'}. Score a test set that has "
            "both, or set the threshold on good images alone: --rule conformal --value 0.05"
        )
    f1, value = f1_max(labels, scores)
    return Threshold(value, "f1", {"f1": f1, "n_images": int(np.size(labels))})


def confusion(labels, scores, threshold: float | Threshold) -> dict:
    """Counts and rates at one threshold; a score >= threshold (or NaN) is predicted defective:
    tp, fp, tn, fn; precision, recall, f1; false_reject_rate (good parts rejected / good parts)
    and escape_rate (defective parts passed / defective parts), 0.0 where nothing is divided."""
    rejected = rejected_by(np.ravel(scores), threshold)  # NaN: rejected, as predict says it
    labels = _labels(labels, "confusion", rejected.size)
    tp = int(np.sum(rejected & labels))
    fp = int(np.sum(rejected & ~labels))
    tn = int(np.sum(~rejected & ~labels))
    fn = int(np.sum(~rejected & labels))
    return confusion_from_counts(tp, fp, tn, fn, float(threshold))


def confusion_from_counts(tp: int, fp: int, tn: int, fn: int, threshold: float) -> dict:
    """The dict of `confusion` from the four counts (a rate with a zero denominator is 0.0)."""

    def rate(a: float, b: float) -> float:
        return a / b if b else 0.0

    precision, recall = rate(tp, tp + fp), rate(tp, tp + fn)
    return {
        "threshold": float(threshold),
        "tp": int(tp),
        "fp": int(fp),
        "tn": int(tn),
        "fn": int(fn),
        "precision": precision,
        "recall": recall,
        "f1": rate(2 * precision * recall, precision + recall),
        "false_reject_rate": rate(fp, fp + tn),
        "escape_rate": rate(fn, fn + tp),
    }
