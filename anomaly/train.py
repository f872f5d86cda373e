"""The one training loop every trained method uses.

Device chosen automatically (CUDA, then MPS, then CPU), one seed for torch, numpy and Python, a
progress bar that works in a terminal and in JupyterLab, a validation loss each epoch, the best
checkpoint written atomically, early stopping, resume from a run folder, and `history.csv`.
"""

from __future__ import annotations

import copy
import csv
import math
import os
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from anomaly.runs import atomic_save

HISTORY_FIELDS = ["epoch", "train_loss", "val_loss", "lr", "seconds"]


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices) and ask for deterministic CPU kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def select_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then CPU; anything else is passed to torch."""
    if name in ("", "auto", None):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    return device


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Hold out a seeded fraction of train/good for validation (at least one image when n > 1)."""
    if n < 2 or val_fraction <= 0:
        return list(range(n)), []
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    order = np.random.default_rng(seed).permutation(n)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def read_history(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "history.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) if k != "epoch" else int(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _write_history(run_dir: Path, rows: list[dict]) -> None:
    tmp = run_dir / "history.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, run_dir / "history.csv")


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def fit_loop(
    detector,
    step: Callable[[torch.Tensor], torch.Tensor],
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> list[dict]:
    """Train `detector.modules()` by minimising `step(images)`; return the history rows.

    `step` is called in train mode for training batches and, under `torch.no_grad()`, in eval
    mode for validation batches. The best state by validation loss (training loss when there is
    no validation split) is kept in memory, written to `run_dir/model.pt` and restored at the end;
    `run_dir/last.pt` holds what `resume=True` needs to continue an interrupted run.
    """
    cfg = detector.config
    run_dir = Path(run_dir) if run_dir is not None else None
    params = [p for m in detector.modules().values() for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: list[dict] = []
    best, best_state, start, stale = math.inf, None, 0, 0
    if resume:
        if run_dir is None or not (run_dir / "last.pt").exists():
            raise FileNotFoundError(f"Cannot resume: {run_dir}/last.pt does not exist (the run never finished an epoch); train without --resume")
        last = torch.load(run_dir / "last.pt", map_location=detector.device, weights_only=False)
        detector.load_state_dict(last["state"])
        optimizer.load_state_dict(last["optimizer"])
        _set_rng_state(last["rng"])
        history, best, stale, start = last["history"], last["best"], last["stale"], last["epoch"]
        best_state = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=False)["state"]
    bar = tqdm(range(start, cfg.epochs), desc=f"train {detector.name}", disable=not progress,
               initial=start, total=cfg.epochs)
    for epoch in bar:
        t0 = time.perf_counter()
        train_loss = _run_epoch(detector, step, train_loader, optimizer)
        val_loss = _run_epoch(detector, step, val_loader, None) if val_loader is not None else train_loss
        row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss,
               "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        history.append(row)
        bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
        if val_loss < best:
            best, stale = val_loss, 0
            best_state = copy.deepcopy(detector.state_dict())
            if run_dir is not None:
                detector_save(detector, run_dir / "model.pt", epoch=epoch + 1, val_loss=val_loss)
        else:
            stale += 1
        if run_dir is not None:
            _write_history(run_dir, history)
            atomic_save({"state": detector.state_dict(), "optimizer": optimizer.state_dict(),
                         "rng": _rng_state(), "history": history, "best": best, "stale": stale,
                         "epoch": epoch + 1}, run_dir / "last.pt")
        if cfg.patience and stale >= cfg.patience:
            bar.write(f"early stopping at epoch {epoch + 1}: no validation improvement for {stale} epochs")
            break
    bar.close()
    if best_state is not None:
        detector.load_state_dict(best_state)
    return history


def _run_epoch(detector, step, loader, optimizer) -> float:
    training = optimizer is not None
    for module in detector.modules().values():
        module.train(training)
    total, count = 0.0, 0
    with torch.set_grad_enabled(training):
        for batch in loader:
            images = batch["image"].to(detector.device)
            loss = step(images)
            if training:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            total += float(loss.detach()) * len(images)
            count += len(images)
    if count == 0:
        raise ValueError("An epoch saw no images: the training or validation split is empty")
    return total / count


def detector_save(detector, path: str | Path, **extra) -> None:
    """Write a detector checkpoint (method, config, model signature, learned state) atomically."""
    from anomaly.runs import checkpoint_payload

    atomic_save(checkpoint_payload(detector, **extra), path)
