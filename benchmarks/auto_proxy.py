"""Does `auto`'s label-free ranking follow the labelled test images? (docs/measurements.md)

For each set of a suite (or one MVTec-layout folder) it makes `auto`'s split of the training
images (seeded: held-out normals, trial images), fits each candidate on the trial images, and
prints three image AUROCs per candidate: on the set's labelled test images, on DRAEM's pasted
blobs (`anomaly.synthetic.synthesize`) and on the quiet local alterations
(`anomaly.synthetic.alter`) made from the held-out normals. A proxy is useful where its order of
the candidates is the test images' order. Not part of `make test`: minutes per set.

    .venv/bin/python benchmarks/auto_proxy.py --data data/photos --out /tmp/auto_proxy
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as every command runs (anomaly/__init__.py)

import numpy as np
import torch

from anomaly.config import Config
from anomaly.data import AnomalyDataset
from anomaly.detectors import auto
from anomaly.metrics import image_auroc

CANDIDATES = {
    "default": {"method": "patchknn"},
    "256px": {"method": "patchknn", "size": 256},
    "448px": auto.FINE_448,
    "448px-s6": {**auto.FINE_448, "layers": "features.6"},  # its stages one at a time
    "448px-s10": {**auto.FINE_448, "layers": "features.10"},
    "lite0-160": auto.LITE0_160,
    "flow": {"method": "flow"},
    "meandiff": {"method": "meandiff"},
}
SIZE = 448  # auto's own size: every candidate resizes from it


def _stack(data) -> tuple[torch.Tensor, np.ndarray]:
    items = [data[i] for i in range(len(data))]
    return torch.stack([it["image"] for it in items]).float(), np.array([i["label"] for i in items])


def proxy_rows(folder: Path, names: list[str], seed: int = 0) -> dict:
    """Test / blob / altered image AUROC of each of these `CANDIDATES` on one set."""
    train, _ = _stack(AnomalyDataset(folder, "train", size=SIZE, channels=3))
    test, labels = _stack(AnomalyDataset(folder, "test", size=SIZE, channels=3))
    config = Config.for_method("auto", data=str(folder), size=SIZE, seed=seed)
    trial, normals, parts = auto.AutoDetector(config).synthetic_parts(train)  # auto's own split
    families = dict(zip(("blobs", "altered"), parts))
    rows = {}
    for name in names:
        settings = CANDIDATES[name]
        t0 = time.perf_counter()
        detector = auto._fit(settings, config, trial, torch.device("cpu"))
        row = {"test": image_auroc(labels, auto._predict(detector, test, 16)[0].numpy())}
        normal_scores = auto._predict(detector, normals, 16)[0].numpy()
        for family, (defects, masks) in families.items():
            shown = masks.flatten(1).amax(1) > 0
            scores = auto._predict(detector, defects[shown], 16)[0].numpy()
            truth = np.r_[np.zeros(len(normal_scores)), np.ones(len(scores))]
            row[family] = image_auroc(truth, np.r_[normal_scores, scores])
        row["seconds"] = time.perf_counter() - t0
        rows[name] = row
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a suite root (manifest.json) or one set")
    p.add_argument("--out", required=True, help="a folder for one JSON per set (resumable)")
    p.add_argument("--sets", nargs="*", help="only these sets of the suite")
    p.add_argument("--candidates", nargs="*", choices=list(CANDIDATES), help="default: all")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    root, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if (root / "manifest.json").is_file():
        folders = [root / n for n in json.loads((root / "manifest.json").read_text())["sets"]]
    else:
        folders = [root]
    folders = [f for f in folders if not args.sets or f.name in args.sets]
    names = args.candidates or list(CANDIDATES)
    print("| set | " + " | ".join(names) + " |  (test / blobs / altered image AUROC)")
    print("|---|" + "---|" * len(names))
    for folder in folders:
        done = out / f"{folder.name}.json"
        rows = json.loads(done.read_text()) if done.is_file() else {}
        todo = [n for n in names if n not in rows]
        if todo:
            rows.update(proxy_rows(folder, todo))
            done.write_text(json.dumps(rows, indent=1))
        cells = [
            f"{rows[n]['test']:.3f} / {rows[n]['blobs']:.3f} / {rows[n]['altered']:.3f}"
            for n in names
        ]
        print(f"| {folder.name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
