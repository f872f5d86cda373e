"""How long the threshold explorer takes to follow a slider move, by number of images.

    python benchmarks/explorer_latency.py [--images 100 500 2000] [--size 128]

Prints a table (median and maximum milliseconds per move over 25 moves across the score range).
A measurement, not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from anomaly.detectors import Predictions
from anomaly.explorer import ThresholdExplorer


def predictions(n: int, size: int, seed: int = 0) -> Predictions:
    """n images: a third defective (a square of raised map), scores ~N(0, 1) or ~N(1.5, 1)."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 3 == 0).astype(int)
    maps = rng.random((n, size, size), dtype=np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    masks[labels == 1, size // 4 : size // 2, size // 4 : size // 2] = 1
    maps[masks == 1] += 1.0
    return Predictions(
        [f"/nowhere/img_{i:04d}.png" for i in range(n)],
        labels,
        ["crack" if label else "good" for label in labels],
        rng.normal(0, 1, n) + 1.5 * labels,
        maps,
        masks,
        method="timing",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    print("| images | median ms | max ms |\n|---|---|---|")
    for n in args.images:
        ex = ThresholdExplorer(predictions(n, args.size))
        times = []
        for t in np.linspace(ex.slider.min, ex.slider.max, 25):
            start = time.perf_counter()
            ex.slider.value = float(t)
            times.append(time.perf_counter() - start)
        print(f"| {n} | {1e3 * np.median(times):.1f} | {1e3 * max(times):.1f} |")


if __name__ == "__main__":
    main()
