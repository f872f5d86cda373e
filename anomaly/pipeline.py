"""The jobs a user runs, each a few calls: train a run, score it, set its threshold, predict.

The CLI and the notebooks both call these, so a notebook cell and a shell command do the same.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from anomaly.config import Config
from anomaly.data import AnomalyDataset
from anomaly.detectors import Predictions, get_detector
from anomaly.metrics import (Threshold, evaluate, threshold_f1, threshold_manual,
                             threshold_normal_quantile)
from anomaly.runs import (RunError, create_run, load_config, load_run, write_json, write_scores)
from anomaly.train import detector_save, seed_everything, select_device, split_indices

THRESHOLD_RULES = ("manual", "normal-quantile", "f1")


def _datasets(config: Config, split_file: Path | None = None):
    """train/good as (train, validation) subsets, split by the run's seed (or its saved split)."""
    data = AnomalyDataset(config.data, "train", size=config.size, channels=config.channels)
    if split_file is not None and split_file.exists():
        saved = json.loads(split_file.read_text())
        index = {p: i for i, p in enumerate(data.paths)}
        missing = [p for p in saved["train"] + saved["val"] if p not in index]
        if missing:
            raise RunError(f"{split_file} names {len(missing)} images that are not in {config.data} "
                           f"(first: {missing[0]}); the data changed since the run was made")
        train_idx = [index[p] for p in saved["train"]]
        val_idx = [index[p] for p in saved["val"]]
    else:
        train_idx, val_idx = split_indices(len(data), config.val_fraction, config.seed)
    return data.subset(train_idx), data.subset(val_idx) if val_idx else None


def train_run(config: Config, out: str | Path, resume: bool = False, progress: bool = True):
    """Train `config.method` on train/good of `config.data` into the run folder `out`.

    Writes config.json, split.json, versions.json, model.pt, history.csv (trained methods),
    val_scores.json and threshold.json (a quantile of the held-out normal scores). `resume=True`
    continues an interrupted run from its own config and split.
    """
    out = Path(out)
    if resume:
        config = load_config(out)
    elif (out / "model.pt").exists():
        raise RunError(f"{out} already holds a trained run; choose another --out, delete it, "
                       "or pass --resume to continue it")
    seed_everything(config.seed)
    device = select_device(config.device)
    train, val = _datasets(config, out / "split.json" if resume else None)
    split = {"train": list(train.paths), "val": list(val.paths) if val is not None else []}
    create_run(out, config, split)
    detector = get_detector(config.method)(config).to(device)
    t0 = time.perf_counter()
    kwargs = {"resume": True} if resume else {}
    detector.fit(train, val, run_dir=out, progress=progress, **kwargs)
    fit_seconds = time.perf_counter() - t0
    detector_save(detector, out / "model.pt", fit_seconds=fit_seconds)
    _default_threshold(detector, train, val, out)
    return detector


def _default_threshold(detector, train, val, out: Path) -> None:
    held_out = val if val is not None else train
    if val is None:
        warnings.warn(f"{out}: no validation split (val_fraction=0), so the default threshold "
                      "comes from training images and will be too low", stacklevel=3)
    from anomaly.viz import dataset_range

    pred = detector.predict(held_out)
    write_json(out / "val_scores.json", {"paths": pred.paths, "scores": pred.scores.tolist(),
                                         "map_range": list(dataset_range(pred.maps))})
    q = detector.config.threshold_quantile
    threshold_normal_quantile(pred.scores, q=q).save(out / "threshold.json")


def score_run(run: str | Path, data: str | Path | None = None, overlays: bool = True,
              progress: bool = False) -> tuple[Predictions, dict]:
    """Score test/ of the run's data (or `data`): scores.csv, metrics.json, predictions.npz, overlays/."""
    from anomaly.viz import dataset_range, save_overlays

    run = Path(run)
    detector = load_run(run)
    config = detector.config
    test = AnomalyDataset(data or config.data, "test", size=config.size, channels=config.channels)
    t0 = time.perf_counter()
    pred = detector.predict(test, progress=progress)
    seconds = time.perf_counter() - t0
    pred.meta.update(run=str(run), data=str(data or config.data))
    pred.save(run / "predictions.npz")
    write_scores(run, pred)
    metrics = evaluate(pred)
    metrics["predict_images_per_s"] = len(pred) / seconds
    metrics["threshold"] = Threshold.load(run / "threshold.json").value \
        if (run / "threshold.json").exists() else None
    write_json(run / "metrics.json", metrics)
    if overlays:
        vmin, vmax = _map_range(run) if (run / "val_scores.json").exists() else dataset_range(pred.maps)
        save_overlays(pred, run / "overlays", kind="heatmap", vmin=vmin, vmax=vmax)
    return pred, metrics


def set_threshold(run: str | Path, rule: str, value: float | None = None) -> Threshold:
    """Choose the run's threshold by a rule and save it as threshold.json (what predict uses).

    manual: `value`; normal-quantile: the `value` quantile (default the config's) of held-out
    normal scores (1.0 = their max); f1: F1-optimal on the scored test set (needs labelled defects).
    """
    run = Path(run)
    if rule == "manual":
        if value is None:
            raise ValueError("--rule manual needs --value V")
        threshold = threshold_manual(value)
    elif rule == "normal-quantile":
        path = run / "val_scores.json"
        if not path.exists():
            raise RunError(f"{run} has no val_scores.json; train the run again to get held-out scores")
        q = value if value is not None else load_config(run).threshold_quantile
        threshold = threshold_normal_quantile(np.array(json.loads(path.read_text())["scores"]), q=q)
    elif rule == "f1":
        path = run / "predictions.npz"
        if not path.exists():
            raise RunError(f"{run} has not been scored; run `python -m anomaly score --run {run}` first")
        pred = Predictions.load(path)
        threshold = threshold_f1(pred.labels, pred.scores)
    else:
        raise ValueError(f"Unknown threshold rule {rule!r}; choose one of {', '.join(THRESHOLD_RULES)}")
    threshold.save(run / "threshold.json")
    return threshold


def predict_images(run: str | Path, images: list[str | Path], overlay_dir: str | Path | None = None):
    """Score new images with a run and its saved threshold; write an overlay per image.

    Returns a list of dicts: path, score, verdict ("anomalous" iff score >= threshold), overlay.
    """
    from anomaly.data.folder import load_image
    from anomaly.viz import heatmap_overlay
    from PIL import Image

    run = Path(run)
    detector = load_run(run)
    config = detector.config
    if not (run / "threshold.json").exists():
        raise RunError(f"{run} has no threshold.json; set one with `python -m anomaly threshold --run {run} --rule normal-quantile`")
    threshold = Threshold.load(run / "threshold.json")
    vmin, vmax = _map_range(run)
    overlay_dir = Path(overlay_dir) if overlay_dir else run / "predict"
    overlay_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for path in images:
        image = load_image(path, size=config.size, channels=config.channels)
        with torch.no_grad():
            score, amap = detector.predict_batch(image[None].to(detector.device))
        score, amap = float(score[0]), amap[0].cpu().numpy()
        overlay = overlay_dir / f"{Path(path).stem}_overlay.png"
        Image.fromarray(heatmap_overlay(image.numpy(), amap, vmin, vmax)).save(overlay)
        results.append({"path": str(path), "score": score, "verdict":
                        "anomalous" if score >= threshold.value else "normal", "overlay": str(overlay)})
    return results, threshold


def _map_range(run: Path) -> tuple[float, float]:
    """The colour scale of the run's overlays: that of its held-out normal images."""
    lo, hi = json.loads((run / "val_scores.json").read_text())["map_range"]
    return lo, hi
