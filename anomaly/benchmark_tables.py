"""The benchmark's tables and its notes document: Markdown tables of the rows, a summary per
suite and method, the detectability curve by defect area, and what the numbers were measured on.

`anomaly.benchmark` runs the methods and re-exports these names.
"""

from __future__ import annotations

import math
import os
import platform
import re
from pathlib import Path

import numpy as np

from anomaly.safe_files import _atomic
from anomaly.terminal import shell_word

COLUMNS = [
    ("method", "{}"),
    ("image_auroc", "{:.3f}"),
    ("image_auroc_ci", "{0[0]:.2f}-{0[1]:.2f}"),
    ("pixel_auroc", "{:.3f}"),
    ("aupro", "{:.3f}"),
    ("image_f1_max", "{:.3f}"),
    ("fit_s", "{:.0f}"),
    ("train_ips", "{:.0f}"),
    ("predict_ips", "{:.0f}"),
    ("peak_mb", "{:.0f}"),
]
SUMMARY_COLUMNS = [
    ("suite", "{}"),
    ("method", "{}"),
    ("sets", "{}"),
    ("mean_image_auroc", "{:.3f}"),
    ("mean_image_auroc_ci", "{0[0]:.3f}-{0[1]:.3f}"),
    ("worst_image_auroc", "{:.3f}"),
    ("worst_set", "{}"),
    ("mean_pixel_auroc", "{:.3f}"),
    ("mean_aupro", "{:.3f}"),
    ("mean_fit_s", "{:.0f}"),
]


def detectability(pred, frr: float = 0.05, bins: int = 6) -> dict:
    """Fraction of defects caught at a fixed false-reject rate, by defect area.

    The threshold passes the ceil((1 - frr) n) lowest of the n good test images' scores and
    rejects the rest, at most frr of them (the plain quantile, interpolated, rejected 2 of 25 at
    frr 0.05); defect area is the mask's pixel fraction, binned on a log scale between the
    smallest and the largest defect.
    """
    if pred.masks is None:
        raise ValueError("the detectability curve needs ground-truth masks (defect areas)")
    good = np.sort(pred.scores[pred.labels == 0])
    threshold = float("inf")
    if len(good):  # just above the k-th lowest good score: "caught" is score >= threshold
        k = max(1, math.ceil((1 - frr) * len(good) - 1e-9))
        threshold = float(np.nextafter(good[k - 1], np.inf))
    defect = pred.labels == 1
    area = pred.masks[defect].reshape(defect.sum(), -1).mean(axis=1)
    caught = pred.scores[defect] >= threshold
    keep = area > 0
    area, caught = area[keep], caught[keep]
    if not len(area):  # no defect with a visible mask: no areas to bin
        return {"frr": frr, "threshold": threshold, "bins": []}
    edges = np.geomspace(area.min(), area.max() * (1 + 1e-9), bins + 1)
    which = np.clip(np.digitize(area, edges) - 1, 0, bins - 1)
    rows = [
        {
            "area_lo": float(edges[i]),
            "area_hi": float(edges[i + 1]),
            "n": int((which == i).sum()),
            "caught": float(caught[which == i].mean()) if (which == i).any() else None,
        }
        for i in range(bins)
    ]
    return {"frr": frr, "threshold": threshold, "bins": rows}


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def _markdown(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])


def cell(value, fmt: str) -> str:
    """`value` formatted by `fmt`, or "n/a" for a metric that was not measured (None)."""
    return fmt.format(value) if value is not None else "n/a"


def format_table(rows: list[dict], per_defect: bool = True) -> str:
    """A Markdown table: the columns above (after `set` when rows name one), then per-defect-kind
    image AUROC (when `per_defect`, for one set: kinds differ between sets)."""
    kinds = sorted({k for r in rows for k in r.get("per_defect", {})}) if per_defect else []
    columns = ([("set", "{}")] if any("set" in r for r in rows) else []) + COLUMNS
    head = [c for c, _ in columns] + [f"auroc_{k}" for k in kinds]
    body = [
        [cell(r.get(c), fmt) for c, fmt in columns]
        + [cell(r.get("per_defect", {}).get(k), "{:.3f}") for k in kinds]
        if "error" not in r  # a method that failed: its row says so (`caveats` says why)
        else [_failed_cell(r, c, fmt) for c, fmt in columns] + ["-"] * len(kinds)
        for r in rows
    ]
    return _markdown(head, body)


def _failed_cell(row: dict, column: str, fmt: str) -> str:
    """A cell of the row of a method that failed: its set and method, FAILED for its image
    AUROC, "-" for the metrics it has none of."""
    if column in ("set", "method"):
        return cell(row.get(column), fmt)
    return "FAILED" if column == "image_auroc" else "-"


def caveats(rows: list[dict]) -> str:
    """What the tables alone do not say, in paragraphs ("" where nothing): the defective images
    left out of the pixel metrics for want of a mask, the methods that failed and why, and what
    each method's run warned of (copies of training images among the test images: metrics
    optimistic), which its subprocess printed and nobody read."""
    out = []
    unmasked = sorted(
        {(r.get("set", ""), r["n_missing_masks"]) for r in rows if r.get("n_missing_masks")}
    )
    if unmasked:  # their pixel metrics are over the other defective images only
        where = "; ".join(f"{s + ': ' if s else ''}{n}" for s, n in unmasked)
        out.append(
            "Pixel AUROC and AUPRO leave out the defective test images that have no mask "
            f"file ({where}); they count in the image metrics."
        )
    for key, what in (("error", "Failed"), ("warnings", "Warned")):
        said = [
            f"- {(r.get('set', '') + ' ').lstrip()}{r['method']}: {text}"
            for r in rows
            for text in r.get(key) or []
        ]
        if said:
            out.append(f"{what}:\n\n" + "\n".join(said))
    return "\n\n".join(out)


def _worst_first(row: dict) -> float:
    """Sort key: the lowest image AUROC first; a row without one (not measured) last."""
    auroc = row.get("image_auroc")
    return auroc if auroc is not None else 2.0


def _mean(rows: list[dict], key: str) -> float | None:
    """The mean of `key` over `rows`, None unless every row has it: a mean over fewer sets than
    the row's "sets" says would read as the suite's (it skipped them silently before)."""
    values = [r.get(key) for r in rows]
    return float(np.mean(values)) if values and None not in values else None


def summarize(rows: list[dict]) -> list[dict]:
    """Per suite and method, over its sets: mean and worst image AUROC, mean pixel metrics."""
    out = []
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r.get("suite", ""), r["method"]), []).append(r)
    for (suite, method), group in groups.items():
        rs = [r for r in group if "error" not in r]
        if failed := [r.get("set", "") for r in group if "error" in r]:  # no mean over fewer
            out.append(  # sets than the others' (its worst set may be one that failed)
                dict.fromkeys(c for c, _ in SUMMARY_COLUMNS)
                | {"suite": suite, "method": method, "sets": len(rs)}
                | {"worst_set": f"failed on {', '.join(failed)}"}
            )
            continue
        worst = min(rs, key=_worst_first)
        out.append(
            {
                "suite": suite,
                "method": method,
                "sets": len(rs),
                "mean_image_auroc": _mean(rs, "image_auroc"),
                "mean_image_auroc_ci": mean_interval(rs),
                "worst_image_auroc": worst["image_auroc"],
                "worst_set": worst.get("set"),
                "mean_pixel_auroc": _mean(rs, "pixel_auroc"),
                "mean_aupro": _mean(rs, "aupro"),
                "mean_fit_s": _mean(rs, "fit_s"),
            }
        )
    return out


def mean_interval(rows: list[dict], z: float = 1.96) -> list[float] | None:
    """An approximate 95 % interval of the mean image AUROC over independent sets, from each
    set's bootstrap interval (`anomaly.metrics.auroc_interval`): each interval's width read as
    2 z standard errors, the mean's error sqrt(sum of squares) / sets; for one set, its own
    interval. None when a row has none.
    """
    cis = [r.get("image_auroc_ci") for r in rows]
    if not rows or any(ci is None or r.get("image_auroc") is None for ci, r in zip(cis, rows)):
        return None
    if len(rows) == 1:  # one set: its own bootstrap interval, not a symmetric stand-in
        return list(cis[0])
    mean = sum(r["image_auroc"] for r in rows) / len(rows)
    se = sum(((hi - lo) / (2 * z)) ** 2 for lo, hi in cis) ** 0.5 / len(rows)
    return [max(0.0, mean - z * se), min(1.0, mean + z * se)]


def format_summary(summary: list[dict]) -> str:
    return _markdown(
        [c for c, _ in SUMMARY_COLUMNS],
        [[cell(s.get(c), fmt) for c, fmt in SUMMARY_COLUMNS] for s in summary],
    )


def machine() -> dict:
    """What the numbers were measured on (timings depend on it; accuracies do not)."""
    import torch

    from anomaly.detectors.knn import fast_int8
    from anomaly.run_versions import processor

    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": processor(),  # as versions.json names it
        "vnni": fast_int8(),  # patchknn's auto search in 8 bits there, else in float32
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _vnni(m: dict) -> str:
    if "vnni" not in m:  # recorded before it was
        return ""
    return " (VNNI: the 8-bit search)" if m["vnni"] else " (no VNNI: the float32 search)"


def notes_text(result: dict) -> str:
    """The benchmark-notes document: when, where, how loaded, which command, then the tables."""
    m = result["machine"]
    lines = [
        "# Benchmark notes",
        "",
        "Regenerated by the benchmark; the measurement log of the project (docstrings and README",
        "quote it, never the other way round). Accuracies are deterministic for a seed; timings",
        "depend on the machine and on what else ran.",
        "",
        f"- command: `{result['command']}`",
        f"- date: {result['date']} (UTC), total {result['total_s'] / 60:.1f} min",
        f"- machine: {m['cpu']}{_vnni(m)}, {m['cpus']} CPUs, torch {m['torch']} with "
        f"{m['torch_threads']} threads, Python {m['python']}, {m['platform']}"
        + (f", GPU {m['cuda']}" if m.get("cuda") else ""),
        _load_line(result.get("load_start"), result.get("load_end")),
        "",
        "## Per set and method",
        "",
        result["table"],
        "",
    ]
    if result.get("summary_table"):
        lines += ["## Summary per suite and method", "", result["summary_table"], ""]
    if said := caveats(result["rows"]):
        lines += ["## What the tables leave out", "", said, ""]
    return "\n".join(lines) + "\n"


NOTES_HEAD = "# Benchmark notes"  # the first line of every notes document


def check_notes(path: str | Path) -> None:
    """Refuse a `--notes` path that `write_notes` must not replace: a folder, or a file that
    is not a notes document the benchmark wrote (its first line `NOTES_HEAD`): `--notes
    README.md` would have replaced the README. Checked before anything runs."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"--notes {shell_word(path)} is a folder; give the notes file's name in it"
        )
    if not (path.exists() or path.is_symlink()):
        return
    try:
        ours = path.is_file() and path.read_bytes()[: len(NOTES_HEAD)] == NOTES_HEAD.encode()
    except OSError:
        ours = False
    if not ours:
        raise ValueError(
            f"--notes {shell_word(path)} exists and is not benchmark notes (they begin '{NOTES_HEAD}'), so "
            "it is not replaced; give another file name, or move that file away"
        )


def write_notes(path: str | Path, result: dict) -> Path:
    """Write the benchmark-notes document (`notes_text`) to `path`, such as
    docs/benchmark-notes.md: a new file, or one the benchmark wrote before (`check_notes`),
    through a temporary file (never through a link)."""
    path = Path(path)
    check_notes(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = notes_text(result)
    return _atomic(path, lambda f: f.write(text.encode()))


# ---------------------------------------------------------------------------------------------
# README's tables, rewritten in place between two markers
# ---------------------------------------------------------------------------------------------

README_COLUMNS = [c for c in COLUMNS if c[0] not in ("image_auroc_ci", "train_ips")]
TRIPLE = ("image_auroc", "pixel_auroc", "aupro")


def readme_table(rows: list[dict]) -> str:
    """README's table of one benchmark. One data set: a row per method, the most accurate first,
    with each defect kind's image AUROC. A suite: a row per set and a column per method
    ("image AUROC / pixel AUROC / AUPRO"), then the mean over the sets and the worst set, the
    best of each in bold. A method that failed on a set reads "failed" there."""
    ok = [r for r in rows if "error" not in r]
    if not any("set" in r for r in rows):
        ordered = sorted(ok, key=lambda r: -(r["image_auroc"] or 0.0))
        kinds = sorted({k for r in ok for k in r.get("per_defect", {})})
        return _markdown(
            [c for c, _ in README_COLUMNS] + [f"auroc_{k}" for k in kinds],
            [
                [cell(r.get(c), fmt) for c, fmt in README_COLUMNS]
                + [cell(r.get("per_defect", {}).get(k), "{:.3f}") for k in kinds]
                for r in ordered
            ],
        )
    methods = list(dict.fromkeys(r["method"] for r in rows))
    sets = list(dict.fromkeys(r["set"] for r in rows))
    found = {(r["set"], r["method"]): r for r in ok}

    def triple(r: dict | None) -> str:
        return " / ".join(cell(r.get(k), "{:.3f}") for k in TRIPLE) if r else "failed"

    body = [[s] + [triple(found.get((s, m))) for m in methods] for s in sets]
    means, worst = {}, {}
    for m in methods:
        rs = [found[s, m] for s in sets if (s, m) in found]
        if len(rs) == len(sets):  # a summary over fewer sets would not compare
            means[m] = {k: _mean(rs, k) for k in TRIPLE}
            worst[m] = min(rs, key=_worst_first)
    measured = [v["image_auroc"] for v in means.values() if v["image_auroc"] is not None]
    best_mean = max(measured, default=None)
    measured = [w["image_auroc"] for w in worst.values() if w["image_auroc"] is not None]
    best_worst = max(measured, default=None)

    def bold(text: str, value: float | None, best: float | None) -> str:
        return f"**{text}**" if value is not None and value == best else text

    body.append(
        ["**mean**"]
        + [
            bold(triple(means[m]), means[m]["image_auroc"], best_mean) if m in means else "-"
            for m in methods
        ]
    )
    body.append(
        ["**worst set**"]
        + [
            bold(
                f"{cell(worst[m]['image_auroc'], '{:.3f}')} ({worst[m]['set']})",
                worst[m]["image_auroc"],
                best_worst,
            )
            if m in worst
            else "-"
            for m in methods
        ]
    )
    return _markdown(["set"] + methods, body)


def readme_markers(block: str) -> tuple[str, str]:
    return f"<!-- benchmark:{block} -->", f"<!-- /benchmark:{block} -->"


def check_readme_block(readme: str | Path | None, block: str | None) -> None:
    """`benchmark --readme FILE` rewrites one of FILE's tables: without `--readme-block` it
    would not know which, so it stops before anything runs, naming the blocks FILE has; nor
    runs a `--readme-block` without `--readme`, which would rewrite nothing."""
    if block and not readme:
        raise ValueError(
            f"--readme-block {shell_word(block)} needs --readme FILE, the file to rewrite"
        )
    if not readme or block:
        return
    start = re.escape(readme_markers("BLOCK")[0]).replace("BLOCK", "([^ >]+)")
    try:
        names = re.findall(f"^{start}$", Path(readme).read_text(), re.MULTILINE)
    except (OSError, UnicodeDecodeError):
        names = []
    has = f" ({readme} has: {', '.join(names)})" if names else ""
    start, end = readme_markers("BLOCK")
    raise ValueError(
        f"--readme {shell_word(readme)} needs --readme-block BLOCK, the name in the markers "
        f"{start} and {end} of the table to rewrite{has}"
    )


def check_readme(path: str | Path, block: str) -> str:
    """The text of `path`, after checking it holds the block's two markers in order."""
    start, end = readme_markers(block)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(f"cannot read {path} ({err.strerror}); check --readme") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text; check --readme") from None
    i, j = text.find(start), text.find(end)
    if text.count(start) > 1 or text.count(end) > 1:
        raise ValueError(f"{path} has the block {start} more than once; keep one")
    lines = text.splitlines()
    if i >= 0 and j > i and not (start in lines and end in lines):
        raise ValueError(
            f"{path}: the markers {start} and {end} must each be a line of its own (what lies "
            "between them is replaced); put each on its own line"
        )
    if i < 0 or j < i:
        raise ValueError(
            f"{path} has no block {start} ... {end} (each on its own line, in that order); add "
            "the two lines where the table should go, or leave out --readme"
        )
    return text


def update_readme(path: str | Path, block: str, table: str) -> Path:
    """Replace what lies between the block's markers in `path` by `table`; nothing else of the
    file changes. Written to a temporary file and renamed, so a failure leaves it as it was."""
    text = check_readme(path, block)
    start, end = readme_markers(block)
    i, j = text.find(start) + len(start), text.find(end)
    new = f"{text[:i]}\n{table}\n{text[j:]}"
    return _atomic(Path(path), lambda f: f.write(new.encode()))


def _load_line(start, end) -> str:
    """The notes' line of load averages (None where the system keeps none: Windows)."""
    if not start or not end:
        return "- load average: not known on this system"
    return (
        "- load average (1/5/15 min) at start: {:.2f} / {:.2f} / {:.2f}; at the end: "
        "{:.2f} / {:.2f} / {:.2f}".format(*start, *end)
    )
