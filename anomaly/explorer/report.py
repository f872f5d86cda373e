"""What the explorer hands on: a self-contained HTML report of the current decision (opens in
any browser, no Python), and a static picture of the explorer's state for notebooks read on
the web. Both draw the same histogram as the page (`draw_histogram`)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import html
import io
from collections import Counter
from pathlib import Path

import numpy as np

from anomaly.explorer.gallery import outcome
from anomaly.explorer.runs import RunView
from anomaly.explorer.text import (
    cv_words,
    describe_rule,
    format_confusion_html,
    guarantee,
    percent,
    rule_html,
)
from anomaly.metrics import auroc_interval, image_auroc
from anomaly.onnx_checks import score_text
from anomaly.runs import RunDir
from anomaly.safe_files import RunError, _atomic, load_record
from anomaly.terminal import printable

GOOD_COLOUR, DEFECT_COLOUR = "#4c72b0", "#dd8452"
REPORT_GALLERY = 120  # at most this many misclassified images in a report
MARK = '<meta name="generator" content="anomaly threshold explorer">'  # is_report looks for it


def is_report(path: Path) -> bool:
    """True when `path` is a regular file the explorer wrote (its head holds `MARK`, or the
    title of a report from before the mark)."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(2048)
        return MARK.encode() in head or b"<title>Inspection threshold report: " in head
    except OSError:
        return False


def write_report(path: Path, text: str) -> Path:
    """Write report `text` to `path` through a temporary file that then takes the name: a
    symbolic link there is replaced, never followed (a run folder from someone else could point
    report.html at any file), and a file there that is not an explorer report is refused, not
    replaced."""
    if not path.is_symlink() and path.exists() and not is_report(path):
        raise RunError(
            f"{path} exists and is not a report the threshold explorer wrote, so it was not "
            "replaced; move it away, or pass export_report another path"
        )
    data = text.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    return _atomic(path, lambda f: f.write(data))


def download_link(name: str, text: str, where: str) -> str:
    """The page's link that downloads report `text` as `name`, then `where` it was written."""
    data = base64.b64encode(text.encode("utf-8")).decode("ascii")
    return (
        f"<a download='{html.escape(name)}' "
        f"href='data:text/html;base64,{data}'>Download {html.escape(name)}</a>"
        f"<span style='color:#666'>{where}</span>"
    )


def plain(text: str) -> str:
    """Text for a matplotlib label, drawn as it is: a run's name, defect kind or folder comes
    from its files (perhaps someone else's), and "$...$" in it would be parsed as mathtext,
    failing deep inside matplotlib on "\\foo" (a `\\$` is a literal dollar sign)."""
    return str(text).replace("$", r"\$")


def draw_histogram(ax, r: RunView, optimum: float | None, threshold: float | None) -> None:
    """Score histograms of good and defective images, the cost optimum (when there is one),
    the saved rule's threshold (with its guarantee), and `threshold` when given."""
    scores, labels = r.pred.scores, r.pred.labels
    bins = np.linspace(r.lo, r.hi, 41)
    ax.hist(
        scores[labels == 0],
        bins=bins,
        histtype="stepfilled",
        alpha=0.6,
        color=GOOD_COLOUR,
        label=f"good ({int(np.sum(labels == 0))})",
    )
    ax.hist(
        scores[labels > 0],
        bins=bins,
        histtype="stepfilled",
        alpha=0.6,
        color=DEFECT_COLOUR,
        label=f"defective ({int(np.sum(labels > 0))})",
    )
    if optimum is not None:
        ax.axvline(
            optimum,
            color="#2ca02c",
            linestyle="--",
            linewidth=1.5,
            label="cost optimum (in-sample)",
        )
    if r.saved is not None:
        bound = guarantee(r.saved)
        what = plain(f"saved: {r.saved.rule}" + (f", FRR {bound}" if bound else ""))
        ax.axvline(r.saved.value, color="#1565c0", linestyle=":", linewidth=1.8, label=what)
    if threshold is not None:
        ax.axvline(threshold, color="#d62728", linewidth=2, label="threshold")
    ax.set_xlim(r.lo, r.hi)
    ax.set_xlabel("image anomaly score")
    ax.set_ylabel("images")
    ax.set_title(plain(r.label), fontsize=10)


def _figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def histogram_svg(ex) -> str:
    fig = _figure((6.4, 3.0))
    ax = fig.add_subplot(111)
    draw_histogram(ax, ex.run, _optimum(ex), ex.threshold)
    ax.legend(fontsize=7, loc="upper right", framealpha=0.8)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _optimum(ex) -> float | None:
    return None if ex.no_optimum else ex.optimum[0]


def _costs(ex, counts: dict, short: bool = False) -> str:
    """The costs: at this threshold, the optimum and its held-out check; the report's paragraph,
    or (`short`) the snapshot's lines."""
    c_fr, c_esc = ex.costs
    here = c_fr * counts["fp"] + c_esc * counts["fn"]
    text = (
        f"costs: false reject {c_fr:g}, escape {c_esc:g}\ncost here {here:.4g}"
        if short
        else f"Costs: a false reject {c_fr:g}, an escape {c_esc:g}; cost at this threshold "
        f"{here:.4g}."
    )
    if ex.no_optimum:
        return (
            f"{text}\nno cost optimum"
            if short
            else f"{text} No cost optimum: {html.escape(ex.no_optimum)}."
        )
    (t_opt, cost_opt), cv = ex.optimum, ex.cross_validated
    if cv is None:
        short_cv = "\nno held-out check: too few images"
        return (
            f"{text}; optimum {t_opt:.4g} (cost {cost_opt:.4g}, in-sample){short_cv}"
            if short
            else f"{text} The cost optimum ({t_opt:.4g}, cost {cost_opt:.4g}) is in-sample. "
            + cv_words(cv)
        )
    fr, esc = 100 * cv["false_reject_rate"], 100 * cv["escape_rate"]
    costs = cv.get("costs") or [cv["cost"]]
    if short:
        spread = f", cost {costs[0]:.4g}-{costs[-1]:.4g}" if len(costs) > 1 else ""
        return (
            f"{text}; optimum {t_opt:.4g} (cost {cost_opt:.4g}, in-sample)\noptimum chosen on "
            f"half, counted on the other\n(2-fold{spread}): false-reject {fr:.1f}%, escape "
            f"{esc:.1f}%"
        )
    return f"{text} The cost optimum ({t_opt:.4g}, cost {cost_opt:.4g}) is in-sample. " + cv_words(
        cv
    )


def _jpeg_uri(rgb: np.ndarray, quality: int = 82) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _file_digest(path: Path) -> str | None:
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()  # whole: a validation record compares it with threshold.json's


def identity(r: RunView) -> list[tuple[str, str]]:
    """Run and data identity: what someone needs to find the same run and images again."""
    pred = r.pred
    rows = [("run", r.name), ("method", pred.method or "?")]
    if r.folder is not None:
        rows.append(("run folder", str(Path(r.folder).resolve())))
        config = RunDir(r.folder).file(RunDir.CONFIG)
        if config.is_file():
            try:
                cfg = load_record(config)
                rows += [(k, str(cfg[k])) for k in ("data", "size", "channels", "seed") if k in cfg]
            except (ValueError, OSError):
                pass
        home = RunDir(r.home or r.folder)  # a folder of `score --data` or --out: its run's model
        if home.path != RunDir(r.folder).path:
            rows.append(("scored by the run", str(home.path.resolve())))
        for name, where in ((RunDir.MODEL, home), (RunDir.PREDICTIONS, RunDir(r.folder))):
            digest = _file_digest(where.file(name))
            if digest:
                rows.append((f"{name} sha256", digest))
        rows += _made_by(home.versions_record())
    listed = "\n".join(pred.paths).encode("utf-8", "surrogateescape")  # a name's bytes as they are
    names = hashlib.sha256(listed).hexdigest()  # of the names alone, not the images' bytes
    kinds = Counter(pred.defects)
    rows += [
        ("images", f"{len(pred)} ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))})"),
        ("image list sha256 (names)", names),
    ]
    good, bad = int(np.sum(pred.labels == 0)), int(np.sum(pred.labels > 0))
    if good and bad and np.isfinite(pred.scores).all():  # as `score`'s metrics.json has it
        low, high = auroc_interval(pred.labels, pred.scores)  # (resampled in the page's order)
        auroc = image_auroc(pred.labels, pred.scores)
        rows.append(("image AUROC", f"{auroc:.3f} (95 % interval {low:.2f}-{high:.2f})"))
    return rows


def _made_by(record: dict | None) -> list[tuple[str, str]]:
    """The versions.json entries that say what made the run (train writes it), as report rows
    (none where the run has no readable record). From a file: strings and numbers only."""
    if not record:
        return []
    keys = ("anomaly", "code", "python", "torch", "onnxruntime", "numpy", "processor")
    said = [
        f"{k} {str(record[k])[:80]}" for k in keys if isinstance(record.get(k), str | int | float)
    ]
    return [("made by (versions.json)", printable(", ".join(said)))] if said else []


def report_html(ex) -> str:
    """The current run at the current threshold, as one HTML file with everything inline."""
    r, t, counts = ex.run, ex.threshold, ex.counts
    gallery = ex.gallery
    wrong = np.flatnonzero(gallery.wrong(r))
    margin = np.abs(r.pred.scores[wrong] - t)
    wrong = wrong[np.argsort(-margin, kind="stable")]
    tiles = []
    for i in wrong[:REPORT_GALLERY]:
        word, what = _outcome(r, int(i), t)
        tiles.append(
            f"<figure><img src='{_jpeg_uri(gallery.overlay(r, int(i), 256))}' alt=''>"
            f"<figcaption><b>{word}: {what}</b><br>{html.escape(r.pred.defects[i])} &middot; "
            f"score {score_text(r.pred.scores[i], t)}<br>{html.escape(printable(Path(r.pred.paths[i]).name))}"
            "</figcaption></figure>"
        )
    more = (
        f"<p>The {len(wrong) - REPORT_GALLERY} least wrong are left out.</p>"
        if len(wrong) > REPORT_GALLERY
        else ""
    )
    ident = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in identity(r)
    )
    rule = describe_rule(r.saved) if r.saved else "none saved"
    note = gallery.image_note(r)
    note = f"<p class='image-note'><b>Note:</b> {html.escape(note)}.</p>" if note else ""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
{MARK}
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Inspection threshold report: {html.escape(r.label)}</title>
<style>
body {{font-family: sans-serif; margin: 16px; max-width: 1100px; color: #222}}
table {{border-collapse: collapse; font-size: 13px}} th, td {{text-align: left;
padding: 2px 8px}} .id th {{color: #555; font-weight: normal}}
.gallery {{display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr));
gap: 8px}} figure {{margin: 0; font-size: 11px}} figure img {{width: 100%}}
svg {{max-width: 100%; height: auto}}
</style></head><body>
<h1>Threshold report: {html.escape(r.label)}</h1>
<p>Threshold <b class="threshold">{float(t)!r}</b>: a part is REJECTED iff its anomaly score is
&gt;= the threshold. Pixel threshold (overlays) {ex.pixel_threshold:.4g}.
Saved rule: {html.escape(rule)}. Made {now}.</p>
{rule_html(r.saved, t, counts, _optimum(ex), r.pred.paths)}
<h2>Confusion matrix and rates</h2>
{format_confusion_html(counts, r.saved, t)}
<p>{_costs(ex, counts)}</p>
<h2>Score histogram</h2>
{histogram_svg(ex)}
<h2>Misclassified images ({len(wrong)})</h2>
<p>Red: evidence above the pixel threshold on a rejected image (on one that passes, the
strongest yellow); yellow: raised but below; green outline: the true defect. Most wrong first.</p>
{note}<div class="gallery">{"".join(tiles)}</div>{more}
<h2>Run and data</h2>
<table class="id">{ident}</table>
</body></html>
"""


def _outcome(r: RunView, i: int, t: float) -> tuple[str, str]:
    return outcome(r.pred.labels[i], float(r.pred.scores[i]), t)


def snapshot_figure(ex, n_tiles: int = 4):
    """A static picture of the explorer: histogram, confusion counts, costs (with the cost
    optimum's 2-fold cross-validated check: the counts here are in-sample) and the most wrong
    images, large enough to see their red evidence."""
    import matplotlib.pyplot as plt

    r, t, c = ex.run, ex.threshold, ex.counts
    fig = plt.figure(figsize=(10, 7.2))
    plt.close(fig)  # shown once, when a notebook cell returns it
    grid = fig.add_gridspec(2, max(n_tiles, 2), height_ratios=[1.1, 1])
    ax = fig.add_subplot(grid[0, : n_tiles // 2 + 1])
    draw_histogram(ax, r, _optimum(ex), t)
    ax.legend(fontsize=7, loc="upper right", framealpha=0.8)
    tx = fig.add_subplot(grid[0, n_tiles // 2 + 1 :])
    tx.set_axis_off()
    text = (
        f"threshold {float(t)!r}\n\n"
        f"good:       {c['tn']} PASS, {c['fp']} REJECT (false rejects)\n"
        f"defective:  {c['tp']} REJECT (caught), {c['fn']} PASS (escapes)\n\n"
        f"false-reject rate {percent(c, 'false_reject_rate')}\n"
        f"escape rate       {percent(c, 'escape_rate')}\n"
        "(counted on the images shown: in-sample)\n\n"
        f"saved rule: {describe_rule(r.saved) if r.saved else 'none'}\n\n"
        + _costs(ex, c, short=True)
    )
    text = plain(text)
    tx.text(0, 1, text, va="top", family="monospace", fontsize=8.5)
    order = ex.gallery.order(filtered=False)  # the most wrong, then the closest calls
    wrong = ex.gallery.wrong(r)
    for k in range(n_tiles):
        a = fig.add_subplot(grid[1, k])
        a.set_axis_off()
        if k < len(order):
            i = int(order[k])
            a.imshow(ex.gallery.overlay(r, i))
            word, what = _outcome(r, i, t)
            a.set_title(
                plain(f"{word}: {what}\n{r.pred.defects[i]} {score_text(r.pred.scores[i], t)}"),
                fontsize=7.5,
                color="#c62828" if wrong[i] else "#2e7d32",
            )
    fig.tight_layout()
    return fig
