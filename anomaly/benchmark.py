"""One table for every method on every data set: accuracy, cost, and how small a defect it finds.

Each method trains and scores in its own process (so peak memory is its own), on the same data
split with the same seed, at its default settings. The original project's recipe (its UNet, then
k-means on the max-pooled bottleneck) is the row `unet_original+kmeans`; `unet+kmeans` is the
project's k-means on the default UNet's encoder maps. `--data` takes one data set
(MVTec AD layout) or a suite root whose `manifest.json` lists its sets (the photo suite), and may
be repeated; methods are summarised over each suite by their mean and their worst set.

    python -m anomaly benchmark --data data/cookies --data data/photos [--methods ...] [--out DIR]
    python -m anomaly benchmark --curve train-size --data ROOT --method patchknn

The benchmark deletes only what it made: every run folder it creates holds a `.made-by-benchmark`
file listing the files it wrote, and a rerun removes those files and nothing else. It refuses an
existing folder without that mark (move it away or choose another `--out`).
Measurements (with the machine, the date, the load and the command) go to one notes document,
`docs/benchmark-notes.md`, not into docstrings.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

# the tables and the notes document (tests and notebooks import them from here too)
from anomaly.benchmark_tables import (
    check_readme,
    detectability,
    format_summary,
    format_table,
    machine,
    readme_table,
    summarize,
    update_readme,
    write_notes,
)
from anomaly.runs import RunDir

# `unet_original` is the original project's recipe (`--recipe original`), `+kmeans` the k-means
# on the bottleneck of the row named before the "+" (the original's own k-means for the original)
DEFAULT_METHODS = (
    "ae",
    "unet",
    "vae",
    "unet+kmeans",
    "unet_original",
    "unet_original+kmeans",
    "patchknn",
    "draem",
    "flow",
    "meandiff",
    "auto",
)
SMOKE = {"epochs": 1, "size": 64}
MARK = RunDir.TOOL_FILES[1]  # ".made-by-benchmark": train may write into a folder holding it


class BenchmarkError(ValueError):
    """A benchmark that cannot start: the message says why and what to do."""


# ---------------------------------------------------------------------------------------------
# Folders: only what the benchmark made is ever deleted
# ---------------------------------------------------------------------------------------------


def claim_dir(path: str | Path) -> Path:
    """Make `path` an empty folder owned by the benchmark, or refuse.

    A missing or empty folder is created and marked. A folder the benchmark marked before is
    emptied of the files its mark lists (all of them if the run never finished: the benchmark
    created it empty); anything else left in it stops the benchmark, untouched. A non-empty
    folder without the mark is refused.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BenchmarkError(f"{path} is a file, not a folder; choose another --out")
    if path.is_dir() and any(path.iterdir()):
        mark = path / MARK
        if not mark.exists():
            raise BenchmarkError(
                f"{path} already exists and was not made by the benchmark, which deletes nothing "
                "it did not make. Move it away, delete it yourself, or choose another --out"
            )
        files = json.loads(mark.read_text() or "{}").get("files")
        if files is None:  # unfinished run: the folder was created empty by the benchmark
            files = [str(p.relative_to(path)) for p in path.rglob("*") if not p.is_dir()]
        for rel in files:
            target = (path / rel).resolve()
            if path.resolve() in target.parents and (target.is_file() or target.is_symlink()):
                target.unlink()
        for d in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            if not any(d.iterdir()):
                d.rmdir()
        mark.unlink(missing_ok=True)
        left = sorted(str(p.relative_to(path)) for p in path.rglob("*"))
        if left:
            raise BenchmarkError(
                f"{path} holds files the benchmark did not make ({', '.join(left[:5])}); "
                "it kept them. Move them away or choose another --out"
            )
    path.mkdir(parents=True, exist_ok=True)
    (path / MARK).write_text(json.dumps({"made_by": "python -m anomaly benchmark", "files": None}))
    return path


def seal_dir(path: str | Path, below: bool = False) -> None:
    """Record in the mark every file now in `path` (the benchmark wrote them all).

    `below=False` lists only the files directly in `path` (an out folder whose run folders
    carry their own marks)."""
    path = Path(path)
    found = path.rglob("*") if below else path.iterdir()
    files = sorted(str(p.relative_to(path)) for p in found if p.is_file() and p.name != MARK)
    (path / MARK).write_text(
        json.dumps({"made_by": "python -m anomaly benchmark", "files": files}, indent=1)
    )


def claim_out(out: str | Path) -> Path:
    """The out folder: created and marked, or reused if the benchmark made it before."""
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not (out / MARK).exists():
        raise BenchmarkError(
            f"{out} already exists and was not made by the benchmark, which deletes nothing it "
            "did not make. Move it away, delete it yourself, or choose another --out"
        )
    if out.exists() and not out.is_dir():
        raise BenchmarkError(f"{out} is a file, not a folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    if not (out / MARK).exists():
        (out / MARK).write_text(json.dumps({"made_by": "python -m anomaly benchmark", "files": []}))
    return out


# ---------------------------------------------------------------------------------------------
# Data sets: one set, or a suite root whose manifest lists its sets
# ---------------------------------------------------------------------------------------------


def discover_sets(roots: str | Path | list) -> list[dict]:
    """Every data set under the `--data` roots: [{"suite", "name", "path"}], in order.

    A root with a `manifest.json` naming `sets` (the photo suite) gives one entry per set; any
    other root is one set named after its folder."""
    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    found = []
    for root in map(Path, roots):
        if not root.is_dir():
            raise BenchmarkError(f"--data {root}: no such folder")
        manifest = root / "manifest.json"
        sets = json.loads(manifest.read_text()).get("sets") if manifest.exists() else None
        if sets:
            names = (
                list(sets)
                if isinstance(sets, dict)
                else [s["name"] if isinstance(s, dict) else str(s) for s in sets]
            )
            found += [{"suite": root.name, "name": n, "path": str(root / n)} for n in names]
        else:
            found.append({"suite": root.name, "name": root.name, "path": str(root)})
    names = [f["name"] for f in found]
    for f in found:  # two roots may hold sets with one name
        if names.count(f["name"]) > 1:
            f["name"] = f"{f['suite']}-{f['name']}"
    return found


# ---------------------------------------------------------------------------------------------
# One method on one set, in its own process
# ---------------------------------------------------------------------------------------------


def _worker(method: str, data: str, out: str, seed: int, smoke: bool) -> dict:
    """Train and score one method in this process; return its row."""
    from anomaly.config import Config
    from anomaly.pipeline import score_run, train_run
    from anomaly.runs import load_config

    overrides = dict(SMOKE) if smoke else {}
    if method.endswith("+kmeans"):
        name = method.split("+")[0]
        source = Path(out).parent / name
        if not RunDir(source).has_model():
            raise RuntimeError(
                f"{method} needs the {name} row first (it clusters that run's bottleneck)"
            )
        # the project's k-means defaults (per-cell features, k by rule), or the original's own
        recipe = Config.for_method("kmeans", recipe=load_config(source).recipe)
        config = load_config(source).replace(
            method="kmeans",
            source_run=str(source.resolve()),
            seed=seed,
            k=recipe.k,
            kmeans_features=recipe.kmeans_features,
        )
    elif method == "unet_original":
        config = Config.for_method("unet", recipe="original").replace(
            data=str(Path(data).resolve()), seed=seed, **overrides
        )
    else:
        config = Config.for_method(method).replace(
            data=str(Path(data).resolve()), seed=seed, **overrides
        )
    t0 = time.perf_counter()
    train_run(config, out, progress=False)
    fit_s = time.perf_counter() - t0
    _, metrics = score_run(out, overlays=False)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # training images/s: images seen per second of training, all epochs (one pass for the
    # methods that do not train by epochs: patchknn, kmeans)
    run = RunDir(out)
    n_train = len(run.split()["train"])
    passes = max(1, len(run.history()))  # epochs trained (no history: one pass)
    return {
        "method": method,
        "fit_s": fit_s,
        "train_ips": n_train * passes / fit_s,
        "predict_ips": metrics["predict_images_per_s"],
        "peak_mb": peak_mb,
        **{
            k: metrics.get(k)
            for k in (
                "image_auroc",
                "image_auroc_ci",
                "image_ap",
                "image_f1_max",
                "pixel_auroc",
                "aupro",
            )
        },
        "per_defect": {k: v.get("image_auroc") for k, v in metrics.get("per_defect", {}).items()},
        "size": config.size,
        "epochs": config.epochs,
    }


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def check_methods(methods) -> None:
    """Refuse, before anything runs, a method name the benchmark does not know: a method, the
    original recipe `unet_original`, or `<ae|unet|vae|unet_original>+kmeans`."""
    from anomaly.config import METHODS

    bases = ("ae", "unet", "vae", "unet_original")
    unknown = [
        m
        for m in methods
        if not (m in METHODS or m == "unet_original" or m.removesuffix("+kmeans") in bases)
    ]
    if unknown:
        raise BenchmarkError(
            f"unknown methods {unknown}: choose from {', '.join(METHODS)}, unet_original, and "
            "ae+kmeans, unet+kmeans, vae+kmeans, unet_original+kmeans"
        )


def run_benchmark(
    data: str | list[str],
    methods=None,
    out: str = "runs/benchmark",
    seed: int = 0,
    smoke: bool = False,
    notes: str | Path | None = None,
    readme: str | Path | None = None,
    readme_block: str = "results",
) -> list[dict]:
    """Every method on every set, each in a subprocess; print and write the tables.

    Writes `out/benchmark.md`, `out/benchmark.json` and `out/benchmark-notes.md` (and the notes
    to `notes` too, for example docs/benchmark-notes.md). One set goes to `out/<method>`,
    several to `out/<set>/<method>`. With `readme`, README's table (`readme_table`) replaces
    what lies between its markers `<!-- benchmark:<readme_block> -->` and
    `<!-- /benchmark:<readme_block> -->`, which are checked before anything runs.
    """
    if readme:
        try:
            check_readme(readme, readme_block)
        except ValueError as err:
            raise BenchmarkError(str(err)) from None
    check_methods(methods or DEFAULT_METHODS)

    sets = discover_sets(data)
    methods = list(methods or DEFAULT_METHODS)
    out_dir = claim_out(out)
    rows, t0, load_start = [], time.perf_counter(), os.getloadavg()
    date = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    for ds in sets:
        base = out_dir if len(sets) == 1 else claim_out(out_dir / ds["name"])
        for method in methods:
            run = claim_dir(base / method.replace("+", "_"))
            cmd = [
                sys.executable,
                "-m",
                "anomaly.benchmark",
                method,
                ds["path"],
                str(run),
                str(seed),
            ]
            proc = subprocess.run(
                cmd + (["--smoke"] if smoke else []), capture_output=True, text=True, check=False
            )
            seal_dir(run, below=True)
            tag = {"set": ds["name"], "suite": ds["suite"]} if len(sets) > 1 else {}
            if proc.returncode != 0:
                print(f"{ds['name']} {method}: FAILED\n{proc.stderr[-2000:]}", file=sys.stderr)
                rows.append(
                    {**tag, "method": method, "error": proc.stderr.strip().splitlines()[-1:]}
                )
                continue
            row = {**tag, **json.loads(proc.stdout.strip().splitlines()[-1])}
            pred = RunDir(run).predictions()
            if pred.has_masks:
                row["detectability"] = detectability(pred)
            rows.append(row)
            print(
                f"{ds['name']} {method}: image AUROC {row['image_auroc']:.3f}, "
                f"fit {row['fit_s']:.0f} s",
                flush=True,
            )
        if base is not out_dir:
            seal_dir(base)
    total = time.perf_counter() - t0
    ok = [r for r in rows if "error" not in r]
    table = format_table(ok, per_defect=len(sets) == 1)
    summary = summarize(ok) if len(sets) > 1 else []
    roots = [data] if isinstance(data, (str, Path)) else data
    data_flags = " ".join(f"--data {d}" for d in roots)
    command = (
        f"python -m anomaly benchmark {data_flags} --methods {' '.join(methods)} "
        f"--out {out}" + (" --smoke" if smoke else "")
    )
    result = {
        "rows": rows,
        "summary": summary,
        "total_s": total,
        "command": command,
        "date": date,
        "machine": machine(),
        "load_start": list(load_start),
        "load_end": list(os.getloadavg()),
        "table": table,
        "summary_table": format_summary(summary) if summary else "",
    }
    text = table + (f"\n\n{result['summary_table']}" if summary else "")
    (out_dir / "benchmark.md").write_text(
        f"{text}\n\nMade by `{command}` in {total / 60:.1f} min.\n"
    )
    (out_dir / "benchmark.json").write_text(json.dumps(result, indent=2, default=str))
    written = [write_notes(out_dir / "benchmark-notes.md", result)]
    if notes:
        written.append(write_notes(notes, result))
    if readme:
        written.append(update_readme(readme, readme_block, readme_table(rows)))
    seal_dir(out_dir)
    print(text)
    print(
        f"\ntotal {total / 60:.1f} min; wrote {out_dir}/benchmark.md, benchmark.json, "
        + ", ".join(str(p) for p in written)
    )
    return rows


def add_arguments(p) -> None:
    """The `benchmark` subcommand's flags (cli.py builds the parser, this module owns them)."""
    p.add_argument(
        "--data",
        action="append",
        required=True,
        help="a data set, or a suite root "
        "whose manifest.json lists its sets (the photo suite); repeat for several",
    )
    p.add_argument("--methods", nargs="+", help=f"default: {' '.join(DEFAULT_METHODS)}")
    p.add_argument(
        "--out",
        help="output folder (default runs/benchmark, for a curve "
        "runs/curves); the benchmark deletes only what it made there",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny budgets, to check the wiring")
    p.add_argument(
        "--notes",
        help="also write the notes document here, e.g. docs/benchmark-notes.md (`make "
        "benchmark` does; a benchmark of other data never overwrites the project's notes)",
    )
    p.add_argument(
        "--readme",
        help="also rewrite this file's results table (e.g. README.md; `make benchmark` does): "
        "what lies between the lines <!-- benchmark:BLOCK --> and <!-- /benchmark:BLOCK -->",
    )
    p.add_argument(
        "--readme-block",
        default="results",
        dest="readme_block",
        help="--readme: the BLOCK name of its markers (default results)",
    )
    p.add_argument(
        "--curve",
        choices=("train-size",),
        help="train-size: how many good images "
        "a method needs (image AUROC, AUPRO, escape rate at the conformal 1%% "
        "threshold, fit time against n)",
    )
    p.add_argument(
        "--method",
        help="--curve: the method (default patchknn; unet+kmeans is the original recipe)",
    )
    p.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        help="--curve: training-set sizes (default 1 2 4 ... 128 and all)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="--curve: random subsets per size, for sizes up to --seeds-up-to",
    )
    p.add_argument("--seeds-up-to", type=int, default=8, dest="seeds_up_to")
    p.add_argument(
        "--alpha",
        type=float,
        default=0.01,
        help="--curve: conformal false-reject rate for the escape rate (default 0.01)",
    )


def main(args) -> None:
    """Run what the parsed `benchmark` flags ask for."""
    if args.curve == "train-size":
        from anomaly.benchmark_curves import train_size_curve, write_curve
        from anomaly.metrics import conformal_n_needed

        conformal_n_needed(args.alpha)  # refuses an alpha outside (0, 1) before any training
        if args.sizes and min(args.sizes) < 1:
            raise BenchmarkError(f"--sizes must be at least 1, got {min(args.sizes)}")
        if args.seeds < 1:
            raise BenchmarkError(f"--seeds must be at least 1, got {args.seeds}")
        method = args.method or "patchknn"
        out = claim_out(args.out or "runs/curves")
        rows = []
        for ds in discover_sets(args.data):
            rows += train_size_curve(
                ds["path"],
                method,
                sizes=args.sizes,
                seeds=args.seeds,
                seed=args.seed,
                alpha=args.alpha,
                smoke=args.smoke,
                name=ds["name"],
                seeds_up_to=args.seeds_up_to,
            )
        stem = f"train_size_{method.replace('+', '_')}"
        paths = write_curve(rows, out, stem=stem)
        seal_dir(out)
        print("wrote " + ", ".join(map(str, paths)))
        return
    rows = run_benchmark(
        args.data,
        methods=args.methods,
        out=args.out or "runs/benchmark",
        seed=args.seed,
        smoke=args.smoke,
        notes=args.notes,
        readme=args.readme,
        readme_block=args.readme_block,
    )
    failed = [f"{r.get('set', '')} {r['method']}".strip() for r in rows if "error" in r]
    if failed:  # the tables hold the others; the exit status says not all of them ran
        raise BenchmarkError(f"{len(failed)} of {len(rows)} runs failed: {', '.join(failed)}")


if __name__ == "__main__":
    method, data, run, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    row = _worker(method, data, run, seed, smoke="--smoke" in sys.argv)
    print(json.dumps(row, default=float))
