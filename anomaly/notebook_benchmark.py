"""The notebooks' benchmark results and figures: the benchmark tables (`make benchmark`, or a
tiny one in smoke mode), the detectability figure, and notebook 06's train-size curves.

`anomaly.notebook` re-exports these names (notebook cells call `nb.benchmark_result(s)`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from anomaly.notebook_setup import Settings, _subplots, ensure_cookies


def benchmark_result(s: Settings) -> dict:
    """The benchmark of `runs_dir` (`make benchmark`); a smoke run makes a tiny one first.

    The result's `table` has a row per set and method, `summary_table` (several sets) the mean
    and worst set per suite and method."""
    import contextlib
    import io
    import tempfile

    from anomaly.benchmark import format_table, run_benchmark

    path = s.runs_dir / "benchmark.json"
    if not path.exists() and (s.runs_dir.parent / "benchmark.json").exists():
        path = s.runs_dir.parent / "benchmark.json"  # runs_dir is one set of a suite benchmark
    if s.smoke:  # a fresh folder each time: the benchmark never reuses a folder it did not make
        s.runs_dir.mkdir(parents=True, exist_ok=True)  # beside the smoke runs, not left in /tmp
        out = Path(tempfile.mkdtemp(prefix="smoke-bench-", dir=s.runs_dir)) / "bench"
        with contextlib.redirect_stdout(io.StringIO()):  # the cell prints the tables itself
            run_benchmark(
                str(ensure_cookies(s)), methods=["patchknn"], out=str(out), seed=s.seed, smoke=True
            )
        path = out / "benchmark.json"
    elif not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make benchmark` first (about 30 min)")
    result = _full(s, path, "30")
    result.setdefault("table", format_table([r for r in result["rows"] if "error" not in r]))
    return result


def photos_result(s: Settings) -> dict:
    """The photo-suite benchmark (`runs/benchmark-photos`, written by `make benchmark`); a smoke
    run benchmarks two tiny photo sets first."""
    import contextlib
    import io
    import tempfile

    from anomaly.benchmark import run_benchmark
    from anomaly.data.photos import make_photos

    path = s.runs_dir.parent / "benchmark-photos" / "benchmark.json"
    if s.smoke:  # a fresh folder each time, as benchmark_result
        s.runs_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="smoke-photos-", dir=s.runs_dir))
        make_photos(tmp / "photos", seed=0, tiny=True, sets=["moon", "page"])
        with contextlib.redirect_stdout(io.StringIO()):
            run_benchmark(
                str(tmp / "photos"),
                methods=["patchknn", "meandiff"],
                out=str(tmp / "bench"),
                seed=s.seed,
                smoke=True,
            )
        path = tmp / "bench" / "benchmark.json"
    elif not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make benchmark` first (about 40 min)")
    return _full(s, path, "40")


def _full(s: Settings, path: Path, minutes: str) -> dict:
    """The benchmark result at `path`; at full settings, one of `benchmark --smoke` (64 px, one
    epoch: its numbers are no benchmark's) is refused, as `Settings.run_folder` refuses its
    runs, instead of shown under the benchmark's headings."""
    result = json.loads(path.read_text())
    if not s.smoke and " --smoke" in str(result.get("command", "")):
        raise FileNotFoundError(
            f"{path} holds a `benchmark --smoke` result (tiny sizes, one epoch), not shown as "
            f"the benchmark: run `make benchmark` (about {minutes} min)"
        )
    return result


def detectability_figure(result: dict, set_name: str | None = None):
    """Fraction of defects caught at a fixed false-reject rate, by defect area, per method, on
    one set (default the first)."""
    from anomaly.viz import plain_log

    rows = [r for r in result["rows"] if "detectability" in r]
    set_name = set_name or (rows[0].get("set") if rows else None)
    known = list(dict.fromkeys(str(r.get("set")) for r in rows))
    if not any(r.get("set") == set_name for r in rows):
        raise ValueError(
            f"no detectability for the set {set_name!r} in this result: its sets are "
            f"{', '.join(map(repr, known))}"
            if known
            else "this result holds no detectability (no method measured it): benchmark on a "
            "data set whose defective test images have masks"
        )
    fig, ax = _subplots(figsize=(7.5, 3.5))
    # methods can tie exactly (auto choosing patchknn): each gets its own marker and dash, and
    # later lines are drawn thinner and on top, so no curve hides another
    styles = [("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", "-"), ("P", "--")]
    shown = [r for r in rows if r.get("set") == set_name]
    for k, row in enumerate(shown):
        bins = [b for b in row["detectability"]["bins"] if b["caught"] is not None]
        centre = [100 * np.sqrt(b["area_lo"] * b["area_hi"]) for b in bins]
        marker, dash = styles[k % len(styles)]
        ax.plot(
            centre,
            [b["caught"] for b in bins],
            marker=marker,
            linestyle=dash,
            markersize=7 - 4 * k / max(1, len(shown)),
            linewidth=2.2 - k / max(1, len(shown)),
            markerfacecolor="none" if k % 2 else None,
            label=row["method"],
        )
    plain_log(ax.xaxis, ax.set_xscale)  # labelled 0.1, 1, 10
    ax.set_xlabel("defect area (% of the image); n = defects in each area bin")
    ax.set_ylabel("defects caught at 5% false rejects")
    ax.set_ylim(-0.02, 1.12)
    for b in (b for b in shown[0]["detectability"]["bins"] if b.get("n")):  # what each rests on
        x = 100 * np.sqrt(b["area_lo"] * b["area_hi"])
        ax.text(x, 1.07, f"n={b['n']}", ha="center", va="center", fontsize=7, color="0.35")
    ax.legend(fontsize=7, title=set_name, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


# --- notebook 06: how many good images (the train-size curve) ---------------------------------

CURVE_COMMANDS = (
    (
        "python -m anomaly benchmark --curve train-size --data data/cookies --data data/photos/moon "
        "--data data/photos/page --method patchknn --seeds-up-to 64 --out runs/curves"
    ),
    (
        "python -m anomaly benchmark --curve train-size --data data/cookies --method unet+kmeans "
        "--sizes 2 4 8 16 24 32 64 128 --out runs/curves"
    ),
)


def train_size_rows(s: Settings) -> list[dict]:
    """The train-size curves in `runs/curves` (`CURVE_COMMANDS`); smoke: patchknn on the tiny set."""
    from anomaly.benchmark_curves import read_curve, train_size_curve

    if s.smoke:
        return train_size_curve(ensure_cookies(s), "patchknn", smoke=True, progress=False)
    folder = s.runs_dir.parent / "curves"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is missing: run\n  " + "\n  ".join(CURVE_COMMANDS))
    return read_curve(folder)


def _curves(rows: list[dict], sets=None, methods=None) -> dict[str, dict]:
    from anomaly.benchmark_curves import curve_summary

    groups: dict[str, list[dict]] = {}
    for r in rows:
        if (sets is None or r["set"] in sets) and (methods is None or r["method"] in methods):
            groups.setdefault(f"{r['set']} {r['method']}", []).append(r)
    return {label: curve_summary(rs) for label, rs in groups.items()}


def train_size_figure(rows: list[dict], sets=None, methods=None):
    """Image AUROC, AUPRO and the conformal escape rate against n, one line per set and method."""
    from anomaly.benchmark_curves import train_size_figure as figure

    return figure(_curves(rows, sets, methods))


def train_size_table(rows: list[dict], target: float = 0.95) -> str:
    """Per set and method: mean image AUROC and fit time at each n, the n that reaches `target`,
    and the escape and false-reject rates at the conformal threshold."""
    from anomaly.benchmark_curves import images_needed

    lines = []
    for label, c in _curves(rows).items():
        group = [r for r in rows if f"{r['set']} {r['method']}" == label]
        points = "  ".join(f"{n}:{a:.3f}" for n, a in zip(c["n"], c["image_auroc"]))
        fits = "  ".join(f"{n}:{t:.1f}" for n, t in zip(c["n"], c["fit_s"]))
        escapes = "  ".join(f"{n}:{e:.2f}" for n, e in zip(c["n"], c["escape_rate"]))
        rejects = "  ".join(f"{n}:{f:.2f}" for n, f in zip(c["n"], c["false_reject_rate"]))
        alphas = ", ".join(f"{a:.3g}" for a in sorted(set(c["alpha_used"])))
        needed = images_needed(group, target)
        reach = f"reaches {target} at n = {needed}" if needed else f"does not reach {target}"
        lines.append(
            f"{label}: image AUROC by n  {points}\n  fit seconds by n  {fits}\n  {reach}\n"
            f"  at the conformal threshold (alpha {alphas}): escapes by n  {escapes}\n"
            f"    false rejects by n  {rejects}"
        )
    return "\n".join(lines)
