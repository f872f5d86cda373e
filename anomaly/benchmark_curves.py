"""How many good images does a method need? The train-size curve, and its figure.

    python -m anomaly benchmark --curve train-size --data ROOT --method patchknn [--out DIR]

A method is trained on n = 1, 2, 4, ..., 128 and all of the training images (several random
subsets for small n), always against the same held-out normal images (the run's validation
split, which calibrates the threshold) and the same test set. Each point reports image AUROC,
AUPRO, fit time, and what a QA team would live with: the escape rate (defective test images
that pass) and the false-reject rate at the conformal threshold for alpha = 1 %
(`anomaly.metrics.threshold_conformal`). When the held-out set is too small for that alpha
(alpha < 1 / (n_cal + 1)), the point uses the smallest alpha it allows, 1 / (n_cal + 1), and
says so in `alpha_used`.

`unet+kmeans` is the project's UNet (`--method unet`'s defaults) trained on the n images, then
the project's k-means (`--kmeans-features patch`: per position of the encoder's maps at 1/2 and
1/4 size) with k = 2 over the same n images. It is not the original recipe (the benchmark's
`unet_original+kmeans`: the 64-wide UNet and k-means on its max-pooled bottleneck), which the
curve does not fit.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

SIZES = (1, 2, 4, 8, 16, 32, 64, 128)
SMOKE_SIZES = (1, 2, 4, 8)
FIELDS = (
    "set",
    "method",
    "n",
    "rep",
    "image_auroc",
    "aupro",
    "escape_rate",
    "false_reject_rate",
    "alpha_used",
    "n_cal",
    "fit_s",
    "error",
)


def _fit(method: str, config, train, cal):
    """A fitted detector of `method` (unet+kmeans: a UNet, then k-means, k = 2, on its encoder's
    maps)."""
    from anomaly.detectors import get_detector
    from anomaly.train import select_device

    device = select_device(config.device)
    if method == "unet+kmeans":
        unet = get_detector("unet")(config).to(device)
        unet.fit(train, cal, progress=False)
        kmeans = get_detector("kmeans")(config.replace(method="kmeans", k=2), source=unet)
        return kmeans.to(device).fit(train, cal, progress=False) or kmeans
    detector = get_detector(method)(config).to(device)
    return detector.fit(train, cal, progress=False) or detector


def _point(method, config, data, train_idx, cal, test, alpha: float) -> dict:
    from anomaly.metrics import (
        conformal_n_needed,
        confusion,
        image_auroc,
        threshold_conformal,
    )
    from anomaly.train import seed_everything

    seed_everything(config.seed)
    t0 = time.perf_counter()
    detector = _fit(method, config, data.subset(train_idx), cal)
    fit_s = time.perf_counter() - t0
    cal_scores = detector.predict(cal).scores
    pred = detector.predict(test)
    alpha_used = max(alpha, 1 / (len(cal_scores) + 1))
    if alpha_used > alpha:
        print(
            f"n={len(train_idx)}: {len(cal_scores)} held-out good images cannot guarantee alpha "
            f"{alpha:g} (it needs {conformal_n_needed(alpha)}); its escape rate is at alpha "
            f"{alpha_used:.3g}",
            file=sys.stderr,
        )
    rates = confusion(pred.labels, pred.scores, threshold_conformal(cal_scores, alpha_used))
    return {
        "n": len(train_idx),
        "image_auroc": image_auroc(pred.labels, pred.scores),
        "aupro": _aupro(pred, test),
        "escape_rate": rates["escape_rate"],
        "false_reject_rate": rates["false_reject_rate"],
        "alpha_used": alpha_used,
        "n_cal": len(cal_scores),
        "fit_s": fit_s,
    }


def _aupro(pred, test) -> float | None:
    """AUPRO as `score` computes it: at `pixel_eval.EVAL_SIZE`, defective images without a mask
    file left out (they counted as all-normal pixels here before session 31)."""
    from anomaly.metrics import aupro
    from anomaly.pixel_eval import at_eval_size

    if not pred.has_masks:
        return None
    pixels = at_eval_size(pred, [s.mask_path for s in test.samples])
    known = np.ones(len(pred), bool) if pred.mask_known is None else pred.mask_known
    return aupro(pixels.masks[known], pixels.maps[known])


def _subsets(pool: list[int], n: int, reps: int, seed: int) -> list[list[int]]:
    """`reps` different random n-subsets of `pool` (every one when there are fewer)."""
    total = math.comb(len(pool), n)
    if total <= reps:
        return [list(c) for c in itertools.combinations(sorted(pool), n)]
    picks: list[list[int]] = []
    retry = 0
    while len(picks) < reps:  # total > reps: new subsets keep coming
        rng = np.random.default_rng([seed, n, len(picks)] + ([retry] if retry else []))
        pick = sorted(rng.choice(pool, n, replace=False).tolist())
        retry = retry + 1 if pick in picks else 0
        if not retry:
            picks.append(pick)
    return picks


def train_size_curve(
    data: str | Path,
    method: str = "patchknn",
    sizes=None,
    seeds: int = 3,
    seed: int = 0,
    alpha: float = 0.01,
    smoke: bool = False,
    name: str | None = None,
    progress: bool = True,
    seeds_up_to: int = 8,
) -> list[dict]:
    """The rows of the train-size curve of `method` on the data set `data` (see module doc).

    Args:
        sizes: training-set sizes to try (default `SIZES`, `SMOKE_SIZES` when smoke); sizes at
            or above the number of training images are replaced by "all" (tried once).
        seeds: random subsets per size for n <= `seeds_up_to` (one for larger n, for all the
            training images, and for smoke).
        seed: the split seed (which images are held out) and the first subset's seed.
        smoke: tiny budgets (64 px, one epoch) to check the wiring.
    """
    from anomaly.config import Config
    from anomaly.data import AnomalyDataset
    from anomaly.train import split_indices

    base = "unet" if method == "unet+kmeans" else method
    budget = {"size": 64, "epochs": 1} if smoke else {}
    config = Config.for_method(base, data=str(Path(data).resolve()), seed=seed, **budget)
    shape = {"size": config.size, "channels": config.channels, "decode": config.decode}
    train, test = AnomalyDataset(data, "train", **shape), AnomalyDataset(data, "test", **shape)
    train_idx, cal_idx = split_indices(len(train), config.val_fraction, seed)
    if not cal_idx:
        raise ValueError(
            f"{data}: {len(train)} training image(s) leave none to hold out for the "
            "threshold; the curve needs at least 2"
        )
    cal = train.subset(cal_idx)
    if over := sorted({int(n) for n in sizes or () if int(n) > len(train_idx)}):  # asked for
        print(
            f"--sizes {' '.join(map(str, over))}: {data} has {len(train_idx)} training images "
            f"to subset ({len(cal_idx)} more held out for the threshold); those points use all "
            f"{len(train_idx)}",
            file=sys.stderr,
        )
    sizes = sizes or (SMOKE_SIZES if smoke else SIZES)
    sizes = sorted(
        {min(int(n), len(train_idx)) for n in sizes} | ({len(train_idx)} if not smoke else set())
    )
    if method == "auto":
        from anomaly.detectors.auto import MIN_IMAGES

        if few := [n for n in sizes if n < MIN_IMAGES]:
            print(
                f"--sizes {' '.join(map(str, few))}: auto needs at least {MIN_IMAGES} training "
                "images a point (it holds some out to make synthetic defects); those points are "
                "left out",
                file=sys.stderr,
            )
            sizes = [n for n in sizes if n >= MIN_IMAGES]
            if not sizes:
                raise ValueError(f"--method {method}: give --sizes of at least {MIN_IMAGES}")
    rows = []
    for n in sizes:
        reps = 1 if smoke or n > seeds_up_to or n == len(train_idx) else seeds
        picks = _subsets(train_idx, n, reps, seed)
        if len(picks) < reps:
            print(
                f"n={n}: only {len(picks)} different subsets of {len(train_idx)} images, "
                f"not --seeds {reps}; repeats would only narrow the spread",
                file=sys.stderr,
            )
        for rep, pick in enumerate(picks):
            try:
                row = _point(method, config.replace(seed=seed + rep), train, pick, cal, test, alpha)
            except (ValueError, RuntimeError) as err:  # one failed point does not end the curve
                row = {
                    "n": n,
                    "error": f"{type(err).__name__}: {str(err)[:1000]}",
                    **{k: None for k in FIELDS[4:-1]},
                }
            rows.append({"set": name or Path(data).name, "method": method, "rep": rep, **row})
            if progress and "error" in row:
                print(
                    f"{rows[-1]['set']} {method} n={n} rep={rep}: FAILED {row['error']}", flush=True
                )
            elif progress:
                print(
                    f"{rows[-1]['set']} {method} n={n} rep={rep}: image AUROC "
                    f"{row['image_auroc']:.3f}, escape {row['escape_rate']:.3f} at alpha "
                    f"{row['alpha_used']:.3g}, fit {row['fit_s']:.1f} s",
                    flush=True,
                )
    return rows


def curve_summary(rows: list[dict]) -> dict:
    """Per n, as arrays: the mean, min and max over subsets of each measure (for the figure)."""
    rows = [r for r in rows if "error" not in r]
    if not rows:
        raise ValueError("every point of the curve failed; see the rows' error messages")
    ns = sorted({r["n"] for r in rows})
    out: dict = {"n": np.array(ns), "set": rows[0]["set"], "method": rows[0]["method"]}
    for key in ("image_auroc", "aupro", "escape_rate", "false_reject_rate", "fit_s", "alpha_used"):
        per = [[r[key] for r in rows if r["n"] == n and r[key] is not None] for n in ns]
        out[key] = np.array([np.mean(v) if v else np.nan for v in per])
        out[key + "_min"] = np.array([np.min(v) if v else np.nan for v in per])
        out[key + "_max"] = np.array([np.max(v) if v else np.nan for v in per])
    return out


def images_needed(rows: list[dict], target: float = 0.95, key: str = "image_auroc") -> int | None:
    """The smallest n whose mean `key` reaches `target` and stays there for every larger n."""
    s = curve_summary(rows)
    ok = s[key] >= target
    for i in range(len(ok)):
        if ok[i:].all():
            return int(s["n"][i])
    return None


def write_curve(rows: list[dict], out: str | Path, stem: str = "train_size") -> list[Path]:
    """`stem.csv` (one row per fit) and `stem.json` (rows, summary and what the curve says)."""
    from anomaly.benchmark_dirs import write_out

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows({k: r.get(k) for k in FIELDS} for r in rows)
    write_out(out / f"{stem}.csv", table.getvalue())  # a file edited by hand is refused
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["set"], r["method"]), []).append(r)
    says = {
        f"{s}/{m}": {
            "images_for_0.95_auroc": images_needed(rs),
            "alpha_used": sorted({r["alpha_used"] for r in rs if r.get("alpha_used") is not None}),
        }
        for (s, m), rs in groups.items()
    }
    write_out(out / f"{stem}.json", json.dumps({"rows": rows, "says": says}, indent=1))
    return [out / f"{stem}.csv", out / f"{stem}.json"]


def read_curve(path: str | Path) -> list[dict]:
    """The rows written by `write_curve` (a `.json` file, or every one in a folder)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist; give the .json file (or the folder) `python -m anomaly "
            "benchmark --curve train-size` wrote"
        )
    files = sorted(path.glob("train_size*.json")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(
            f"{path} holds no train_size*.json; run "
            "`python -m anomaly benchmark --curve train-size` first"
        )
    rows = []
    for f in files:
        try:
            found = json.loads(f.read_text())["rows"]
            if not isinstance(found, list) or not all(isinstance(r, dict) for r in found):
                raise TypeError
        except OSError as err:
            raise OSError(f"{f} cannot be read ({err.strerror or err})") from None
        except (UnicodeDecodeError, ValueError, KeyError, TypeError):
            json_twin = f.with_suffix(".json")
            hint = f"give {json_twin}, its rows as JSON" if f.suffix != ".json" else "run again"
            raise ValueError(
                f"{f} is not a curve `benchmark --curve train-size` wrote (its .json file, "
                f"with a list of rows); {hint}"
            ) from None
        rows += found
    return rows


def train_size_figure(curves: dict[str, dict], target: float = 0.95):
    """Image AUROC / AUPRO (left), escape and false-reject rates at the conformal threshold
    (right) against the number of good training images.

    Args:
        curves: label -> `curve_summary(rows)` (arrays: n, image_auroc with _min/_max, aupro,
            escape_rate, false_reject_rate, alpha_used). Pure: arrays in, figure out.
    """
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2 + 0.3 * len(curves)))
    plt.close(fig)
    low = 1.0
    for i, (label, c) in enumerate(curves.items()):
        colour = f"C{i}"
        a.plot(c["n"], c["image_auroc"], marker="o", color=colour, label=f"{label} image AUROC")
        a.fill_between(c["n"], c["image_auroc_min"], c["image_auroc_max"], color=colour, alpha=0.2)
        if not np.all(np.isnan(c["aupro"])):
            a.plot(c["n"], c["aupro"], ls="--", marker=".", color=colour, label=f"{label} AUPRO")
        alphas = sorted({round(float(x), 4) for x in c["alpha_used"]})
        b.plot(
            c["n"],
            c["escape_rate"],
            marker="o",
            color=colour,
            label=f"{label} escapes (alpha {', '.join(f'{x:.3g}' for x in alphas)})",
        )
        b.fill_between(c["n"], c["escape_rate_min"], c["escape_rate_max"], color=colour, alpha=0.2)
        b.plot(
            c["n"],
            c["false_reject_rate"],
            ls="--",
            marker=".",
            color=colour,
            label=f"{label} false rejects",
        )
        low = min(
            low,
            float(np.nanmin(c["image_auroc_min"])),
            float(np.nanmin(c["aupro"])) if not np.all(np.isnan(c["aupro"])) else 1.0,
        )
    a.axhline(target, color="grey", lw=0.8, ls=":")
    a.set_ylabel("on the test set")
    a.set_ylim(max(0.0, min(0.5, low) - 0.05), 1.01)
    b.set_ylabel("rates at the conformal threshold")
    b.set_ylim(-0.02, 1.02)
    for ax in (a, b):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("good training images")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
    fig.tight_layout()
    return fig
