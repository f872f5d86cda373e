"""Pixel-level metrics of anomaly maps against ground-truth masks: pixel AUROC and AUPRO.

Pixel AUROC ranks every pixel of the anomaly maps against the masks; AUPRO is the area under
the per-region overlap curve up to a false positive rate of 0.3, as defined for the MVTec AD
benchmark:

    Bergmann, Fauser, Sattlegger, Steger. "MVTec AD - A Comprehensive Real-World Dataset for
    Unsupervised Anomaly Detection", CVPR 2019; and Bergmann, Batzner, Fauser, Sattlegger,
    Steger. "The MVTec Anomaly Detection Dataset", IJCV 2021.

A pixel is anomalous at a threshold iff its score is >= it, as everywhere in the project.
`anomaly.metrics` re-exports these and evaluates them with the image-level metrics. Both sort
the normal pixels; a caller that evaluates several sets of images that share most of them
(`anomaly.metrics.evaluate`: all images, then each defect kind with the good images) sorts each
group's once (`sorted_normal`), merges the groups of a set (`merge_sorted`) and passes that as
`normal`: the same numbers, without sorting the good images' pixels again for every kind.
"""

from __future__ import annotations

import numpy as np


def _pixels(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    masks, maps = np.asarray(masks), np.asarray(maps)
    if masks.shape != maps.shape:
        raise ValueError(f"masks {masks.shape} and maps {maps.shape} must have the same shape")
    if not np.isfinite(maps).all():  # a NaN pixel has no place in a ranking of pixels
        raise ValueError("the maps hold NaN or infinite values; the model gives no usable maps")
    return masks > 0, maps


def sorted_normal(masks, maps) -> np.ndarray:
    """The scores of the normal pixels (mask == 0) of the maps, ascending: what `pixel_auroc`,
    `pro_curve` and `aupro` take as `normal`."""
    return _normal(*_pixels(masks, maps), None)


def merge_sorted(parts: list[np.ndarray]) -> np.ndarray:
    """One ascending array of several ascending ones (a stable sort merges sorted runs in about
    linear time)."""
    if len(parts) == 1:
        return parts[0]
    merged = np.concatenate(parts)
    merged.sort(kind="stable")  # in place: no second copy of every pixel
    return merged


def _normal(masks: np.ndarray, maps: np.ndarray, normal) -> np.ndarray:
    """`normal` where the caller gave it (checked for its size and order), else the sorted normal
    pixels."""
    if normal is None:
        return np.sort(maps[~masks], axis=None)  # boolean indexing copies: sorting is safe
    normal = np.asarray(normal)
    if normal.size != masks.size - np.count_nonzero(masks):
        raise ValueError(
            f"normal holds {normal.size} scores for the {masks.size - np.count_nonzero(masks)} "
            "normal pixels of the masks: pass the sorted scores of exactly those pixels"
        )
    if normal.ndim != 1 or np.any(normal[1:] < normal[:-1]):  # O(n), against a silent mix-up
        raise ValueError("normal must hold the normal pixels' scores sorted ascending, in 1-D")
    return normal


def pixel_auroc(masks, maps, normal: np.ndarray | None = None) -> float:
    """ROC AUC over all pixels of all images: defect pixels (mask > 0) against normal ones.

    Exact (ties count one half, as in scikit-learn) and memory-bounded: it sorts the normal
    pixels' scores once (or takes them sorted as `normal`, from `sorted_normal`) and counts, for
    each defect pixel, the normal pixels below it with `searchsorted`, instead of building the
    full ROC curve over every pixel.
    """
    masks, maps = _pixels(masks, maps)
    neg = _normal(masks, maps, normal)
    pos = np.sort(maps[masks])  # sorted queries: searchsorted walks the normal pixels in order
    if pos.size == 0 or neg.size == 0:
        raise ValueError("pixel_auroc needs both defect pixels and normal pixels in the masks")
    below = np.searchsorted(neg, pos, side="left").sum(dtype=np.float64)
    below_or_equal = np.searchsorted(neg, pos, side="right").sum(dtype=np.float64)
    return float((below + below_or_equal) / 2 / (pos.size * neg.size))


def pro_curve(
    masks, maps, fpr_limit: float = 1.0, normal: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The per-region overlap (PRO) curve: PRO against pixel FPR, at every distinct map value.

    The MVTec AD definition: every ground-truth mask is split into connected regions
    (8-connectivity, as in the official evaluation code). At a threshold t, a region's overlap
    is the fraction of its pixels with score >= t; PRO is the mean over all regions of the set
    (each region counts once, whatever its size), and FPR is the fraction of all normal pixels
    of the set (good images included) with score >= t.

    The curve is exact, computed by sorting rather than by sampling thresholds. FPR only
    changes at the distinct scores of normal pixels, so those are sorted once, and the curve
    visits each such score t (from high to low) in two points: (FPR above t, PRO of scores > t)
    then (FPR at t, PRO of scores >= t). PRO is a cumulative sum over the few defect pixels,
    sorted by score, where a pixel of region r weighs 1 / (area_r * n_regions). Between
    points the curve is linear, exactly as in the official code that merges equal scores.
    Only the curve up to `fpr_limit` is built: normal pixels below the score where FPR first
    reaches the limit cannot change it, which skips most of the sorting for the usual 0.3.
    `normal`: the normal pixels' scores already sorted (`sorted_normal`), when the caller has
    them; then nothing is sorted but the defect pixels.

    Returns:
        (fpr, pro): the corners of the curve in order (points in the middle of a flat stretch
        are left out), both non-decreasing, from (0, 0) (threshold above every score) to the
        first point with fpr >= fpr_limit.
    """
    masks, maps = _pixels(masks, maps)
    if masks.ndim == 2:
        masks, maps = masks[None], maps[None]
    given = normal is not None
    normal = _normal(masks, maps, normal) if given else maps[~masks]
    n_normal = normal.size
    if n_normal == 0:
        raise ValueError("pro_curve needs normal pixels (mask == 0) to measure false positives")
    # Regions of each image, numbered across the whole set; no connection between images.
    from scipy import ndimage  # here: importing it costs `predict` (which reads thresholds) 0.3 s

    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True
    marked = masks[masks.reshape(len(masks), -1).any(1)]  # labelling blank masks finds nothing
    regions, n_regions = ndimage.label(marked, structure=structure)
    if n_regions == 0:
        raise ValueError("pro_curve needs at least one defect region (mask > 0) in the masks")
    region_of = regions[marked]  # in the order of maps[masks]: blank masks have no pixel there
    area = np.bincount(region_of, minlength=n_regions + 1).astype(np.float64)

    # Defect pixels ascending by score, with cumulative PRO weight: PRO(>= t) = total - cum[i].
    defect = maps[masks]
    order = np.argsort(defect)
    defect = defect[order]
    cum = np.concatenate([[0.0], np.cumsum(1.0 / (area[region_of[order]] * n_regions))])

    # Normal pixels that matter, ascending: down to the k-th highest, where FPR reaches the limit.
    k = min(max(int(np.ceil(fpr_limit * n_normal)), 1), n_normal)
    if given:  # sorted already: the k highest and any ties of the lowest of them
        floor = normal[n_normal - k]
        normal = normal[np.searchsorted(normal, floor, side="left") :]
    else:
        floor = np.partition(normal, n_normal - k)[n_normal - k]
        normal = normal[normal >= floor]
        normal.sort()
    first = np.flatnonzero(np.append(True, normal[1:] != normal[:-1]))  # first of each value
    t = normal[first][::-1]  # distinct normal scores, high to low
    fpr_at = (normal.size - first[::-1]) / n_normal  # FPR of scores >= t
    pro_above = cum[-1] - cum[np.searchsorted(defect, t, side="right")]  # PRO of scores > t
    pro_at = cum[-1] - cum[np.searchsorted(defect, t, side="left")]  # PRO of scores >= t

    fpr = np.zeros(2 * t.size + 1)
    pro = np.zeros(2 * t.size + 1)
    fpr[2::2], fpr[3::2] = fpr_at, fpr_at[:-1]  # fpr[1] = 0: nothing normal is above max(t)
    pro[1::2], pro[2::2] = pro_above, pro_at
    np.clip(pro, 0.0, 1.0, out=pro)
    # Keep the corners only: inside a flat stretch of PRO the curve is one straight line.
    corner = np.ones(pro.size, dtype=bool)
    corner[1:-1] = (pro[1:-1] != pro[:-2]) | (pro[1:-1] != pro[2:])
    return fpr[corner], pro[corner]


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under y(x) from x[0] to x_max, interpolating linearly at x_max."""
    inside = int(np.searchsorted(x, x_max, side="right"))  # x[:inside] <= x_max
    xs, ys = x[:inside], y[:inside]
    if inside < len(x) and xs[-1] < x_max:
        t = (x_max - x[inside - 1]) / (x[inside] - x[inside - 1])
        xs = np.append(xs, x_max)
        ys = np.append(ys, y[inside - 1] + t * (y[inside] - y[inside - 1]))
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2))


def aupro(masks, maps, fpr_limit: float = 0.3, normal: np.ndarray | None = None) -> float:
    """Normalised area under the PRO curve from FPR 0 to `fpr_limit` (MVTec AD's AUPRO@0.3).

    Trapezoid rule over the exact curve of `pro_curve`, interpolated at the limit and divided
    by `fpr_limit`, so that a perfect detector scores 1.0 and one that ranks every defect
    pixel below every normal pixel scores 0.0. `normal`: as in `pro_curve`.
    """
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    fpr, pro = pro_curve(masks, maps, fpr_limit, normal)
    return _area_up_to(fpr, pro, fpr_limit) / fpr_limit
