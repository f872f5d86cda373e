"""`ThresholdExplorer`: the ipywidgets page over `anomaly.decision`, `anomaly.overlays` and viz.

It holds controls and wiring only. The arithmetic (counts at a threshold, costs, the cost
optimum and its cross-validated check) is `anomaly.decision`; the pictures are
`anomaly.overlays` (the gallery, in `gallery.py`) and matplotlib (the histogram); the report
and the static picture are `report.py`.
"""

from __future__ import annotations

import html
import time
from pathlib import Path

import numpy as np

from anomaly.decision import cost_optimum, counts_at, cross_validated_cost
from anomaly.explorer.gallery import Gallery, close_tree, png
from anomaly.explorer.report import (
    download_link,
    draw_histogram,
    report_html,
    snapshot_figure,
    write_report,
)
from anomaly.explorer.runs import RunView, collect_runs, prepare, threshold_path
from anomaly.explorer.saving import (
    ThresholdChanged,
    check_unchanged,
    chosen_threshold,
    write_threshold,
)
from anomaly.explorer.text import (
    cost_html,
    format_confusion_html,
    no_optimum,
    rule_html,
    unmeasured,
)
from anomaly.metrics import Threshold
from anomaly.runs import RunDir
from anomaly.threshold_file import check_page_model

# One halving is one draw: the cookie benchmark's patchknn run (140 images, costs 1 and 10)
# read 61 on the first, 32-61 over 21 (median 40). Odd: the median is one of them.
CV_REPEATS = 21
DPR = 2  # the histogram PNG has 2 pixels per CSS pixel: crisp on high-density screens
CSS = """<style>
.anomaly-explorer {max-width: 1280px; box-sizing: border-box}
.anomaly-explorer .widget-slider .widget-readout {min-width: 5em}
.anomaly-explorer img {image-rendering: auto}
.anomaly-explorer .anomaly-tile button {width: 100%}
</style>"""


class ThresholdExplorer:
    """An ipywidgets explorer of image thresholds for one or several runs on the same data.

    Display it as the last expression of a cell (or `display(explorer)`); `explorer.widget` is
    the ipywidgets box. Every control is an attribute, so tests and notebooks can drive it:
    `explorer.slider.value = 0.3` updates the histogram line, the confusion matrix and the
    gallery at once. `explorer.report_html()` is a self-contained report of the current state
    and `explorer.snapshot()` a static picture of it (for a notebook read on the web).

    Args:
        runs: a `Predictions`, a dict name -> Predictions (or run folder), a run folder, or a
            list of run folders / Predictions (one entry per method, same images).
        run_dirs: where "Save threshold" writes for runs given as Predictions: one folder, a
            list in the order of `runs`, or a dict name -> folder. Runs loaded from folders
            save into their own folder.
        images: optional images [N, ...] for the gallery (uint8, or float in [0, 1], any
            size); otherwise they are read from the predictions' paths, only from inside the
            run's data folder (its predictions.npz or config.json says which), or the map is
            shown (and the gallery says why).
        cost_false_reject: starting cost of rejecting a good part.
        cost_escape: starting cost of passing a defective part (usually much higher).
        gallery_size: how many images one gallery page shows.
    """

    def __init__(
        self,
        runs,
        run_dirs=None,
        images=None,
        cost_false_reject: float = 1.0,
        cost_escape: float = 10.0,
        gallery_size: int = 12,
    ) -> None:
        import ipywidgets as w

        preds, dirs = collect_runs(runs, run_dirs)
        self.runs: dict[str, RunView] = {n: prepare(n, p, dirs[n]) for n, p in preds.items()}
        self.images = images
        self._busy = False
        self._cv_cache: dict[tuple, dict] = {}
        self.last_update_s = 0.0  # how long the last refresh took (for latency checks)

        first = next(iter(self.runs.values()))
        full = w.Layout(width="100%", max_width="560px")
        self.run_select = w.Dropdown(
            options=[(r.label, r.name) for r in self.runs.values()],
            value=first.name,
            description="Run",
            layout=w.Layout(width="100%", max_width="360px"),
            disabled=len(self.runs) == 1,
        )
        # continuous_update=False: with True, ipywidgets 8 echoes every value set from Python
        # back snapped to the step, so "Go to cost optimum" would not land on the optimum.
        self.slider = w.FloatSlider(
            description="Image threshold",
            continuous_update=False,
            readout_format=".4g",
            style={"description_width": "118px"},
            layout=full,
        )
        self.slider.add_class("anomaly-threshold-slider")
        self.pixel_slider = w.FloatSlider(
            description="Pixel threshold",
            continuous_update=False,
            readout_format=".4g",
            style={"description_width": "118px"},
            layout=full,
        )
        self.pixel_slider.add_class("anomaly-pixel-slider")
        box = w.Layout(width="220px")
        self.cost_false_reject = w.BoundedFloatText(
            value=cost_false_reject,
            min=0,
            max=1e12,
            description="Cost of a false reject",
            style={"description_width": "140px"},
            layout=box,
        )
        self.cost_escape = w.BoundedFloatText(
            value=cost_escape,
            min=0,
            max=1e12,
            description="Cost of an escape",
            style={"description_width": "140px"},
            layout=box,
        )
        self.optimum_button = w.Button(
            description="Go to cost optimum", icon="bullseye", layout=w.Layout(width="180px")
        )
        self.cost_label = w.HTML()
        self.cost_label.add_class("anomaly-cost")
        self.rule = w.HTML()
        self.rule.add_class("anomaly-rule")
        self.save_button = w.Button(
            description="Save threshold",
            icon="save",
            button_style="primary",
            layout=w.Layout(width="160px"),
        )
        self.save_button.add_class("anomaly-save")
        self.report_button = w.Button(
            description="Export report", icon="file", layout=w.Layout(width="160px")
        )
        self.report_button.add_class("anomaly-report")
        self.report_link = w.HTML()
        self.report_link.add_class("anomaly-report-link")
        self.status = w.HTML()
        self.status.add_class("anomaly-status")
        self.confusion = w.HTML(layout=w.Layout(max_width="100%", overflow="auto"))
        self.confusion.add_class("anomaly-confusion-box")
        self.histogram = w.Image(
            format="png", layout=w.Layout(width="100%", max_width="486px", height="auto")
        )
        self.histogram.add_class("anomaly-histogram")
        self.gallery = Gallery(self, page_size=gallery_size)

        wrap = {"flex_flow": "row wrap", "align_items": "center", "grid_gap": "6px 12px"}
        self.widget = w.VBox(
            [
                w.HTML(CSS),
                w.HBox([self.run_select, self.status], layout=w.Layout(**wrap)),
                self.slider,
                self.pixel_slider,
                w.HBox(
                    [self.cost_false_reject, self.cost_escape, self.optimum_button],
                    layout=w.Layout(**wrap),
                ),
                self.cost_label,
                w.HBox(
                    [
                        self.histogram,
                        w.VBox([self.confusion, self.rule], layout=w.Layout(max_width="100%")),
                    ],
                    layout=w.Layout(**{**wrap, "align_items": "flex-start"}),
                ),
                w.HBox(
                    [self.save_button, self.report_button, self.report_link],
                    layout=w.Layout(**wrap),
                ),
                self.gallery.widget,
            ],
            layout=w.Layout(width="100%", max_width="1280px"),
        )
        self.widget.add_class("anomaly-explorer")

        self._build_figure()
        self.run_select.observe(self._on_run, names="value")
        self.slider.observe(self._on_change, names="value")
        self.pixel_slider.observe(self._on_change, names="value")
        self.cost_false_reject.observe(self._on_costs, names="value")
        self.cost_escape.observe(self._on_costs, names="value")
        self.optimum_button.on_click(self._on_optimum)
        self.save_button.on_click(self._on_save)
        self.report_button.on_click(self._on_report)
        self._show_run(first)

    def close(self) -> None:
        """Close the explorer's widgets (`gallery.close_tree`): one built per cell run or page."""
        close_tree(self.widget, *(v for v in vars(self).values() if hasattr(v, "_model_id")))

    # --- display ------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs):
        bundle = self.widget._repr_mimebundle_(**kwargs)
        # What a reader without a live kernel sees instead of "VBox(children=(...": a sentence.
        bundle["text/plain"] = (
            "Threshold explorer (a live widget: run the notebook to use it; "
            "explorer.snapshot() draws its state as a picture)"
        )
        return bundle

    # --- state --------------------------------------------------------------------------
    @property
    def run(self) -> RunView:
        return self.runs[self.run_select.value]

    @property
    def threshold(self) -> float:
        return float(self.slider.value)

    @property
    def pixel_threshold(self) -> float:
        return float(self.pixel_slider.value)

    @property
    def costs(self) -> tuple[float, float]:
        return self._cost(self.cost_false_reject), self._cost(self.cost_escape)

    @property
    def counts(self) -> dict:
        """Counts and rates of the current run at the slider's threshold."""
        return counts_at(self.run.table, self.threshold)

    @property
    def optimum(self) -> tuple[float, float]:
        """(threshold, total cost) minimising the current costs for the current run."""
        r = self.run
        return cost_optimum(r.table, *self.costs, r.lo, r.hi)

    @property
    def no_optimum(self) -> str:
        """Why the current run has no cost optimum ("" when it has one): its images lack a
        class, so escapes (or false rejects) cannot be counted, and the "optimum" would be a
        threshold chosen without them."""
        return no_optimum(self.run.name, self.run.missing, self.costs)

    def optimum_of(self, r: RunView) -> float:
        return cost_optimum(r.table, *self.costs, r.lo, r.hi)[0]

    def threshold_of(self, r: RunView) -> float:
        """The threshold run r is shown at: the slider's, its last one, saved, or its optimum."""
        if r is self.run:
            return self.threshold
        if r.threshold is not None:
            return r.threshold
        return r.saved.value if r.saved else self.optimum_of(r)

    @property
    def cross_validated(self) -> dict:
        """The cost-optimal rule judged on images it did not choose on (2-fold, the median of
        `CV_REPEATS` random halvings, with their spread)."""
        r = self.run
        key = (r.name, *self.costs)
        if key not in self._cv_cache:
            self._cv_cache[key] = cross_validated_cost(
                r.pred.labels, r.pred.scores, *self.costs, folds=2, repeats=CV_REPEATS
            )
        return self._cv_cache[key]

    @staticmethod
    def _cost(box) -> float:
        return max(float(box.value or 0.0), 0.0)

    # --- the histogram ------------------------------------------------------------------
    def _build_figure(self) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self._fig = Figure(figsize=(5.4, 2.7), dpi=90 * DPR)
        FigureCanvasAgg(self._fig)
        self._ax = self._fig.add_subplot(111)
        self._fig.subplots_adjust(left=0.11, right=0.98, bottom=0.17, top=0.9)
        self._line = None

    def _draw_histogram(self) -> None:
        """Redraw the static part (histograms, optimum, saved rule) and keep it as background."""
        r, ax = self.run, self._ax
        ax.clear()
        draw_histogram(ax, r, None if self.no_optimum else self.optimum[0], None)
        self._line = ax.axvline(
            self.threshold, color="#d62728", linewidth=2, animated=True, label="threshold"
        )
        ax.legend(fontsize=7, loc="upper right", framealpha=0.8)
        self._fig.canvas.draw()
        self._background = self._fig.canvas.copy_from_bbox(self._fig.bbox)

    def _blit_threshold(self) -> None:
        canvas = self._fig.canvas
        canvas.restore_region(self._background)
        self._line.set_xdata([self.threshold, self.threshold])
        self._ax.draw_artist(self._line)
        self.histogram.value = png(np.asarray(canvas.buffer_rgba())[..., :3])

    # --- updating -----------------------------------------------------------------------
    def _show_run(self, r: RunView) -> None:
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
                r.threshold = r.saved.value if r.saved else self.optimum[0]
            if r.pixel_threshold is None:
                r.pixel_threshold = r.scale.pixel_threshold
            s.value = float(np.clip(r.threshold, r.lo, r.hi))
            p.value = float(np.clip(r.pixel_threshold, r.map_lo, r.map_hi))
            self.save_button.disabled = r.folder is None
            self.save_button.tooltip = (  # RUN/threshold.json for RUN/scored/<name>/
                f"Write {threshold_path(r.folder)}"
                if r.folder
                else "No run folder: pass run_dirs= to save"
            )
            self.status.value = (
                f"<span style='color:#666'>saved threshold "
                f"{r.saved.value:.4g} ({html.escape(r.saved.rule)})</span>"
                if r.saved
                else ""
            )
            self.gallery.on_run()
        finally:
            self._busy = False
        self._draw_histogram()
        self.refresh()

    def refresh(self) -> None:
        """Update everything that depends on the threshold: line, matrix, costs, gallery."""
        start = time.perf_counter()
        r = self.run
        r.threshold, r.pixel_threshold = self.threshold, self.pixel_threshold
        counts = self.counts
        self.confusion.value = format_confusion_html(counts, r.saved, self.threshold)
        why_not = self.no_optimum
        optimum = None if why_not else self.optimum[0]
        self.optimum_button.disabled = bool(why_not)
        self.optimum_button.tooltip = f"No cost optimum: {why_not}" if why_not else ""
        self.rule.value = rule_html(r.saved, self.threshold, counts, optimum, r.pred.paths)
        self.cost_label.value = self._cost_text(counts)
        self._blit_threshold()
        self.gallery.refresh()
        self.last_update_s = time.perf_counter() - start

    def _cost_text(self, counts: dict) -> str:
        c_fr, c_esc = self.costs
        cost = c_fr * counts["fp"] + c_esc * counts["fn"]
        if self.no_optimum:
            return cost_html(cost, len(self.run.pred), self.no_optimum)
        return cost_html(cost, len(self.run.pred), "", self.optimum, self.cross_validated)

    # --- callbacks ----------------------------------------------------------------------
    def _on_change(self, change) -> None:
        if not self._busy:
            self.refresh()

    def _on_costs(self, change) -> None:
        if not self._busy:
            self._draw_histogram()
            self.refresh()

    def _on_run(self, change) -> None:
        self._show_run(self.runs[change["new"]])

    def go_to_optimum(self) -> float:
        """Move the slider to the cost-optimal threshold of the current costs; return it.
        ValueError when the run has none (`no_optimum`: its images lack a class)."""
        if self.no_optimum:
            raise ValueError(f"No cost optimum: {self.no_optimum}")
        t_opt, _ = self.optimum
        self.slider.value = t_opt
        return t_opt

    def _on_optimum(self, _button) -> None:
        try:
            self.go_to_optimum()
        except ValueError as err:
            self.status.value = f"<span style='color:#c62828'>{html.escape(str(err))}</span>"

    def save_threshold(self) -> Path:
        """Write the slider's threshold to RUN/threshold.json (value, rule, params; the run's for
        `score --data`'s RUN/scored/<name>/) and show it as saved, as the Save button does."""
        r = self.run
        if r.folder is None:
            raise ValueError(f"Run {r.name!r} has no run folder: pass run_dirs= to save")
        self._check_model()  # the run moved, or trained again, since this page read it
        self._sync_saved()  # another command or page saved one since: shown, not replaced
        t = self.threshold
        if r.saved is not None and t == r.saved.value and "guarantee" in r.saved.params:
            kept = {**r.saved.params, "pixel_threshold": self.pixel_threshold}
            return self._save(Threshold(t, r.saved.rule, kept))  # its rule and guarantee kept
        t_opt = None if self.no_optimum else self.optimum[0]
        at_optimum = t_opt is not None and abs(t - t_opt) <= 1e-12 * max(1.0, abs(t))
        rule = "cost-optimal" if at_optimum else "explorer"
        return self._save(
            chosen_threshold(r, t, rule, self.costs, self.pixel_threshold, self.counts)
        )

    def _save(self, threshold: Threshold) -> Path:
        r, t = self.run, threshold.value
        path, removed = write_threshold(r.folder, threshold, r.saved)  # under the run's lock
        r.saved = threshold
        r.scale = type(r.scale)(r.scale.floor, self.pixel_threshold)
        self.status.value = (
            f"<span style='color:#2e7d32'>Saved threshold {t:.4g} "
            f"to {html.escape(str(path))}.</span>{unmeasured(r.missing)}"
            + (f"<br>{html.escape(removed[:1].upper() + removed[1:])}." if removed else "")
        )
        self._draw_histogram()
        self.refresh()
        return path

    def _sync_saved(self) -> None:
        """ThresholdChanged, the threshold saved now shown as saved, where another command or
        page replaced the one this page read (`check_unchanged`)."""
        try:
            check_unchanged(self.run.folder, self.run.saved) if self.run.folder else None
        except ThresholdChanged as changed:
            self.run.saved = changed.now
            self._draw_histogram()
            self.refresh()
            raise

    def _shown_as_saved(self) -> None:
        """Before a report or snapshot: the threshold saved now as "saved" (one of another
        command since this page read it, said in the status line), never the page's old one."""
        try:
            self._sync_saved()
        except ThresholdChanged as changed:
            self.status.value = f"<span style='color:#c62828'>{html.escape(str(changed))}</span>"

    def _check_model(self) -> None:
        if (home := self.run.home) is not None and self.run.made_by:
            check_page_model(RunDir(home).file(RunDir.MODEL), self.run.made_by, home)

    def _on_save(self, _button) -> None:
        try:
            self.save_threshold()
        except (ValueError, OSError) as err:
            self.status.value = (
                f"<span style='color:#c62828'>Not saved: {html.escape(str(err))}</span>"
            )

    # --- report -------------------------------------------------------------------------
    def report_html(self) -> str:
        """A self-contained HTML report of the current run at the current threshold."""
        self._shown_as_saved()
        return report_html(self)

    def export_report(self, path: str | Path | None = None) -> Path:
        """Write the report to `path` (default RUN/report.html); return where it went (a link
        there replaced, never followed; a file there that is not a report refused:
        `report.write_report`)."""
        if path is None:
            if self.run.folder is None:
                raise ValueError("No run folder to write report.html into: pass a path")
            path = self.run.folder / "report.html"
        self._check_model()  # its provenance: the files the page read
        return write_report(Path(path), self.report_html())

    def _on_report(self, _button) -> None:
        text, where = self.report_html(), ""
        if self.run.folder is not None:
            try:
                where = f" Written to {html.escape(str(self.export_report()))}."
            except (OSError, ValueError) as err:
                where = f" (Not written to the run folder: {html.escape(str(err))}.)"
        self.report_link.value = download_link(f"report_{self.run.name}.html", text, where)

    def snapshot(self):
        """A static picture of the explorer's state (a matplotlib Figure): histogram,
        confusion matrix and the first misclassified images."""
        self._shown_as_saved()
        return snapshot_figure(self)
