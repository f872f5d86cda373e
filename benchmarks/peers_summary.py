"""Summarise `peers.py` runs over several data sets (the real-photo suite) as Markdown tables.

    python benchmarks/peers_summary.py [RUNS_ROOT]   # default runs/peers-photos

Reads RUNS_ROOT/<set>/peers.json (one `benchmarks/peers.py` run per set) and prints two tables:
per method, the mean and worst image AUROC over the sets (naming the worst set), the mean pixel
AUROC and AUPRO, and the median over the sets of the predict CPU per image divided by that of
the MobileNetV2 backbone alone in the same run (and of user time alone, without the page faults
whose number what ran before in the process sets); then the image AUROC of every method on every
set. Methods timed without a backbone row, or not run on some set, show `-` where a value is
missing; means are over the sets where the method ran (the `sets` column counts them). Ends with
each run's 1-minute load average, as peers.py recorded it when the run finished.
"""

from __future__ import annotations

import argparse
import json
import statistics
import warnings
from pathlib import Path


def load_runs(root: Path) -> tuple[dict[str, dict[str, dict]], dict[str, list[float] | None]]:
    """({set: {method: row}}, {set: load average at the run's end}) from every
    root/<set>/peers.json, sets in name order."""
    runs, loads, settings = {}, {}, {}
    for path in sorted(root.glob("*/peers.json")):
        run = json.loads(path.read_text())
        runs[path.parent.name] = {r["method"]: r for r in run["rows"]}
        loads[path.parent.name] = run.get("load_average")
        settings[path.parent.name] = run.get("settings")  # (runs before it: not recorded)
    if len({json.dumps(s, sort_keys=True) for s in settings.values()}) > 1:
        said = "; ".join(f"{name}: {s}" for name, s in settings.items())
        warnings.warn(f"these sets ran with different settings, so their means mix them: {said}")
    return runs, loads


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def summary_table(runs: dict[str, dict[str, dict]]) -> str:
    """One row per method that has an image AUROC on at least one set."""
    methods = list(dict.fromkeys(m for rows in runs.values() for m in rows))
    head = (
        "| method | sets | mean image AUROC | worst image AUROC (set) | mean pixel AUROC "
        "| mean AUPRO | median ratio to backbone | median user-time ratio |"
    )
    lines = [head, "|" + "---|" * 8]
    for m in methods:
        got = {s: rows[m] for s, rows in runs.items() if m in rows}
        image = {s: r["image_auroc"] for s, r in got.items() if r.get("image_auroc") is not None}
        if not image:
            continue
        worst = min(image, key=image.get)
        pixel = [r["pixel_auroc"] for r in got.values() if r.get("pixel_auroc") is not None]
        pro = [r["aupro"] for r in got.values() if r.get("aupro") is not None]
        ratios = [r["ratio"] for r in got.values() if r.get("ratio") is not None]
        user = [r["user_ratio"] for r in got.values() if r.get("user_ratio") is not None]
        lines.append(
            f"| {m} | {len(image)} | {_fmt(_mean(list(image.values())))} | "
            f"{image[worst]:.3f} ({worst}) | {_fmt(_mean(pixel))} | {_fmt(_mean(pro))} | "
            f"{_fmt(statistics.median(ratios) if ratios else None, 2)} | "
            f"{_fmt(statistics.median(user) if user else None, 2)} |"
        )
    return "\n".join(lines)


def per_set_table(runs: dict[str, dict[str, dict]]) -> str:
    """Image AUROC, rows = sets, columns = methods that have one."""
    methods = [
        m
        for m in dict.fromkeys(m for rows in runs.values() for m in rows)
        if any(rows.get(m, {}).get("image_auroc") is not None for rows in runs.values())
    ]
    lines = ["| set | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 1)]
    for s, rows in runs.items():
        cells = [_fmt(rows.get(m, {}).get("image_auroc")) for m in methods]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("root", nargs="?", type=Path, default=Path("runs/peers-photos"))
    args = p.parse_args(argv)
    runs, loads = load_runs(args.root)
    if not runs:
        p.error(f"no {args.root}/<set>/peers.json: run benchmarks/peers.py --out {args.root}/<set>")
    print(summary_table(runs), per_set_table(runs), sep="\n\n")
    ends = "; ".join(f"{s} {v[0]:.1f}" for s, v in loads.items() if v)
    print(f"\n{len(runs)} sets; 1-minute load average at the end of each run: {ends}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
