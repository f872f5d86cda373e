"""The runs an explorer shows: Predictions loaded from run folders, and what each run needs for
fast updates (its threshold table, ranges, saved threshold and evidence scale), computed once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anomaly.decision import ThresholdTable, score_range, threshold_table
from anomaly.detectors.base import Predictions
from anomaly.metrics import Threshold
from anomaly.overlays import EvidenceScale, run_scale
from anomaly.runs import RunDir, RunError


def load_run_predictions(run: str | Path) -> Predictions:
    """The Predictions saved in a run folder (RUN/predictions.npz) or in an .npz file."""
    path = Path(run)
    if path.suffix == ".npz":
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist: pass a scored run folder or its {RunDir.PREDICTIONS}"
            )
        return Predictions.load(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} is not a folder: pass a run folder made by "
            "`python -m anomaly train` (and scored)"
        )
    if not RunDir(path).is_scored():
        raise FileNotFoundError(
            f"{path} has no {RunDir.PREDICTIONS}: score the run first (`python -m anomaly score "
            f"--run {path}`), or pass Predictions to ThresholdExplorer directly"
        )
    return RunDir(path).predictions()


def run_folder(run: str | Path) -> Path:
    path = Path(run)
    return path.parent if path.suffix == ".npz" else path


def _unique_name(name: str, taken: dict) -> str:
    base, i = name or "run", 2
    while name in taken or not name:
        name, i = f"{base}-{i}", i + 1
    return name


def collect_runs(runs, run_dirs=None) -> tuple[dict, dict]:
    """(name -> Predictions, name -> run folder or None) from what ThresholdExplorer accepts."""
    preds: dict[str, Predictions] = {}
    dirs: dict[str, Path | None] = {}
    if isinstance(runs, (Predictions, str, Path)):
        runs = [runs]
    items = list(runs.items()) if isinstance(runs, dict) else [(None, r) for r in runs]
    if not items:
        raise ValueError("ThresholdExplorer needs at least one run")
    for name, run in items:
        if isinstance(run, Predictions):
            name = _unique_name(name or run.method or "run", preds)
            preds[name], dirs[name] = run, None
        else:
            folder = run_folder(run)
            name = _unique_name(name or folder.resolve().name, preds)
            preds[name], dirs[name] = load_run_predictions(run), folder
    if run_dirs is not None:
        if isinstance(run_dirs, (str, Path)):
            run_dirs = [run_dirs]
        if not isinstance(run_dirs, dict):
            run_dirs = list(run_dirs)
            if len(run_dirs) != len(preds):
                raise ValueError(f"{len(run_dirs)} run_dirs for {len(preds)} runs")
            run_dirs = dict(zip(preds, run_dirs))
        for name, folder in run_dirs.items():
            if name not in preds:
                raise KeyError(f"run_dirs names {name!r}, which is not one of {list(preds)}")
            dirs[name] = Path(folder) if folder is not None else None
    sizes = {len(p) for p in preds.values()}
    if len(sizes) > 1:
        raise ValueError(
            f"The runs have different numbers of images ({sorted(sizes)}): "
            "compare runs scored on the same data"
        )
    return preds, dirs


def read_threshold(folder: Path | None) -> Threshold | None:
    """The run's saved threshold, or None (no folder, no file, or a file that does not parse)."""
    if folder is None or not RunDir(folder).has_threshold():
        return None
    try:
        return RunDir(folder).threshold()
    except RunError:
        return None


def write_threshold(folder: Path, threshold: Threshold) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return RunDir(folder).save_threshold(threshold)


@dataclass
class RunView:
    """What one run needs for fast updates, computed once."""

    name: str
    pred: Predictions
    folder: Path | None
    table: ThresholdTable
    lo: float
    hi: float
    map_lo: float
    map_hi: float
    scale: EvidenceScale  # the run's evidence scale (its pixel threshold: the default)
    saved: Threshold | None
    threshold: float | None = None  # last threshold shown for this run
    pixel_threshold: float | None = None

    @property
    def label(self) -> str:
        method = self.pred.method
        return f"{self.name} ({method})" if method and method != self.name else self.name

    @property
    def kinds(self) -> list[str]:
        return list(dict.fromkeys(sorted(self.pred.defects, key=lambda k: (k != "good", k))))


def prepare(name: str, pred: Predictions, folder: Path | None) -> RunView:
    lo, hi = score_range(pred.scores)
    map_lo, map_hi = float(pred.maps.min()), float(pred.maps.max())
    if map_hi <= map_lo:
        map_hi = map_lo + 1.0
    try:
        scale = run_scale(folder, pred.maps, pred.labels) if folder is not None else None
    except (OSError, ValueError, KeyError):
        scale = None
    if scale is None:
        scale = EvidenceScale.from_maps(_sample_good(pred), q=0.995)
    saved = read_threshold(folder)
    if saved is not None:  # a saved threshold outside the scores' span stays reachable
        lo, hi = min(lo, saved.value), max(hi, saved.value)
    pt = float(np.clip(scale.pixel_threshold, map_lo, map_hi))
    return RunView(
        name,
        pred,
        folder,
        threshold_table(pred.labels, pred.scores),
        lo,
        hi,
        min(map_lo, pt),
        max(map_hi, pt),
        scale,
        saved,
    )


def _sample_good(pred: Predictions) -> np.ndarray:
    """The maps of some 50 good images (all images when none is good), without copying all."""
    good = np.flatnonzero(pred.labels == 0)
    good = good if good.size else np.arange(len(pred))
    return pred.maps[good[:: max(1, good.size // 50)]]


def read_image(pred: Predictions, folder: Path | None, i: int) -> np.ndarray | None:
    """Image i at its own resolution (uint8 RGB), from its path, or None when it is not there."""
    from PIL import Image

    path = Path(pred.paths[i])
    candidates = [path]
    if not path.is_absolute() and folder is not None:
        candidates += [folder / path, folder.parent / path, folder.parent.parent / path]
    for p in candidates:
        if p.is_file():
            try:
                with Image.open(p) as im:
                    return np.asarray(im.convert("RGB"))
            except OSError:
                return None
    return None
