"""The run folder: what a run saves, and how it is loaded back.

    runs/<name>/config.json  split.json  versions.json  model.pt  history.csv
               scores.csv   metrics.json  threshold.json  predictions.npz  overlays/

A run folder is enough to reproduce, rescore, or predict on new images. A checkpoint from another
method or an incompatible config fails with a message naming the run and what differs.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from anomaly.config import Config

CHECKPOINT_FORMAT = "anomaly-checkpoint/1"
# Config fields that change the shape of what a method learns: a checkpoint only loads into a
# detector that agrees on all of them.
SHAPE_FIELDS = ("method", "size", "channels", "width", "latent", "backbone", "k")


class RunError(ValueError):
    """A run folder is missing, incomplete or does not match what is asked of it."""


def atomic_save(obj, path: str | Path) -> None:
    """torch.save to a temporary file, then rename: an interrupted write never leaves a broken file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_json(path: str | Path, obj) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def versions() -> dict:
    """The versions that made a run (saved as versions.json)."""
    import numpy
    import sklearn
    import torchvision

    from anomaly import __version__
    from anomaly.data.cookies import GENERATOR_VERSION

    return {"anomaly": __version__, "cookie_generator": GENERATOR_VERSION,
            "python": sys.version.split()[0], "platform": platform.platform(),
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": numpy.__version__, "scikit-learn": sklearn.__version__,
            "cuda": torch.version.cuda if torch.cuda.is_available() else None}


def create_run(run_dir: str | Path, config: Config, split: dict | None = None) -> Path:
    """Create (or reuse) a run folder and write config.json, versions.json and split.json."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir / "config.json")
    write_json(run_dir / "versions.json", versions())
    if split is not None:
        write_json(run_dir / "split.json", split)
    return run_dir


def checkpoint_payload(detector, **extra) -> dict:
    return {"format": CHECKPOINT_FORMAT, "method": detector.name, "config": asdict(detector.config),
            "state": detector.state_dict(), **extra}


def load_config(run_dir: str | Path) -> Config:
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise RunError(f"{run_dir} is not a run folder (no config.json); train one with "
                       "`python -m anomaly train --data ROOT --method unet --out {run_dir}`")
    return Config.load(run_dir / "config.json")


def check_compatible(run_dir: str | Path, saved: dict, config: Config) -> None:
    """Raise RunError naming the run and every shape-deciding field that differs."""
    diffs = [f"{f}: checkpoint has {saved.get(f)!r}, asked for {getattr(config, f)!r}"
             for f in SHAPE_FIELDS if saved.get(f) != getattr(config, f)]
    if diffs:
        raise RunError(f"The checkpoint in {run_dir} does not fit this detector ("
                       + "; ".join(diffs) + "). Train a new run with these settings, or load the "
                       "run with its own config (anomaly.load_run).")


def load_checkpoint(run_dir: str | Path, detector) -> dict:
    """Load run_dir/model.pt into `detector`, after checking it was made for the same shape."""
    run_dir = Path(run_dir)
    path = run_dir / "model.pt"
    if not path.exists():
        raise RunError(f"{run_dir} has no model.pt: its training never finished an epoch; "
                       "train it again (or resume with --resume)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a truncated or foreign file
        raise RunError(f"{path} is not a readable anomaly checkpoint ({type(err).__name__}: {err}); "
                       "train the run again") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise RunError(f"{path} was not written by anomaly (no '{CHECKPOINT_FORMAT}' header); "
                       "load it into your own model, or train a run with `python -m anomaly train`")
    check_compatible(run_dir, payload["config"], detector.config)
    try:
        detector.load_state_dict(payload["state"])
    except (RuntimeError, KeyError) as err:
        first = str(err).strip().splitlines()[0][:300]
        raise RunError(f"The weights in {path} do not fit a {detector.name} detector with this "
                       f"config ({first}); train a new run") from None
    return payload


def load_run(run_dir: str | Path, device: str | None = None):
    """Rebuild the detector saved in a run folder, with its own config and weights."""
    from anomaly.detectors import get_detector
    from anomaly.train import select_device

    config = load_config(run_dir)
    detector = get_detector(config.method)(config)
    load_checkpoint(run_dir, detector)
    return detector.to(select_device(device or config.device))


def write_scores(run_dir: str | Path, pred) -> Path:
    """scores.csv in the original's spirit (file, score) plus label and defect kind.

    Sorted as the original table read: normal images first, then defective ones, each by score.
    """
    path = Path(run_dir) / "scores.csv"
    rows = sorted(zip(pred.paths, pred.labels, pred.defects, pred.scores),
                  key=lambda r: (int(r[1]), r[2], float(r[3])))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "path", "label", "defect", "score"])
        for p, label, defect, score in rows:
            writer.writerow([Path(p).stem, p, int(label), defect, f"{float(score):.6g}"])
    return path


def read_scores(run_dir: str | Path) -> list[dict]:
    with open(Path(run_dir) / "scores.csv", newline="") as f:
        return list(csv.DictReader(f))
