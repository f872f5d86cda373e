"""One table for every method: accuracy, cost, and how small a defect each one finds.

Each method trains and scores in its own process (so peak memory is its own), on the same data
split with the same seed, at its default settings. The original project's recipe (its UNet, then
k-means on the UNet bottleneck) is the baseline row `unet+kmeans`.

    python -m anomaly benchmark --data ROOT [--methods ...] [--out DIR]
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_METHODS = ("ae", "unet", "vae", "unet+kmeans", "patchknn", "draem", "flow")
SMOKE = {"epochs": 1, "size": 64}
COLUMNS = [("method", "{}"), ("image_auroc", "{:.3f}"), ("pixel_auroc", "{:.3f}"),
           ("aupro", "{:.3f}"), ("image_f1_max", "{:.3f}"), ("fit_s", "{:.0f}"),
           ("train_ips", "{:.0f}"), ("predict_ips", "{:.0f}"), ("peak_mb", "{:.0f}")]


def _worker(method: str, data: str, out: str, seed: int, smoke: bool) -> dict:
    """Train and score one method in this process; return its row."""
    from anomaly.config import Config
    from anomaly.pipeline import score_run, train_run
    from anomaly.runs import load_config
    from anomaly.runs import read_history

    overrides = dict(SMOKE) if smoke else {}
    if method == "unet+kmeans":
        source = Path(out).parent / "unet"
        if not (source / "model.pt").exists():
            raise RuntimeError("unet+kmeans needs the unet row first (it clusters that run's bottleneck)")
        config = load_config(source).replace(method="kmeans", source_run=str(source.resolve()),
                                              k=2, seed=seed)
    else:
        config = Config.for_method(method).replace(data=str(Path(data).resolve()), seed=seed, **overrides)
    t0 = time.perf_counter()
    train_run(config, out, progress=False)
    fit_s = time.perf_counter() - t0
    _, metrics = score_run(out, overlays=False)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # training images/s: images seen per second of training, all epochs (one pass for the
    # methods that do not train by epochs: patchknn, kmeans)
    n_train = len(json.loads((Path(out) / "split.json").read_text())["train"])
    passes = len(read_history(out)) or 1
    return {"method": method, "fit_s": fit_s, "train_ips": n_train * passes / fit_s,
            "predict_ips": metrics["predict_images_per_s"],
            "peak_mb": peak_mb, **{k: metrics.get(k) for k in
                                   ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "aupro")},
            "per_defect": {k: v.get("image_auroc") for k, v in metrics.get("per_defect", {}).items()},
            "size": config.size, "epochs": config.epochs}


def detectability(pred, frr: float = 0.05, bins: int = 6) -> dict:
    """Fraction of defects caught at a fixed false-reject rate, by defect area.

    The threshold is the (1 - frr) quantile of the good test images' scores; defect area is the
    mask's pixel fraction, binned on a log scale between the smallest and the largest defect.
    """
    if pred.masks is None:
        raise ValueError("the detectability curve needs ground-truth masks (defect areas)")
    good = pred.scores[pred.labels == 0]
    threshold = float(np.quantile(good, 1 - frr)) if len(good) else float("inf")
    defect = pred.labels == 1
    area = pred.masks[defect].reshape(defect.sum(), -1).mean(axis=1)
    caught = pred.scores[defect] >= threshold
    keep = area > 0
    area, caught = area[keep], caught[keep]
    edges = np.geomspace(area.min(), area.max() * (1 + 1e-9), bins + 1)
    which = np.clip(np.digitize(area, edges) - 1, 0, bins - 1)
    rows = [{"area_lo": float(edges[i]), "area_hi": float(edges[i + 1]), "n": int((which == i).sum()),
             "caught": float(caught[which == i].mean()) if (which == i).any() else None}
            for i in range(bins)]
    return {"frr": frr, "threshold": threshold, "bins": rows}


def format_table(rows: list[dict]) -> str:
    """A Markdown table: the columns above plus per-defect-kind image AUROC."""
    kinds = sorted({k for r in rows for k in r.get("per_defect", {})})
    head = [c for c, _ in COLUMNS] + [f"auroc_{k}" for k in kinds]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [fmt.format(r[c]) if r.get(c) is not None else "n/a" for c, fmt in COLUMNS]
        cells += [f"{r['per_defect'][k]:.3f}" if r.get("per_defect", {}).get(k) is not None else "n/a"
                  for k in kinds]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_benchmark(data: str, methods=None, out: str = "runs/benchmark", seed: int = 0,
                  smoke: bool = False) -> list[dict]:
    """Run every method in a subprocess; print and write `out/benchmark.md` and `.json`."""
    from anomaly.detectors import Predictions

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, t0 = [], time.perf_counter()
    for method in methods or DEFAULT_METHODS:
        run = out_dir / method.replace("+", "_")
        if (run / "model.pt").exists():
            import shutil

            shutil.rmtree(run)
        cmd = [sys.executable, "-m", "anomaly.benchmark", method, str(data), str(run), str(seed)]
        if smoke:
            cmd.append("--smoke")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{method}: FAILED\n{proc.stderr[-2000:]}", file=sys.stderr)
            rows.append({"method": method, "error": proc.stderr.strip().splitlines()[-1:]})
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        pred = Predictions.load(run / "predictions.npz")
        if pred.has_masks:
            row["detectability"] = detectability(pred)
        rows.append(row)
        print(f"{method}: image AUROC {row['image_auroc']:.3f}, fit {row['fit_s']:.0f} s", flush=True)
    total = time.perf_counter() - t0
    table = format_table([r for r in rows if "error" not in r])
    cmd = f"python -m anomaly benchmark --data {data} --out {out}" + (" --smoke" if smoke else "")
    (out_dir / "benchmark.md").write_text(f"{table}\n\nMade by `{cmd}` in {total / 60:.1f} min.\n")
    (out_dir / "benchmark.json").write_text(json.dumps({"rows": rows, "total_s": total,
                                                        "command": cmd}, indent=2, default=str))
    print(table)
    print(f"\ntotal {total / 60:.1f} min; wrote {out_dir}/benchmark.md and benchmark.json")
    return rows


if __name__ == "__main__":
    method, data, run, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    row = _worker(method, data, run, seed, smoke="--smoke" in sys.argv)
    print(json.dumps(row, default=float))
