"""Pure plotting functions: arrays in, an RGB uint8 image or a matplotlib Figure out.

Overlays use one colour scale for the whole data set (`dataset_range`), never one per image:
scaling each map to its own maximum paints every normal image red. `red_overlay` is the
original project's picture (differences painted red on the grayscale input); `heatmap_overlay`
is the usual colour map blended over the image, with the ground-truth outline drawn on top.
The pictures of a verdict (what `score`, `predict` and the explorer show: evidence anchored to
the run's pixel threshold, the verdict written on the image, a colour bar) are
`anomaly.overlays`; the ground truth is outlined in `OUTLINE` everywhere.

Images may be float in [0, 1] (or uint8) shaped [H, W], [H, W, C] or [C, H, W] with 1 or 3
channels, as numpy arrays or torch tensors.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

OUTLINE = (0, 255, 0)  # lime: the ground-truth outline, distinct from jet and from red


# ---------------------------------------------------------------------------------------------
# Image helpers
# ---------------------------------------------------------------------------------------------


def to_rgb(image) -> np.ndarray:
    """Any supported image layout -> float32 [H, W, 3] in [0, 1]."""
    img = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
    if img.dtype == np.uint8:
        img = img / 255.0
    img = img.astype(np.float32)
    if img.ndim == 2:
        img = img[..., None]
    elif img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.transpose(1, 2, 0)  # [C, H, W] -> [H, W, C]
    if img.ndim != 3 or img.shape[-1] not in (1, 3):
        raise ValueError(
            f"expected an image [H,W], [H,W,C] or [C,H,W] with 1 or 3 channels, "
            f"got shape {np.shape(image)}"
        )
    return np.clip(np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img, 0.0, 1.0)


def to_gray(image) -> np.ndarray:
    """Any supported image layout -> float32 [H, W] luminance in [0, 1] (ITU-R 601 weights)."""
    return to_rgb(image) @ np.array([0.299, 0.587, 0.114], np.float32)


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)


def _check_size(image: np.ndarray, amap: np.ndarray) -> None:
    if image.shape[:2] != amap.shape[:2]:
        raise ValueError(
            f"image {image.shape[:2]} and map {amap.shape[:2]} differ in size; "
            "resize the image to the map first"
        )


def dataset_range(
    maps, q: tuple[float, float] = (0.01, 0.999), labels=None, max_pixels: int = 2_000_000
) -> tuple[float, float]:
    """One (vmin, vmax) colour range for a whole data set, from quantiles of its maps.

    Args:
        maps: anomaly maps [N, H, W].
        q: lower and upper quantiles of all pixel values.
        labels: if given, only the maps of normal images (label 0) set the range, so that
            anything above vmax is brighter than any normal pixel up to the upper quantile.
        max_pixels: quantiles come from an evenly strided subsample of at most this many pixels.
    """
    maps = np.asarray(maps, np.float32)
    if labels is not None:
        maps = maps[np.asarray(labels) == 0]
        if len(maps) == 0:
            raise ValueError("dataset_range: labels select no normal (label 0) images")
    flat = maps.ravel()[:: max(1, maps.size // max_pixels)]
    vmin, vmax = (float(v) for v in np.quantile(flat, q))
    if vmax <= vmin:  # constant maps: keep a non-empty range
        vmax = vmin + max(abs(vmin), 1.0) * 1e-6
    return vmin, vmax


def red_overlay(
    image, diff, vmax: float | None = None, gamma: float = 1.0, vmin: float = 0.0
) -> np.ndarray:
    """The image in grey, with pixels painted red where the difference is large.

    Each pixel is blended towards pure red with alpha = clip((diff - vmin) / (vmax - vmin),
    0, 1) ** gamma, so a difference at or below vmin (0 by default) leaves the grey image
    untouched and a larger one paints a brighter red.

    Args:
        image: the input image (any supported layout).
        diff: difference or anomaly map [H, W] (or [C, H, W] / [H, W, C]: mean over channels).
        vmax: the difference that is fully red; pass one value for the whole data set (e.g.
            `dataset_range(maps)[1]`). None uses this image's maximum.
        gamma: < 1 makes small differences more visible, > 1 hides them.
        vmin: the difference below which nothing is painted (raise it for maps that are not
            zero on normal pixels, e.g. `dataset_range(maps)[0]`).

    Returns:
        uint8 [H, W, 3].
    """
    gray = to_gray(image)
    diff = np.abs(np.asarray(diff, np.float32))
    if diff.ndim == 3:  # per-channel differences: average the channels
        channel_first = diff.shape[0] in (1, 3) and diff.shape[-1] not in (1, 3)
        diff = diff.mean(axis=0 if channel_first else -1)
    _check_size(gray, diff)
    vmax = float(diff.max()) if vmax is None else float(vmax)
    span = vmax - vmin
    alpha = np.clip((diff - vmin) / span, 0.0, 1.0) ** gamma if span > 0 else 0.0 * diff
    rgb = np.repeat((gray * (1 - alpha))[..., None], 3, axis=-1)
    rgb[..., 0] += alpha
    return _to_uint8(rgb)


def heatmap_overlay(
    image,
    amap,
    vmin: float,
    vmax: float,
    mask=None,
    alpha: float = 0.5,
    cmap: str = "jet",
    outline: tuple[int, int, int] = OUTLINE,
) -> np.ndarray:
    """The anomaly map in colour over the image, with the ground-truth mask outlined.

    Args:
        image: the input image (any supported layout).
        amap: anomaly map [H, W].
        vmin, vmax: the colour range; pass one range for the whole data set (`dataset_range`).
        mask: ground-truth mask [H, W]; its boundary is drawn in `outline` colour.
        alpha: weight of the colour map (0 = image only, 1 = map only).
        cmap: a matplotlib colour map name.

    Returns:
        uint8 [H, W, 3].
    """
    rgb = to_rgb(image)
    amap = np.asarray(amap, np.float32)
    _check_size(rgb, amap)
    norm = np.clip((amap - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    import matplotlib  # 0.1 s to import: not for a predict that draws no overlay

    colour = matplotlib.colormaps[cmap](norm)[..., :3].astype(np.float32)
    out = _to_uint8((1 - alpha) * rgb + alpha * colour)
    if mask is not None:
        from skimage.segmentation import find_boundaries  # about 1 s to import: only for masks

        edge = find_boundaries(np.asarray(mask) > 0, mode="inner")
        out[edge] = outline
    return out


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def _figure(nrows: int = 1, ncols: int = 1, figsize=(6, 4)):
    """A new figure that pyplot does not keep: it shows once when a notebook cell returns it."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False)
    plt.close(fig)
    return fig, axes


def plot_score_histogram(scores, labels, threshold=None, ax=None, bins: int = 30):
    """Histograms of good and defective image scores on shared bins, with the threshold line.
    Positive scores spanning more than `LOG_SPAN` times are binned and drawn on a log axis:
    on a linear one a few far defects put every good score, and the threshold, in one bin."""
    if ax is None:
        ax = _figure()[1][0, 0]
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    finite = scores[np.isfinite(scores)]
    wide = bool(finite.size > 1 and finite.min() > 0 and finite.max() > LOG_SPAN * finite.min())
    if wide:
        edges = np.geomspace(finite.min(), finite.max(), bins + 1)
        plain_log(ax.xaxis, ax.set_xscale)
    else:
        edges = np.histogram_bin_edges(scores, bins=bins)
    for value, name, colour in ((0, "good", "tab:green"), (1, "defective", "tab:red")):
        sel = scores[labels == value] if value == 0 else scores[labels > 0]
        if sel.size:
            ax.hist(sel, bins=edges, alpha=0.6, color=colour, label=f"{name} ({sel.size})")
    if threshold is not None:
        ax.axvline(
            float(threshold),
            color="black",
            linestyle="--",
            label=f"threshold {float(threshold):.4g}",
        )
    ax.set_xlabel("anomaly score" + " (log scale)" * wide)
    ax.set_ylabel("images")
    ax.legend()
    return ax.figure


LOG_SPAN = 30  # largest over smallest score above which the histogram is drawn on a log axis
LOSS_LOG_SPAN = 10  # the same for a loss curve: one that falls tenfold


def plot_roc(curves: dict, ax=None):
    """ROC curves of image scores, one per name: `curves = {name: (labels, scores)}`."""
    from sklearn.metrics import roc_auc_score, roc_curve

    if ax is None:
        ax = _figure(figsize=(5, 5))[1][0, 0]
    for name, (labels, scores) in curves.items():
        labels = np.asarray(labels) > 0
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {roc_auc_score(labels, scores):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false positive rate (good parts rejected)")
    ax.set_ylabel("true positive rate (defects caught)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right")
    return ax.figure


def _read_history(history) -> list[dict]:
    if isinstance(history, (str, Path)):
        with open(history, newline="") as f:
            return list(csv.DictReader(f))
    if hasattr(history, "to_dict"):  # a pandas DataFrame
        return history.to_dict("records")
    return list(history)


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def plot_history(history, ax=None):
    """Loss curves from training history: rows (dicts), a DataFrame, or a `history.csv` path.

    Plots every column whose name contains "loss" (e.g. train_loss, val_loss) against the
    "epoch" column (or the row number); empty cells are skipped.
    """
    rows = _read_history(history)
    if not rows:
        raise ValueError("plot_history: the history is empty")
    columns = list(rows[0])
    ys = [c for c in columns if "loss" in c.lower()]
    if not ys:
        raise ValueError(f"plot_history: no loss column among {columns}")
    x = np.array([_number(r.get("epoch", i)) for i, r in enumerate(rows)])
    if ax is None:
        ax = _figure()[1][0, 0]
    shown = []
    for col in ys:
        y = np.array([_number(r.get(col)) for r in rows])
        ok = np.isfinite(y)
        ax.plot(x[ok], y[ok], marker="o" if ok.sum() < 30 else None, label=col)
        shown += list(y[ok])
    ax.set_xlabel("epoch" if "epoch" in columns else "step")
    wide = bool(shown and min(shown) > 0 and max(shown) > LOSS_LOG_SPAN * min(shown))
    if wide:  # a loss that falls tenfold in the first epochs hides the rest on a linear axis
        plain_log(ax.yaxis, ax.set_yscale)
    ax.set_ylabel("loss" + " (log scale)" * wide)
    ax.legend()
    return ax.figure


def plain_log(axis, set_scale) -> None:
    """A log scale labelled 0.1, 1, 10 (mathtext's 10^x asks for STIX fonts), minor ticks bare."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    set_scale("log")
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def plot_histories(histories: dict, size: tuple[float, float] = (4.5, 3.0)):
    """`plot_history` of each named history (name -> `history.csv` path, rows, ...), a panel
    per name titled with it: runs with different losses (SSIM, L2) each on their own scale."""
    fig, axes = _figure(1, len(histories), figsize=(size[0] * len(histories), size[1]))
    for ax, (name, history) in zip(axes[0], histories.items()):
        plot_history(history, ax=ax)
        ax.set_title(name)
    fig.tight_layout()
    return fig


def plot_gallery(images, titles=None, masks=None, overlays=None, ncols: int = 4, size: float = 2.5):
    """A grid of images, with ground-truth outlines and an overlay panel beside each image.

    Args:
        images: a sequence of images (any supported layout).
        titles: one title per image.
        masks: ground-truth masks [H, W] per image (None entries allowed); outlined in lime.
        overlays: one overlay per image (e.g. from `heatmap_overlay`), shown right of it.
        ncols: images per row (each takes two panels when overlays are given).
        size: panel size in inches.
    """
    n = len(images)
    if n == 0:
        raise ValueError("plot_gallery: no images")
    panels = 2 if overlays is not None else 1
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig, axes = _figure(nrows, ncols * panels, figsize=(size * ncols * panels, size * nrows))
    flat = axes.ravel()
    for i in range(n):
        shown = [to_rgb(images[i])] + ([to_rgb(overlays[i])] if overlays is not None else [])
        for j, picture in enumerate(shown):
            ax = flat[i * panels + j]
            ax.imshow(picture)
            if masks is not None and masks[i] is not None and np.any(masks[i]):
                ax.contour(np.asarray(masks[i]) > 0, levels=[0.5], colors="lime", linewidths=1)
            if titles is not None and j == 0:
                ax.set_title(str(titles[i]), fontsize=9)
            ax.set_axis_off()
    for ax in flat[n * panels :]:
        fig.delaxes(ax)
    fig.tight_layout()
    return fig
