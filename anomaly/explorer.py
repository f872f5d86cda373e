"""The threshold explorer: choose where "defective" starts, and see what the choice costs.

An anomaly detector gives every image a score; the line between "pass" and "reject" is a
business decision, not a property of the model. `ThresholdExplorer` shows, for one or several
runs on the same data, what a threshold does: the score histograms of good and defective images,
the confusion matrix and its rates, the images it gets wrong (with their anomaly overlays), and
the threshold that minimises the cost of false rejects and escapes. "Save threshold" writes
`RUN/threshold.json`, which `predict` then uses.

Everything a slider move needs is computed once per run: a table of counts at every distinct
score (`threshold_table`), so that the counts at any threshold are one binary search
(`counts_at`); the histogram is drawn once and only the threshold line is redrawn (matplotlib
blitting); overlays are cached per pixel threshold. The logic is plain functions of the
threshold, tested without a browser; `serve` shows the same explorer as a stand-alone Voilà page.

One convention holds, as in `anomaly.metrics`: an image is predicted defective iff its score is
>= the threshold.
"""

from __future__ import annotations

import html
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from anomaly.detectors.base import Predictions

RUNS_ENV = "ANOMALY_RUNS"  # run folders for the Voilà page: a JSON list, or joined by os.pathsep
PREDICTIONS_FILE = "predictions.npz"
THRESHOLD_FILE = "threshold.json"
APP_NOTEBOOK = "explorer_app.ipynb"

# ---------------------------------------------------------------------------------------------
# Pure logic: counts, rates and the cost-optimal threshold
# ---------------------------------------------------------------------------------------------


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


def _rates(tp: int, fp: int, tn: int, fn: int, threshold: float) -> dict:
    """The same keys and conventions as `anomaly.metrics.confusion` (0.0 when undefined)."""

    def rate(a: float, b: float) -> float:
        return a / b if b else 0.0

    precision, recall = rate(tp, tp + fp), rate(tp, tp + fn)
    return {
        "threshold": float(threshold),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "precision": precision,
        "recall": recall,
        "f1": rate(2 * precision * recall, precision + recall),
        "false_reject_rate": rate(fp, fp + tn),
        "escape_rate": rate(fn, fn + tp),
    }


def counts_at(table: ThresholdTable, threshold: float) -> dict:
    """Counts and rates at one threshold, by one binary search in the table: O(log N).

    Returns:
        threshold, tp, fp, tn, fn, precision, recall, f1, false_reject_rate (good parts
        rejected / good parts) and escape_rate (defective parts passed / defective parts).
    """
    k = int(np.searchsorted(table.thresholds, threshold, side="left"))
    k = min(k, len(table.thresholds) - 1)
    return _rates(int(table.tp[k]), int(table.fp[k]), int(table.tn[k]), int(table.fn[k]),
                  threshold)


def score_range(scores) -> tuple[float, float]:
    """The slider's range: the scores' span plus 5% each side, so "flag all" and "flag none"
    are both reachable."""
    scores = np.asarray(scores, np.float64)
    lo, hi = float(scores.min()), float(scores.max())
    pad = 0.05 * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1.0)
    return lo - pad, hi + pad


def _middle_of_row(table: ThresholdTable, k: int, lo: float, hi: float) -> float:
    """A threshold in the middle of the interval where row k's counts hold: (u[k-1], u[k]].

    The middle keeps the same counts even if a slider rounds the value a little.
    """
    edges = np.concatenate([[lo], table.thresholds[:-1], [hi]])
    return float((edges[k] + edges[k + 1]) / 2)


def cost_optimum(table: ThresholdTable, cost_false_reject: float, cost_escape: float,
                 lo: float, hi: float) -> tuple[float, float]:
    """`cost_optimal_threshold` on a prepared table and slider range: O(M)."""
    if cost_false_reject < 0 or cost_escape < 0:
        raise ValueError("costs must be >= 0")
    cost = cost_false_reject * table.fp + cost_escape * table.fn
    k = int(np.argmin(cost))  # first minimum = lowest threshold = fewest escapes among ties
    return _middle_of_row(table, k, lo, hi), float(cost[k])


def cost_optimal_threshold(labels, scores, cost_false_reject: float = 1.0,
                           cost_escape: float = 1.0) -> tuple[float, float]:
    """The threshold that minimises cost_false_reject * false rejects + cost_escape * escapes.

    Every threshold between two neighbouring distinct scores gives the same counts; the one
    returned is the middle of the best such interval (or 5% of the score span beyond the
    lowest / highest score when flagging everything / nothing is best). Among equally cheap
    intervals the lowest threshold wins: it lets the fewest defective parts escape.

    Returns:
        (threshold, total cost over these images).
    """
    table = threshold_table(labels, scores)
    lo, hi = score_range(scores)
    return cost_optimum(table, cost_false_reject, cost_escape, lo, hi)


def format_confusion_html(counts: dict) -> str:
    """The confusion matrix and its rates as a small HTML table (class "anomaly-confusion")."""
    tp, fp, tn, fn = (counts[k] for k in ("tp", "fp", "tn", "fn"))
    td = "padding:3px 10px;text-align:right;border:1px solid #ccc"
    bad = td + ";background:#fde0dc"
    ok = td + ";background:#e6f4ea"
    th = "padding:3px 10px;text-align:left;border:1px solid #ccc;background:#f5f5f5"
    rows = [
        (f"<tr><th style='{th}'>threshold {counts['threshold']:.4g}</th>"
         f"<th style='{th}'>predicted good</th><th style='{th}'>predicted defective</th></tr>"),
        (f"<tr><th style='{th}'>good ({fp + tn})</th>"
         f"<td class='tn' style='{ok}'>{tn} passed</td>"
         f"<td class='fp' style='{bad}'>{fp} false rejects</td></tr>"),
        (f"<tr><th style='{th}'>defective ({tp + fn})</th>"
         f"<td class='fn' style='{bad}'>{fn} escapes</td>"
         f"<td class='tp' style='{ok}'>{tp} caught</td></tr>"),
    ]
    rates = [("precision", "precision"), ("recall", "recall"), ("F1", "f1"),
             ("false-reject rate", "false_reject_rate"), ("escape rate", "escape_rate")]
    rate_cells = "".join(
        f"<tr><th style='{th}'>{name}</th>"
        f"<td class='{key}' style='{td}'>{counts[key]:.3f}</td></tr>" for name, key in rates)
    table = "border-collapse:collapse;font-size:13px"
    return (f"<div class='anomaly-confusion'><table style='{table}'>{''.join(rows)}</table>"
            f"<table class='anomaly-rates' style='{table};margin-top:6px'>{rate_cells}</table>"
            "</div>")


# ---------------------------------------------------------------------------------------------
# Pure image helpers for the gallery
# ---------------------------------------------------------------------------------------------


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a binary mask (the mask minus its 4-neighbour erosion)."""
    m = np.asarray(mask) > 0
    p = np.pad(m, 1, constant_values=False)
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~inner


def overlay(image: np.ndarray, amap: np.ndarray, pixel_threshold: float,
            mask: np.ndarray | None = None, alpha: float = 0.55) -> np.ndarray:
    """The image with pixels whose anomaly value is >= pixel_threshold painted red, and the
    ground-truth mask outlined in cyan.

    Args:
        image: uint8 RGB [H, W, 3] (or grey [H, W]) at the map's size.
        amap: anomaly map [H, W].
        pixel_threshold: pixels with amap >= it are painted.
        mask: optional ground-truth mask [H, W].
    Returns:
        uint8 RGB [H, W, 3].
    """
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    out = img[..., :3].astype(np.float32)
    hot = np.asarray(amap) >= pixel_threshold
    out[hot] = (1 - alpha) * out[hot] + alpha * np.array([255.0, 0.0, 0.0], np.float32)
    if mask is not None and np.any(mask):
        out[mask_outline(mask)] = (0.0, 255.0, 255.0)
    return out.clip(0, 255).astype(np.uint8)


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _to_uint8_rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[2] not in (1, 3):
        img = np.moveaxis(img, 0, -1)  # CHW -> HWC
    if img.dtype != np.uint8:
        img = (np.clip(img.astype(np.float32), 0, 1) * 255).round().astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return img[..., :3]


# ---------------------------------------------------------------------------------------------
# Loading runs
# ---------------------------------------------------------------------------------------------


def load_run_predictions(run: str | Path) -> Predictions:
    """The Predictions saved in a run folder (RUN/predictions.npz) or in an .npz file."""
    from anomaly.detectors.base import Predictions

    path = Path(run)
    file = path if path.suffix == ".npz" else path / PREDICTIONS_FILE
    if not file.exists():
        raise FileNotFoundError(
            f"{path} has no {PREDICTIONS_FILE}: score the run first (`python -m anomaly score "
            f"--run {path}`), or pass Predictions to ThresholdExplorer directly")
    return Predictions.load(file)


def _run_folder(run: str | Path) -> Path:
    path = Path(run)
    return path.parent if path.suffix == ".npz" else path


def _unique_name(name: str, taken: dict) -> str:
    base, i = name or "run", 2
    while name in taken or not name:
        name, i = f"{base}-{i}", i + 1
    return name


def _collect_runs(runs, run_dirs) -> tuple[dict, dict]:
    """(name -> Predictions, name -> run folder or None) from what ThresholdExplorer accepts."""
    from anomaly.detectors.base import Predictions

    preds: dict[str, Predictions] = {}
    dirs: dict[str, Path | None] = {}
    if isinstance(runs, (Predictions, str, Path)):
        runs = [runs]
    items = list(runs.items()) if isinstance(runs, dict) else [(None, r) for r in runs]
    if not items:
        raise ValueError("ThresholdExplorer needs at least one run")
    for name, run in items:
        if isinstance(run, Predictions):
            name = _unique_name(name or run.method or "run", preds)
            preds[name], dirs[name] = run, None
        else:
            folder = _run_folder(run)
            name = _unique_name(name or folder.resolve().name, preds)
            preds[name], dirs[name] = load_run_predictions(run), folder
    if run_dirs is not None:
        if isinstance(run_dirs, (str, Path)):
            run_dirs = [run_dirs]
        if not isinstance(run_dirs, dict):
            run_dirs = list(run_dirs)
            if len(run_dirs) != len(preds):
                raise ValueError(f"{len(run_dirs)} run_dirs for {len(preds)} runs")
            run_dirs = dict(zip(preds, run_dirs))
        for name, folder in run_dirs.items():
            if name not in preds:
                raise KeyError(f"run_dirs names {name!r}, which is not one of {list(preds)}")
            dirs[name] = Path(folder) if folder is not None else None
    sizes = {len(p) for p in preds.values()}
    if len(sizes) > 1:
        raise ValueError(f"The runs have different numbers of images ({sorted(sizes)}): "
                         "compare runs scored on the same data")
    return preds, dirs


def _read_threshold(folder: Path | None) -> dict | None:
    if folder is None or not (folder / THRESHOLD_FILE).exists():
        return None
    try:
        data = json.loads((folder / THRESHOLD_FILE).read_text())
        return {"value": float(data["value"]), "params": dict(data.get("params") or {})}
    except (ValueError, KeyError, TypeError):
        return None


def _write_threshold(folder: Path, value: float, rule: str, params: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / THRESHOLD_FILE
    try:
        from anomaly.metrics import Threshold

        Threshold(float(value), rule, params).save(path)
    except ImportError:  # metrics not available: the same JSON keys by hand
        path.write_text(json.dumps({"value": float(value), "rule": rule, "params": params},
                                   indent=2) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# The widget
# ---------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """What one run needs for fast updates, computed once."""

    name: str
    pred: Predictions
    folder: Path | None
    table: ThresholdTable
    lo: float
    hi: float
    map_lo: float
    map_hi: float
    pixel_default: float
    saved: dict | None
    threshold: float | None = None  # last threshold shown for this run
    pixel_threshold: float | None = None


class ThresholdExplorer:
    """An ipywidgets explorer of image thresholds for one or several runs on the same data.

    Display it as the last expression of a cell (or `display(explorer)`); `explorer.widget` is
    the ipywidgets box. Every control is an attribute, so tests and notebooks can drive it:
    `explorer.slider.value = 0.3` updates the histogram line, the confusion matrix and the
    gallery at once.

    Args:
        runs: a `Predictions`, a dict name -> Predictions (or run folder), a run folder, or a
            list of run folders / Predictions (one entry per method, same images).
        run_dirs: where "Save threshold" writes for runs given as Predictions: one folder, a
            list in the order of `runs`, or a dict name -> folder. Runs loaded from folders
            save into their own folder.
        images: optional images [N, H, W(, 3)] for the gallery (uint8, or float in [0, 1]);
            otherwise they are read from the predictions' paths, or the anomaly map is shown.
        cost_false_reject: starting cost of rejecting a good part.
        cost_escape: starting cost of passing a defective part (usually much higher).
        gallery_size: how many images the gallery shows.
    """

    def __init__(self, runs, run_dirs=None, images=None, cost_false_reject: float = 1.0,
                 cost_escape: float = 10.0, gallery_size: int = 12) -> None:
        import ipywidgets as w

        preds, dirs = _collect_runs(runs, run_dirs)
        self.runs: dict[str, _Run] = {name: self._prepare(name, p, dirs[name])
                                      for name, p in preds.items()}
        self.images = images
        self.gallery_size = gallery_size
        self._image_cache: dict[int, np.ndarray] = {}
        self._overlay_cache: dict[tuple, bytes] = {}
        self._busy = False
        self.last_update_s = 0.0  # how long the last refresh took (for latency checks)

        first = next(iter(self.runs.values()))
        self.run_select = w.Dropdown(
            options=[(self._run_label(r), r.name) for r in self.runs.values()],
            value=first.name, description="Run", layout=w.Layout(width="320px"),
            disabled=len(self.runs) == 1)
        # continuous_update=False: with True, ipywidgets 8 echoes every value set from Python
        # back snapped to the step, so "Go to cost optimum" would not land on the optimum.
        self.slider = w.FloatSlider(
            description="Image threshold", continuous_update=False, readout_format=".4g",
            style={"description_width": "110px"}, layout=w.Layout(width="520px"))
        self.slider.add_class("anomaly-threshold-slider")
        self.pixel_slider = w.FloatSlider(
            description="Pixel threshold", continuous_update=False, readout_format=".4g",
            style={"description_width": "110px"}, layout=w.Layout(width="520px"))
        self.pixel_slider.add_class("anomaly-pixel-slider")
        self.cost_false_reject = w.BoundedFloatText(
            value=cost_false_reject, min=0, max=1e12, description="Cost of a false reject",
            style={"description_width": "150px"}, layout=w.Layout(width="250px"))
        self.cost_escape = w.BoundedFloatText(
            value=cost_escape, min=0, max=1e12, description="Cost of an escape",
            style={"description_width": "150px"}, layout=w.Layout(width="250px"))
        self.optimum_button = w.Button(description="Go to cost optimum", icon="bullseye",
                                       layout=w.Layout(width="180px"))
        self.cost_label = w.HTML()
        self.save_button = w.Button(description="Save threshold", icon="save",
                                    button_style="primary", layout=w.Layout(width="180px"))
        self.save_button.add_class("anomaly-save")
        self.status = w.HTML()
        self.status.add_class("anomaly-status")
        self.confusion = w.HTML()
        self.confusion.add_class("anomaly-confusion-box")
        self.histogram = w.Image(format="png", layout=w.Layout(width="480px"))
        self.gallery_title = w.HTML()
        self.gallery_images = [w.Image(format="png", layout=w.Layout(width="150px", height="150px",
                                                                     object_fit="contain"))
                               for _ in range(gallery_size)]
        self.gallery_captions = [w.HTML(layout=w.Layout(width="150px"))
                                 for _ in range(gallery_size)]
        self.gallery = w.GridBox(
            [w.VBox([img, cap]) for img, cap in zip(self.gallery_images, self.gallery_captions)],
            layout=w.Layout(grid_template_columns="repeat(6, 160px)", grid_gap="6px"))

        self.widget = w.VBox([
            w.HBox([self.run_select, self.status]),
            self.slider,
            self.pixel_slider,
            w.HBox([self.cost_false_reject, self.cost_escape, self.optimum_button]),
            self.cost_label,
            w.HBox([self.histogram, self.confusion], layout=w.Layout(grid_gap="16px")),
            w.HBox([self.save_button]),
            self.gallery_title,
            self.gallery,
        ])
        self.widget.add_class("anomaly-explorer")

        self._build_figure()
        self.run_select.observe(self._on_run, names="value")
        self.slider.observe(self._on_threshold, names="value")
        self.pixel_slider.observe(self._on_pixel, names="value")
        self.cost_false_reject.observe(self._on_costs, names="value")
        self.cost_escape.observe(self._on_costs, names="value")
        self.optimum_button.on_click(lambda _: self.go_to_optimum())
        self.save_button.on_click(self._on_save)
        self._show_run(first)

    # --- display ------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    # --- state --------------------------------------------------------------------------
    @property
    def run(self) -> _Run:
        return self.runs[self.run_select.value]

    @property
    def threshold(self) -> float:
        return float(self.slider.value)

    @property
    def counts(self) -> dict:
        """Counts and rates of the current run at the slider's threshold."""
        return counts_at(self.run.table, self.threshold)

    @property
    def optimum(self) -> tuple[float, float]:
        """(threshold, total cost) minimising the current costs for the current run."""
        r = self.run
        return cost_optimum(r.table, self._cost(self.cost_false_reject),
                            self._cost(self.cost_escape), r.lo, r.hi)

    @staticmethod
    def _cost(box) -> float:
        return max(float(box.value or 0.0), 0.0)

    @staticmethod
    def _prepare(name: str, pred: Predictions, folder: Path | None) -> _Run:
        lo, hi = score_range(pred.scores)
        maps = pred.maps
        map_lo, map_hi = float(maps.min()), float(maps.max())
        if map_hi <= map_lo:
            map_hi = map_lo + 1.0
        # Default pixel threshold: the 99.5th percentile of good images' pixels, from a sample
        # of some 50 good images (no copy of the whole stack).
        good = np.flatnonzero(pred.labels == 0)
        good = good if good.size else np.arange(len(pred))
        some = maps[good[:: max(1, good.size // 50)]]
        sample = some.ravel()[:: max(1, some.size // 200_000)]
        pixel_default = float(np.quantile(sample, 0.995))
        saved = _read_threshold(folder)
        if saved is not None:  # a saved threshold outside the scores' span stays reachable
            lo, hi = min(lo, saved["value"]), max(hi, saved["value"])
        return _Run(name, pred, folder, threshold_table(pred.labels, pred.scores), lo, hi,
                    map_lo, map_hi, pixel_default, saved)

    @staticmethod
    def _run_label(r: _Run) -> str:
        method = r.pred.method
        return f"{r.name} ({method})" if method and method != r.name else r.name

    # --- building and updating ----------------------------------------------------------
    def _build_figure(self) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self._fig = Figure(figsize=(5.4, 2.7), dpi=90)
        FigureCanvasAgg(self._fig)
        self._ax = self._fig.add_subplot(111)
        self._fig.subplots_adjust(left=0.11, right=0.98, bottom=0.17, top=0.9)
        self._line = None

    def _draw_histogram(self) -> None:
        """Redraw the static part (histograms, cost optimum) and keep it as the background."""
        r, ax = self.run, self._ax
        ax.clear()
        scores, labels = r.pred.scores, r.pred.labels
        bins = np.linspace(r.lo, r.hi, 41)
        ax.hist(scores[labels == 0], bins=bins, histtype="stepfilled", alpha=0.6, color="#4c72b0",
                label=f"good ({int(np.sum(labels == 0))})")
        ax.hist(scores[labels > 0], bins=bins, histtype="stepfilled", alpha=0.6, color="#dd8452",
                label=f"defective ({int(np.sum(labels > 0))})")
        t_opt, _ = self.optimum
        ax.axvline(t_opt, color="#2ca02c", linestyle="--", linewidth=1.5, label="cost optimum")
        self._line = ax.axvline(self.threshold, color="#d62728", linewidth=2, animated=True,
                                label="threshold")
        ax.set_xlim(r.lo, r.hi)
        ax.set_xlabel("image anomaly score")
        ax.set_ylabel("images")
        ax.legend(fontsize=8, loc="upper right", framealpha=0.8)
        ax.set_title(self._run_label(r), fontsize=10)
        self._fig.canvas.draw()
        self._background = self._fig.canvas.copy_from_bbox(self._fig.bbox)

    def _blit_threshold(self) -> None:
        canvas = self._fig.canvas
        canvas.restore_region(self._background)
        self._line.set_xdata([self.threshold, self.threshold])
        self._ax.draw_artist(self._line)
        rgba = np.asarray(canvas.buffer_rgba())
        self.histogram.value = _png(rgba[..., :3])

    def _show_run(self, r: _Run) -> None:
        """Point every control at run r (range, saved or optimal threshold) and redraw."""
        self._busy = True
        try:
            s, p = self.slider, self.pixel_slider
            s.max = max(s.max, r.hi)
            s.min, s.max = r.lo, r.hi
            s.step = (r.hi - r.lo) / 400
            p.max = max(p.max, r.map_hi)
            p.min, p.max = r.map_lo, r.map_hi
            p.step = (r.map_hi - r.map_lo) / 400
            if r.threshold is None:
                r.threshold = r.saved["value"] if r.saved else self.optimum[0]
            if r.pixel_threshold is None:
                saved_pixel = (r.saved or {}).get("params", {}).get("pixel_threshold")
                r.pixel_threshold = float(saved_pixel) if saved_pixel is not None \
                    else r.pixel_default
            s.value = float(np.clip(r.threshold, r.lo, r.hi))
            p.value = float(np.clip(r.pixel_threshold, r.map_lo, r.map_hi))
            self.save_button.disabled = r.folder is None
            self.save_button.tooltip = (f"Write {r.folder / THRESHOLD_FILE}" if r.folder
                                        else "No run folder: pass run_dirs= to save")
            self.status.value = (f"<span style='color:#666'>saved threshold "
                                 f"{r.saved['value']:.4g}</span>" if r.saved else "")
        finally:
            self._busy = False
        self._draw_histogram()
        self.refresh()

    def refresh(self) -> None:
        """Update everything that depends on the threshold: line, matrix, costs, gallery."""
        start = time.perf_counter()
        r = self.run
        r.threshold, r.pixel_threshold = self.threshold, float(self.pixel_slider.value)
        counts = self.counts
        self.confusion.value = format_confusion_html(counts)
        c_fr, c_esc = self._cost(self.cost_false_reject), self._cost(self.cost_escape)
        cost = c_fr * counts["fp"] + c_esc * counts["fn"]
        t_opt, cost_opt = self.optimum
        n = len(r.pred)
        self.cost_label.value = (
            f"Cost at this threshold: <b>{cost:.4g}</b> ({cost / n:.3g} per part) &nbsp; "
            f"Cost optimum: <b>{cost_opt:.4g}</b> at threshold <b>{t_opt:.4g}</b>")
        self._blit_threshold()
        self._update_gallery()
        self.last_update_s = time.perf_counter() - start

    def gallery_order(self) -> np.ndarray:
        """Image indices for the gallery: misclassified first (most wrong first), then the
        correct ones closest to the threshold."""
        r, t = self.run, self.threshold
        wrong = (r.pred.scores >= t) != (r.pred.labels > 0)
        margin = np.abs(r.pred.scores - t)
        return np.lexsort((np.where(wrong, -margin, margin), ~wrong))

    def _update_gallery(self) -> None:
        r, t = self.run, self.threshold
        order = self.gallery_order()[: self.gallery_size]
        n_wrong = int(np.sum((r.pred.scores >= t) != (r.pred.labels > 0)))
        self.gallery_title.value = (
            f"<b>{n_wrong} misclassified</b> of {len(r.pred)} images; showing {len(order)}, "
            "misclassified first. Red: pixels above the pixel threshold; cyan: true defect.")
        for slot, (img, cap) in enumerate(zip(self.gallery_images, self.gallery_captions)):
            if slot >= len(order):
                img.layout.visibility, cap.value = "hidden", ""
                continue
            i = int(order[slot])
            img.layout.visibility = "visible"
            img.value = self._overlay_png(i)
            score, label = float(r.pred.scores[i]), int(r.pred.labels[i] > 0)
            flagged = score >= t
            kind = {(1, 1): "caught", (0, 0): "passed", (0, 1): "false reject",
                    (1, 0): "escape"}[(label, int(flagged))]
            colour = "#c62828" if flagged != bool(label) else "#2e7d32"
            cap.value = (f"<div style='font-size:11px;line-height:1.25'>"
                         f"<b style='color:{colour}'>{'REJECT' if flagged else 'PASS'}: {kind}</b>"
                         f"<br>{html.escape(r.pred.defects[i])} · score {score:.4g}<br>"
                         f"<span style='color:#777'>{html.escape(Path(r.pred.paths[i]).name)}"
                         "</span></div>")

    def _base_image(self, i: int) -> np.ndarray:
        """The gallery picture of image i at the map's size: `images[i]`, the file at its path,
        or (when neither exists) the anomaly map in grey on the run's own scale."""
        if i not in self._image_cache:
            r = self.run
            h, w = r.pred.maps.shape[1:3]
            img = _to_uint8_rgb(self.images[i]) if self.images is not None else \
                self._read_image(r, i)
            if img is None:
                img = _to_uint8_rgb((r.pred.maps[i] - r.map_lo) / (r.map_hi - r.map_lo))
            if img.shape[:2] != (h, w):
                from PIL import Image

                img = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))
            self._image_cache[i] = img
        return self._image_cache[i]

    @staticmethod
    def _read_image(r: _Run, i: int) -> np.ndarray | None:
        from PIL import Image

        path = Path(r.pred.paths[i])
        candidates = [path]
        if not path.is_absolute() and r.folder is not None:
            candidates += [r.folder / path, r.folder.parent / path, r.folder.parent.parent / path]
        for p in candidates:
            if p.is_file():
                try:
                    return np.asarray(Image.open(p).convert("RGB"))
                except OSError:
                    return None
        return None

    def _overlay_png(self, i: int) -> bytes:
        r, pt = self.run, float(self.pixel_slider.value)
        key = (r.name, i, pt)
        if key not in self._overlay_cache:
            if len(self._overlay_cache) > 4 * self.gallery_size * max(len(self.runs), 1):
                self._overlay_cache.clear()
            mask = r.pred.masks[i] if r.pred.masks is not None else None
            self._overlay_cache[key] = _png(overlay(self._base_image(i), r.pred.maps[i], pt, mask))
        return self._overlay_cache[key]

    # --- callbacks ----------------------------------------------------------------------
    def _on_threshold(self, change) -> None:
        if not self._busy:
            self.refresh()

    def _on_pixel(self, change) -> None:
        if not self._busy:
            self.refresh()

    def _on_costs(self, change) -> None:
        if not self._busy:
            self._draw_histogram()
            self.refresh()

    def _on_run(self, change) -> None:
        self._image_cache.clear()  # runs share the data, but paths may resolve differently
        self._show_run(self.runs[change["new"]])

    def go_to_optimum(self) -> float:
        """Move the slider to the cost-optimal threshold of the current costs; return it."""
        t_opt, _ = self.optimum
        self.slider.value = t_opt
        return t_opt

    def save_threshold(self) -> Path:
        """Write the slider's threshold to RUN/threshold.json (value, rule, params)."""
        r = self.run
        if r.folder is None:
            raise ValueError(f"Run {r.name!r} has no run folder: pass run_dirs= to save")
        t, counts = self.threshold, self.counts
        t_opt, _ = self.optimum
        rule = "cost-optimal" if abs(t - t_opt) <= 1e-12 * max(1.0, abs(t)) else "explorer"
        params = {
            "cost_false_reject": self._cost(self.cost_false_reject),
            "cost_escape": self._cost(self.cost_escape),
            "pixel_threshold": float(self.pixel_slider.value),
            "method": r.pred.method,
            "n_images": len(r.pred),
            **{k: counts[k] for k in ("tp", "fp", "tn", "fn", "false_reject_rate",
                                      "escape_rate", "precision", "recall", "f1")},
        }
        path = _write_threshold(r.folder, t, rule, params)
        r.saved = {"value": t, "params": params}
        return path

    def _on_save(self, _button) -> None:
        try:
            path = self.save_threshold()
        except (ValueError, OSError) as err:
            self.status.value = (f"<span style='color:#c62828'>Not saved: "
                                 f"{html.escape(str(err))}</span>")
            return
        self.status.value = (f"<span style='color:#2e7d32'>Saved threshold {self.threshold:.4g} "
                             f"to {html.escape(str(path))}</span>")


# ---------------------------------------------------------------------------------------------
# The stand-alone page (Voilà)
# ---------------------------------------------------------------------------------------------


def runs_from_env(value: str | None = None) -> list[str]:
    """The run folders named in $ANOMALY_RUNS: a JSON list, or paths joined by os.pathsep."""
    value = os.environ.get(RUNS_ENV, "") if value is None else value
    value = value.strip()
    if not value:
        return []
    if value.startswith("["):
        return [str(v) for v in json.loads(value)]
    return [v for v in value.split(os.pathsep) if v]


def app():
    """What the Voilà page shows: the explorer of the runs in $ANOMALY_RUNS, or how to set it."""
    runs = runs_from_env()
    if not runs:
        import ipywidgets as w

        return w.HTML(f"<p>No runs to explore: set <code>{RUNS_ENV}</code> to one or more run "
                      "folders, or start the page with <code>python -m anomaly explore --run "
                      "runs/NAME</code>.</p>")
    return ThresholdExplorer(runs)


_NOTEBOOK_JSON = {
    "cells": [
        {"cell_type": "markdown", "metadata": {}, "source": ["# Threshold explorer"]},
        {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
         "source": ["from anomaly.explorer import app\n", "\n", "app()"]},
    ],
    "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                "name": "python3"}},
    "nbformat": 4, "nbformat_minor": 5,
}


def app_notebook() -> Path:
    """notebooks/explorer_app.ipynb of the repository, or a copy written to a temporary folder
    when the package is installed without the repository."""
    nb = Path(__file__).resolve().parent.parent / "notebooks" / APP_NOTEBOOK
    if nb.exists():
        return nb
    folder = Path(tempfile.mkdtemp(prefix="anomaly-explorer-"))
    nb = folder / APP_NOTEBOOK
    nb.write_text(json.dumps(_NOTEBOOK_JSON, indent=1))
    return nb


def voila_command(run_dirs, port: int = 8866, open_browser: bool = False) -> tuple[list, dict]:
    """The command line and environment that serve the explorer page for these run folders."""
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    folders = [Path(d).resolve() for d in run_dirs]
    if not folders:
        raise ValueError("explore needs at least one run folder (--run RUN)")
    for folder in folders:
        file = folder if folder.suffix == ".npz" else folder / PREDICTIONS_FILE
        if not file.exists():
            raise FileNotFoundError(
                f"{folder} has no {PREDICTIONS_FILE}: score the run first with "
                f"`python -m anomaly score --run {folder}`")
    env = os.environ.copy()
    env[RUNS_ENV] = json.dumps([str(f) for f in folders])
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [package_root, env.get("PYTHONPATH")] if p)
    cmd = [sys.executable, "-m", "voila", str(app_notebook()), f"--port={port}",
           "--Voila.ip=127.0.0.1", "--show_tracebacks=True"]
    if not open_browser:
        cmd.append("--no-browser")
    return cmd, env


def serve(run_dirs, port: int = 8866, open_browser: bool = False, block: bool = True):
    """Serve the explorer of these run folders as a stand-alone page with Voilà.

    Blocks until the server stops (Ctrl+C) and returns its exit code; with block=False returns
    the running `subprocess.Popen` (stop it with `.terminate()`).
    """
    cmd, env = voila_command(run_dirs, port, open_browser)
    print(f"Threshold explorer: http://127.0.0.1:{port}/  (Ctrl+C to stop)", flush=True)
    proc = subprocess.Popen(cmd, env=env)
    if not block:
        return proc
    import signal
    import threading

    forward = threading.current_thread() is threading.main_thread()
    if forward:  # a SIGTERM to us stops the server too, instead of orphaning it
        previous = signal.signal(signal.SIGTERM, lambda signum, _: proc.send_signal(signum))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
    finally:
        if forward:
            signal.signal(signal.SIGTERM, previous)
