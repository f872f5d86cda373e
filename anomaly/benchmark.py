"""One table for every method on every data set: accuracy, cost, and how small a defect it finds.

Each method trains and scores in its own process (so peak memory is its own), on the same data
split with the same seed, at its default settings. The original project's recipe (its UNet, then
k-means on the max-pooled bottleneck) is the row `unet_original+kmeans`; `unet+kmeans` is the
project's k-means on the default UNet's encoder maps. `--data` takes one data set
(MVTec AD layout) or a suite root whose `manifest.json` lists its sets (the photo suite), and may
be repeated; methods are summarised over each suite by their mean and their worst set.

    python -m anomaly benchmark --data data/cookies --data data/photos [--methods ...] [--out DIR]
    python -m anomaly benchmark --curve train-size --data ROOT --method patchknn

Before any method trains or any folder is touched, `anomaly.benchmark_checks` checks the data,
`--methods` (each `<row>+kmeans` after its row) and `--seed`, so a mistake costs seconds.
The benchmark deletes only what it made (`anomaly.benchmark_dirs`): every run folder it creates
holds a `.made-by-benchmark` file listing the files it wrote. A rerun first checks every folder it
will use and refuses, with nothing removed, one without that mark or holding other files (move
them away or choose another `--out`); each method trains into a temporary sibling that replaces
its earlier run only when it finished, so a method that fails keeps its earlier results.
Measurements (with the machine, the date, the load and the command) go to one notes document,
`docs/benchmark-notes.md`, not into docstrings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

# the checks made before anything trains (tests import them from here too)
from anomaly.benchmark_checks import (
    check_curve_method,
    check_enough_for_auto,
    check_methods,
    check_seed,
    check_sets,
    discover_sets,
)
from anomaly.benchmark_dirs import (  # MARK, BenchmarkError, claim_*: tests import them here
    MARK,  # noqa: F401
    OUT_FILES,
    BenchmarkError,
    check_dir,
    check_out,
    claim_dir,
    claim_out,
    discard_dir,
    replace_dir,
    run_dirs,
    seal_dir,
    write_out,
)
from anomaly.benchmark_flags import (  # DEFAULT_METHODS: tests and notebooks import it here
    DEFAULT_METHODS,
    check_mode_flags,
)

# the tables and the notes document (tests and notebooks import them from here too)
from anomaly.benchmark_tables import (
    caveats,
    cell,
    check_notes,
    check_readme,
    check_readme_block,
    detectability,
    format_summary,
    format_table,
    machine,
    notes_text,
    readme_table,
    summarize,
    update_readme,
    write_notes,
)
from anomaly.pixel_eval import EVAL_SIZE, parse_pixel_size
from anomaly.runs import RunDir
from anomaly.terminal import shell_word

SMOKE = {"epochs": 1, "size": 64}


# ---------------------------------------------------------------------------------------------
# One method on one set, in its own process
# ---------------------------------------------------------------------------------------------


def _peak_mb() -> float | None:
    """This process's peak memory in MB; None where Python has no `resource` (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load() -> list[float] | None:
    """The 1/5/15-minute load averages; None where the system keeps none (Windows)."""
    try:
        return list(os.getloadavg())
    except (AttributeError, OSError):
        return None


def _config(method: str, data: str, seed: int, smoke: bool):
    """The Config the benchmark trains `method` (not a +kmeans row) with on `data`."""
    from anomaly.config import Config

    overrides = dict(SMOKE) if smoke else {}
    start = Config.for_method("unet", recipe="original") if method == "unet_original" else None
    start = start or Config.for_method(method)
    return start.replace(data=str(Path(data).resolve()), seed=seed, **overrides)


def _kept_source(source: str, sets: list[dict], bases: list[Path], seed: int, smoke: bool):
    """Whether every set's folder in --out holds a finished `source` run that this benchmark
    would train alike (same data, seed and settings): a `source+kmeans` row may cluster it
    without `source` in --methods."""
    from anomaly.runs import RunError, load_config

    try:
        return all(
            RunDir(base / source).has_model()
            and load_config(base / source) == _config(source, ds["path"], seed, smoke)
            for ds, base in zip(sets, bases)
        )
    except (RunError, OSError, ValueError, TypeError):
        return False


def _worker(
    method: str, data: str, out: str, seed: int, smoke: bool, pixel_size: int | str = EVAL_SIZE
) -> dict:
    """Train and score one method in this process (the pixel metrics at `pixel_size`,
    `anomaly.pixel_eval`); return its row."""
    from anomaly.config import Config
    from anomaly.pipeline import score_run, train_run
    from anomaly.runs import load_config

    if method.endswith("+kmeans"):
        name = method.split("+")[0]
        source = Path(out).parent / name
        if not RunDir(source).has_model():
            raise BenchmarkError(
                f"{method} needs the {name} row first (it clusters that run's encoder features)"
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
    else:
        config = _config(method, data, seed, smoke)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always", UserWarning)  # for the row (its stderr is not read)
        train_run(config, out, progress=False)
        fit_s = time.perf_counter() - t0
        _, metrics = score_run(out, overlays=False, pixel_size=pixel_size)
    warned = dict.fromkeys(  # not those of --smoke's own settings ("--size 64: ...")
        str(w.message).splitlines()[0][:400]
        for w in said
        if issubclass(w.category, UserWarning)
        and not (
            smoke and str(w.message).startswith(tuple(f"--{k} {v}:" for k, v in SMOKE.items()))
        )
    )
    peak_mb = _peak_mb()
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
        "n_missing_masks": metrics.get("n_missing_masks", 0),  # left out of the pixel metrics
        "pixel_metrics_size": metrics.get("pixel_metrics_size"),
        "size": config.size,
        "epochs": config.epochs,
        "warnings": list(warned),
    }


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


# a worker's exit by Ctrl-C, SIGTERM or SIGHUP: killed by it (-N), or exiting 128 + N
STOPPED = {-2, -15, -1, 130, 143, 129}


def _run_method(
    method: str, ds: dict, base: Path, seed: int, smoke: bool, failed, pixel_size=EVAL_SIZE
) -> dict:
    """Train and score `method` on the set `ds` in a subprocess, into a temporary sibling of its
    run folder that replaces the earlier run only when it finished: its row, or its error (the
    earlier run kept). `failed`: the methods of this set that failed before it."""
    final, work = run_dirs(base, method)
    kept = f"; the earlier run in {final} is kept" if final.is_dir() else ""
    source = method.split("+")[0]
    if method.endswith("+kmeans") and source in failed:  # not on the earlier source run
        print(f"{ds['name']} {method}: not run, its {source} row failed{kept}", file=sys.stderr)
        return {"method": method, "error": [f"its {source} row failed"]}
    claim_dir(work)
    cmd = [sys.executable, "-m", "anomaly.benchmark", method, ds["path"], str(work), str(seed)]
    cmd += ["--pixel-size", str(pixel_size)] + (["--smoke"] if smoke else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seal_dir(work, below=True)
    if proc.returncode != 0:
        discard_dir(work)
        if proc.returncode in STOPPED:  # Ctrl-C, or a stop, reached it alone: the whole run
            raise KeyboardInterrupt  # stops, not one FAILED row and the README rewritten
        print(f"{ds['name']} {method}: FAILED{kept}\n{proc.stderr[-2000:]}", file=sys.stderr)
        return {"method": method, "error": proc.stderr.strip().splitlines()[-1:]}
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    for said in row.get("warnings", []):  # the run's own warnings: printed, and in the notes
        print(f"{ds['name']} {method}: warning: {said}", file=sys.stderr)
    try:
        replace_dir(work, final)
    except BenchmarkError as err:  # a file of the user's arrived meanwhile: both runs kept
        print(f"{ds['name']} {method}: its new run stays in {work}: {err}", file=sys.stderr)
        return {"method": method, "error": [str(err)]}
    pred = RunDir(final).predictions()
    if pred.has_masks:
        row["detectability"] = detectability(pred)
    return row


def run_benchmark(
    data: str | list[str],
    methods=None,
    out: str = "runs/benchmark",
    seed: int = 0,
    smoke: bool = False,
    notes: str | Path | None = None,
    readme: str | Path | None = None,
    readme_block: str | None = None,
    pixel_size: int | str = EVAL_SIZE,
) -> list[dict]:
    """Every method on every set, each in a subprocess; print and write the tables.

    Writes `out/benchmark.md`, `out/benchmark.json` and `out/benchmark-notes.md` (and the notes
    to `notes` too, for example docs/benchmark-notes.md). One set goes to `out/<method>`,
    several to `out/<set>/<method>`. With `readme` and `readme_block` (no default: which
    table), README's table (`readme_table`) replaces what lies between its markers
    `<!-- benchmark:<readme_block> -->` and `<!-- /benchmark:<readme_block> -->`, which are
    checked before anything runs. Pixel AUROC and AUPRO compare maps and masks at
    `pixel_size` x `pixel_size`, or at each set's masks' own size for "full" (`score
    --pixel-size`).
    """
    pixel_size = parse_pixel_size(str(pixel_size))  # a typo refused before anything runs
    if readme:
        try:
            check_readme_block(readme, readme_block)  # which of its tables (no default)
            check_readme(readme, readme_block)
        except ValueError as err:
            raise BenchmarkError(str(err)) from None
    if notes is not None:
        try:
            check_notes(notes)
        except ValueError as err:
            raise BenchmarkError(str(err)) from None
    check_seed(seed)
    sets = discover_sets(data)
    counts = check_sets(sets, pixel_size)  # before any folder is claimed or method trained
    # (the pixel metrics' sizes and memory too: not after every method trained)
    methods = list(methods or DEFAULT_METHODS)
    if "auto" in methods:
        check_enough_for_auto(sets, counts, lambda ds: _config("auto", ds["path"], seed, smoke))
    bases = [Path(out) if len(sets) == 1 else Path(out) / ds["name"] for ds in sets]
    check_methods(methods, kept=lambda src: _kept_source(src, sets, bases, seed, smoke))
    roots = tuple(ds["path"] for ds in sets)
    check_out(out, writes=OUT_FILES, data=roots)  # a table edited by hand is never overwritten
    for base in bases:  # every refusal comes before anything is removed
        check_out(base)
        for method in methods:
            for folder in run_dirs(base, method):
                check_dir(folder)
    out_dir = claim_out(out)
    rows, t0, load_start = [], time.perf_counter(), _load()
    date = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    for ds, base in zip(sets, bases):
        base = claim_out(base)
        tag = {"set": ds["name"], "suite": ds["suite"]} if len(sets) > 1 else {}
        failed: list[str] = []
        for method in methods:
            row = {**tag, **_run_method(method, ds, base, seed, smoke, failed, pixel_size)}
            rows.append(row)
            if "error" in row:
                failed.append(method)
                continue
            auroc, fit_s = cell(row.get("image_auroc"), "{:.3f}"), cell(row.get("fit_s"), "{:.0f}")
            print(f"{ds['name']} {method}: image AUROC {auroc}, fit {fit_s} s", flush=True)
        if len(sets) > 1:
            seal_dir(base)
    total = time.perf_counter() - t0
    table = format_table(rows, per_defect=len(sets) == 1)
    summary = summarize(rows) if len(sets) > 1 else []
    roots = [data] if isinstance(data, (str, Path)) else data
    data_flags = " ".join(f"--data {shell_word(d)}" for d in roots)
    command = (
        f"python -m anomaly benchmark {data_flags} --methods {' '.join(methods)} "
        f"--out {shell_word(out)}"
        + (f" --pixel-size {pixel_size}" if pixel_size != EVAL_SIZE else "")
        + (" --smoke" if smoke else "")
    )
    result = {
        "rows": rows,
        "summary": summary,
        "total_s": total,
        "command": command,
        "pixel_size": pixel_size,
        "date": date,
        "machine": machine(),
        "load_start": load_start,
        "load_end": _load(),
        "table": table,
        "summary_table": format_summary(summary) if summary else "",
    }
    text = table + (f"\n\n{result['summary_table']}" if summary else "")
    text += f"\n\n{said}" if (said := caveats(rows)) else ""
    write_out(out_dir / "benchmark.md", f"{text}\n\nMade by `{command}` in {total / 60:.1f} min.\n")
    write_out(out_dir / "benchmark.json", json.dumps(result, indent=2, default=str))
    written = [write_out(out_dir / "benchmark-notes.md", notes_text(result))]
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


def main(args) -> None:
    """Run what the parsed `benchmark` flags ask for."""
    check_mode_flags(args)
    if args.curve == "train-size":
        from anomaly.benchmark_curves import train_size_curve, write_curve
        from anomaly.metrics import conformal_n_needed

        conformal_n_needed(args.alpha)  # refuses an alpha outside (0, 1) before any training
        if args.sizes and min(args.sizes) < 1:
            raise BenchmarkError(f"--sizes must be at least 1, got {min(args.sizes)}")
        if args.seeds < 1:
            raise BenchmarkError(f"--seeds must be at least 1, got {args.seeds}")
        method = args.method or "patchknn"
        check_curve_method(method)
        check_seed(args.seed)
        if args.seed + args.seeds - 1 > 2**32 - 1:  # subsets are seeded --seed, --seed + 1, ...
            raise BenchmarkError(
                f"--seed {args.seed}: the curve seeds its --seeds {args.seeds} subsets with "
                f"--seed and the next ones, so --seed must be at most {2**32 - args.seeds}"
            )
        sets = discover_sets(args.data)
        check_sets(sets)
        stem = f"train_size_{method.replace('+', '_')}"
        check_out(
            args.out or "runs/curves",
            writes=(f"{stem}.csv", f"{stem}.json"),
            data=tuple(ds["path"] for ds in sets),
        )
        out = claim_out(args.out or "runs/curves")
        rows = []
        for ds in sets:
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
        pixel_size=args.pixel_size or EVAL_SIZE,  # parsed there, before anything runs
    )
    failed = [f"{r.get('set', '')} {r['method']}".strip() for r in rows if "error" in r]
    if failed:  # the tables hold the others; the exit status says not all of them ran
        raise BenchmarkError(f"{len(failed)} of {len(rows)} runs failed: {', '.join(failed)}")


if __name__ == "__main__":
    method, data, run, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    size = sys.argv[sys.argv.index("--pixel-size") + 1] if "--pixel-size" in sys.argv else "256"
    try:
        row = _worker(method, data, run, seed, "--smoke" in sys.argv, parse_pixel_size(size))
    except ValueError as err:  # DataError, RunError, BenchmarkError: a message, no traceback
        sys.exit(f"error: {err}")
    print(json.dumps(row, default=float))
