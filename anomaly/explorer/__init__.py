"""The threshold explorer: choose where "defective" starts, and see what the choice costs.

An anomaly detector gives every image a score; the line between PASS and REJECT is a business
decision, not a property of the model. `ThresholdExplorer` shows, for one or several runs on
the same data, what a threshold does: the score histograms of good and defective images, the
confusion matrix and its rates, which rule set the threshold and what it guarantees, the cost
optimum (and how it does on images it did not choose on), and every image it gets wrong, with
the same evidence overlays `score` writes. "Save threshold" writes `RUN/threshold.json`, which
`predict` then uses (refused for a run without its model.pt: a threshold records its model); "Export report" writes a self-contained HTML report.

    widget.py   the ipywidgets page (controls and wiring only)
    gallery.py  paging, filter by defect kind, the large view, a second run's verdicts
    report.py   the HTML report and the static picture for notebooks
    text.py     the confusion matrix and the threshold's rule in words
    runs.py     loading run folders; what each run needs for fast updates
    server.py   the stand-alone page (Voila serving notebooks/explorer_app.ipynb)

The arithmetic lives in `anomaly.decision` (threshold table, costs, cross-validated optimum)
and `anomaly.metrics`; the pictures in `anomaly.overlays`.
"""

from anomaly.decision import (
    ThresholdTable,
    cost_optimal_threshold,
    cost_optimum,
    counts_at,
    score_range,
    threshold_table,
)
from anomaly.explorer.runs import load_run_predictions
from anomaly.explorer.server import app, runs_from_env, serve, voila_command
from anomaly.explorer.text import format_confusion_html
from anomaly.explorer.widget import ThresholdExplorer

__all__ = [
    "ThresholdExplorer",
    "ThresholdTable",
    "app",
    "cost_optimal_threshold",
    "cost_optimum",
    "counts_at",
    "format_confusion_html",
    "load_run_predictions",
    "runs_from_env",
    "score_range",
    "serve",
    "threshold_table",
    "voila_command",
]
