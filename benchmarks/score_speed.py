"""Where the time of `score` goes, for a patchknn run at its defaults: decoding, the extractor,
the search, the map and score, and the whole predict loop of `anomaly.pipeline.score_run`.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/score_speed.py                # data/cookies
    python benchmarks/score_speed.py --run /tmp/s/run --workers 0 1 2 --batch-sizes 8 16 32

Trains a default patchknn run on --data into --run first when --run holds none (when it holds
one made with other settings, into a sibling folder named after the defaults: the numbers are
always for today's defaults). Then, over --data's test images, in --rounds rounds (each round
times every stage once, so a change of load hits all of them alike), it times:

- decode: `AnomalyDataset` items read from disk (PNG decoding, resizing, masks), no cache;
- extractor: `PatchKNN.embed` on the decoded images, in batches of the run's batch size;
- search: the exact nearest-neighbour search of those features in the memory bank, by torch
  (`nearest_distances`) and by onnxruntime (`PatchKNN._search`, what runtime auto runs), both
  on every patch, and the run's own search (`PatchKNN.grid_distances`: with `search_refine`
  below 1, `anomaly.detectors.knn.coarse_to_fine` searches only some patches);
- map+score: the patch grids upsampled and smoothed into maps, and the image scores;
- predict: `detector.predict` over `pipeline.decoding_loader` (what `score` times as
  predict_images_per_s), for every --workers and --batch-sizes; with --torch-search also with
  the search in torch (as before the search ran in onnxruntime), at 0 workers;
- score: the whole `score_run` without overlays (predictions.npz, scores.csv, metrics), and
  with them (the command's default: one PNG per test image), once per round at the run's own
  settings.

Columns: CPU ms per image (this process and its reaped children: the decoding workers; median
over the rounds), wall images/s (median), and the load average when the rounds began. On a
shared machine compare rows of one run, not runs of different hours.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as every command runs (anomaly/__init__.py)

import torch

from anomaly.data import AnomalyDataset
from anomaly.detectors.knn import nearest_distances
from anomaly.maps import image_score
from anomaly.pipeline import decoding_loader, load_run, score_run, train_run


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its children that have ended."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of fn()."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    fn()
    return cpu_seconds() - c0, time.perf_counter() - t0


def stale_settings(run: Path, data: str) -> list[str]:
    """The settings of the run in `run` that differ from patchknn's defaults today."""
    from anomaly.config import Config
    from anomaly.runs import load_config

    have = asdict(load_config(run))
    want = asdict(Config.for_method("patchknn", data=data))
    skip = {"data", "workers"}  # where it reads from; --workers sets the loaders here
    return [
        f"{k} {have[k]!r} (default {want[k]!r})"
        for k in want
        if k not in skip and have.get(k) != want[k]
    ]


def ensure_run(run: Path, data: str) -> Path:
    """A patchknn run at today's defaults: `run` when it holds one; else one trained into `run`
    when it is empty, or into a sibling named after the defaults when `run` holds a run made
    with other settings (kept: a run someone trained is never overwritten or deleted)."""
    from anomaly.config import Config

    if (run / "model.pt").exists():
        stale = stale_settings(run, data)
        if not stale:
            return run
        config = Config.for_method("patchknn", data=data)
        tag = hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode()).hexdigest()[:8]
        fresh = run.with_name(f"{run.name}-{tag}")
        print(
            f"{run} was trained with other settings than today's defaults: "
            f"{'; '.join(stale)}; using {fresh}",
            file=sys.stderr,
        )
        if (fresh / "model.pt").exists() and not stale_settings(fresh, data):
            return fresh
        run = fresh
    print(f"training a default patchknn run on {data} into {run}", file=sys.stderr)
    train_run(Config.for_method("patchknn", data=data), run, progress=False)
    return run


def stages(detector, test: AnomalyDataset, batch: int) -> dict:
    """The timed pieces of one predict, each a function of no arguments."""
    images = torch.stack([test[i]["image"] for i in range(len(test))])
    feats = detector.embed(images[:1])  # warm-up (the onnxruntime session)
    feats = torch.cat([detector.embed(chunk) for chunk in images.split(batch)])
    b, h, w, d = feats.shape
    queries = feats.reshape(-1, d)
    patches = nearest_distances(queries, detector.bank, detector.bank_sq).view(b, h, w)
    cfg = detector.config
    detector.predict_batch(images[:1])  # builds the map matrices
    rows, cols = next(iter(detector._matrices.values()))

    def decode():
        for s in test.samples:
            test.load(s)

    def extractor():
        for chunk in images.split(batch):
            detector.embed(chunk)

    def search():
        for q in queries.split(batch * h * w):
            nearest_distances(q, detector.bank, detector.bank_sq, cfg.neighbors)

    def search_onnxruntime():
        for q in queries.split(batch * h * w):
            detector._search(q)

    def search_run():
        for f in feats.split(batch):
            detector.grid_distances(f)

    def map_score():
        for p in patches.split(batch):
            image_score(rows @ p @ cols.T, cfg.score_topk, cfg.score_border)

    return {
        "decode": decode,
        "extractor": extractor,
        "search (torch)": search,
        "search (onnxruntime)": search_onnxruntime,
        "search (the run's)": search_run,
        "map+score": map_score,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default="data/cookies")
    p.add_argument("--run", default="/tmp/score_speed/run")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--torch-search", action="store_true", help="also predict with torch's search")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = ensure_run(Path(args.run), args.data)
    detector = load_run(run, device="cpu")
    cfg = detector.config
    shape = {"size": cfg.size, "channels": cfg.channels, "decode": cfg.decode}
    test = AnomalyDataset(args.data, "test", cache=False, **shape)
    n = len(test)
    pieces = stages(detector, test, cfg.batch_size)
    fast_search = detector._search

    def torch_search(queries):
        return nearest_distances(queries, detector.bank, detector.bank_sq)

    for w in args.workers:
        for bs in args.batch_sizes:
            for search in ["onnxruntime"] + ["torch"] * (args.torch_search and w == 0):
                config = replace(cfg, workers=w, batch_size=bs)

                def predict(config=config, search=search):
                    data = AnomalyDataset(args.data, "test", cache=False, **shape)
                    detector.config = config
                    detector._search = fast_search if search == "onnxruntime" else torch_search
                    detector.predict(decoding_loader(data, config))
                    detector.config, detector._search = cfg, fast_search

                pieces[f"predict w{w} b{bs}" + (" torch" if search == "torch" else "")] = predict
    scratch = run.parent / (run.name + "-score")

    def score(overlays: bool):
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.copytree(run, scratch)
        score_run(scratch, data=args.data, overlays=overlays)

    pieces["score (no overlays)"] = lambda: score(False)
    pieces["score (overlays)"] = lambda: score(True)  # the command's default
    load = os.getloadavg()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in pieces}
    for _ in range(args.rounds):
        for name, fn in pieces.items():
            times[name].append(timed(fn))
    shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"{n} test images of {args.data} at {cfg.size} px; run {run} (patchknn's defaults: "
        f"search_refine {cfg.search_refine}, search_precision {cfg.search_precision}: "
        f"{detector.search_precision()} here); "
        f"torch threads {torch.get_num_threads()}; bank {tuple(detector.bank.shape)}; "
        f"{args.rounds} rounds; load average {load[0]:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end"
    )
    print(f"{'stage':<24}{'CPU ms/img':>12}{'wall img/s':>12}")
    for name, rows in times.items():
        cpu = statistics.median(c for c, _ in rows) / n * 1e3
        wall = statistics.median(t for _, t in rows)
        print(f"{name:<24}{cpu:>12.2f}{n / wall:>12.1f}")


if __name__ == "__main__":
    main()
