"""Timing for benchmarks/peers.py: interleaved rounds in one process, and the backbone again in
a process of its own.

The MobileNetV2 backbone's CPU time per image moves with what else has run in the process: up
to 1.6x more after anomalib's PaDiM fitted and predicted there (docs/measurements.md), while
this project's predict did not move. So `peers.py` also times the backbone on the same images
here, run as a script that loads them and fits and predicts nothing else:

    python benchmarks/peers_timing.py TENSORS.pt --rounds 5 --batch 8 [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as every command runs (anomaly/__init__.py)

import torch
from peers_models import BACKBONE_NODES, Predict, Stages


def fit_backbone(root: Path, size: int, args) -> tuple[Predict, float, float]:
    """MobileNetV2 features.0-13 as anomalib's PatchCore runs it, ImageNet normalisation
    included: the yardstick (nothing to fit)."""
    from anomaly.features import IMAGENET_MEAN, IMAGENET_STD

    stages = Stages(BACKBONE_NODES)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    @torch.no_grad()
    def predict(x):
        stages((x - mean) / std)

    return predict, 0.0, 0.0


def time_rounds(predicts: dict[str, Predict], images, rounds: int, batch: int) -> dict:
    """CPU ms per image of each method, `rounds` times, interleaved (order rotates)."""
    names = list(predicts)
    cpu = {n: [] for n in names}
    wall = {n: [] for n in names}
    for n in names:  # warm-up: first calls allocate and pick kernels
        predicts[n](images[:batch])
    for r in range(rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            w, c = time.perf_counter(), time.process_time()
            for i in range(0, len(images), batch):
                predicts[n](images[i : i + batch])
            cpu[n].append((time.process_time() - c) * 1000 / len(images))
            wall[n].append((time.perf_counter() - w) * 1000 / len(images))
    return {n: {"cpu_ms": cpu[n], "wall_ms": wall[n]} for n in names}


def time_backbone_alone(images, args) -> dict | None:
    """The backbone timed on `images` as `time_rounds` times it, in a process of its own that
    fits and predicts nothing else; None (and why, on stderr) when that process fails."""
    with tempfile.TemporaryDirectory() as d:
        tensors = Path(d) / "images.pt"
        torch.save(images, tensors)
        cmd = [sys.executable, str(Path(__file__).resolve()), str(tensors)]
        cmd += ["--rounds", str(args.rounds), "--batch", str(args.batch)]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        why = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        print(f"  the backbone in its own process failed: {why[0]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """`peers_timing.py TENSORS`: the child of `time_backbone_alone`; prints JSON."""
    p = argparse.ArgumentParser(description="time the backbone alone on saved test tensors")
    p.add_argument("tensors", type=Path)
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    images = torch.load(args.tensors)
    predict, _, _ = fit_backbone(args.tensors, images.shape[-1], args)
    print(
        json.dumps(time_rounds({"backbone": predict}, images, args.rounds, args.batch)["backbone"])
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
