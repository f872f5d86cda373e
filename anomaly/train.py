"""The one training loop every trained method uses.

Device chosen automatically (CUDA, then MPS, then CPU), one seed for torch, numpy and Python, a
progress bar that works in a terminal and in JupyterLab, a validation loss each epoch, the best
checkpoint kept, early stopping, and resume. Where checkpoints go is not this module's business:
the caller passes a `Checkpoints` object (the pipeline passes the run's `RunDir`), so training
imports nothing that reads or writes run folders.
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from anomaly.safe_files import finite

HISTORY_FIELDS = ["epoch", "train_loss", "val_loss", "lr", "seconds"]


class Checkpoints(Protocol):
    """Where training keeps its checkpoints (implemented by `anomaly.runs.RunDir`)."""

    def save_checkpoint(self, detector, **extra) -> None: ...  # the best model so far
    def save_last(self, state: dict) -> None: ...  # what resuming needs, after every epoch
    def load_last(self) -> dict: ...
    def checkpoint(self) -> dict: ...  # the best model's saved payload
    def save_history(self, rows: list[dict]) -> None: ...


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training; `epoch` is the last finished (and saved) epoch."""

    def __init__(self, epoch: int) -> None:
        super().__init__(f"interrupted after epoch {epoch}")
        self.epoch = epoch


class Diverged(ValueError):
    """The training loss became NaN or infinite: nothing learnt from then on can be used."""


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's random numbers (all devices): the same seed draws the
    same split, initial weights and batches. Not this process's hash seed, fixed when Python
    starts (processes it starts get it), nor the order of floating-point sums across threads
    (docs/measurements.md, "Same seed, same model; threads change the trained networks")."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))  # for Python processes started from here


def select_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then CPU; anything else is passed to torch."""
    if name in ("", "auto", None):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"--device {name}: not a device; use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {name}: CUDA is not available on this machine; use --device cpu or auto"
        )
    if (
        device.type == "cuda"
        and device.index is not None
        and device.index >= torch.cuda.device_count()
    ):
        raise ValueError(
            f"--device {name}: this machine has {torch.cuda.device_count()} CUDA "
            "devices (cuda:0 ...); use one of them, or --device auto"
        )
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise ValueError(
            f"--device {name}: Apple MPS is not available on this machine; use --device cpu or auto"
        )
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name}: not supported; use auto, cpu, cuda, cuda:N or mps")
    return device


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Hold out a seeded fraction of train/good for validation (at least one image when n > 1)."""
    if n < 2 or val_fraction <= 0:
        return list(range(n)), []
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    order = np.random.default_rng(seed).permutation(n)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def _rng_state() -> dict:
    """The Python, numpy and torch RNG states as tensors and plain lists (no pickled objects)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [
            str(name),
            torch.as_tensor(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ],
        "torch": torch.get_rng_state(),
    }


def _set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(
        (
            name,
            np.asarray(keys, dtype=np.int64).astype(np.uint32),
            int(pos),
            int(has_gauss),
            float(cached),
        )
    )
    torch.set_rng_state(state["torch"])


# what `fit_loop` saves after every epoch (last.pt) and `resume=True` reads back
RESUME_KEYS = ("state", "optimizer", "rng", "history", "best", "stale", "epoch")


class DamagedState(ValueError):
    """A saved training state (last.pt) does not hold what resuming needs; says what is off."""


def _optimizer(detector) -> torch.optim.Optimizer:
    cfg = detector.config
    params = [p for m in detector.modules().values() for p in m.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def restore(detector, optimizer: torch.optim.Optimizer, last) -> tuple[list, float, int, int]:
    """Load a saved training state (what `fit_loop` gives `save_last`) into `detector`,
    `optimizer` and the random generators; return (history, best, stale, epoch).

    Everything is checked, so a damaged state raises `DamagedState` saying what is off, not an
    error from inside torch (or from the optimizer's first step, epochs later)."""
    if not isinstance(last, dict):
        raise DamagedState(f"it holds a {type(last).__name__}, not a dict")
    missing = [k for k in RESUME_KEYS if k not in last]
    if missing:
        raise DamagedState(f"it lacks {', '.join(missing)}")
    epoch, stale, best, history = (last[k] for k in ("epoch", "stale", "best", "history"))
    if not (isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 1):
        raise DamagedState(f"its epoch {epoch!r} is not a whole number of at least 1")
    if not (isinstance(stale, int) and not isinstance(stale, bool) and 0 <= stale <= epoch):
        raise DamagedState(f"its stale {stale!r} is not a whole number from 0 to its epoch")
    if not finite(best):
        raise DamagedState(f"its best {best!r} is not a finite number")
    rows_ok = isinstance(history, list) and all(
        isinstance(r, dict) and all(finite(r.get(f)) for f in HISTORY_FIELDS) for r in history
    )
    if not rows_ok or len(history) != epoch:
        raise DamagedState(
            f"its history is not {epoch} rows of {', '.join(HISTORY_FIELDS)} (one per epoch)"
        )
    try:
        detector.load_state_dict(last["state"])
    except Exception as err:  # noqa: BLE001  (each method raises its own)
        raise DamagedState(f"its model state does not load: {_first_line(err)}") from None
    _restore_optimizer(optimizer, last["optimizer"])
    saved = _rng_state()
    try:
        _set_rng_state(last["rng"])
    except Exception as err:  # noqa: BLE001  (random, numpy and torch each raise their own)
        _set_rng_state(saved)
        raise DamagedState(f"its random generator states do not load: {_first_line(err)}") from None
    return list(history), float(best), stale, epoch


def _restore_optimizer(optimizer: torch.optim.Optimizer, state) -> None:
    """Load an Adam state, checking the numbers torch itself reads only at the next step."""
    groups = state.get("param_groups") if isinstance(state, dict) else None
    if not isinstance(groups, list) or not isinstance(state.get("state"), dict):
        raise DamagedState("its optimizer state is not an Adam state (state, param_groups)")
    for g in groups:
        betas = g.get("betas") if isinstance(g, dict) else None
        numbers = [g.get(k) for k in ("lr", "eps", "weight_decay")] if betas else []
        if not (isinstance(betas, (list, tuple)) and len(betas) == 2):
            raise DamagedState("its optimizer state has a parameter group without two betas")
        if not all(finite(x) for x in [*numbers, *betas]):
            raise DamagedState(
                f"its optimizer's lr, eps, weight_decay or betas are not all numbers "
                f"({numbers + list(betas)!r})"
            )
    try:
        optimizer.load_state_dict(state)
    except Exception as err:  # noqa: BLE001
        raise DamagedState(f"its optimizer state does not load: {_first_line(err)}") from None
    for param, kept in optimizer.state.items():
        for name, value in kept.items():
            shape_ok = name == "step" or (
                isinstance(value, torch.Tensor) and value.shape == param.shape
            )
            step_ok = name != "step" or (
                finite(value) or (isinstance(value, torch.Tensor) and value.numel() == 1)
            )
            if not (shape_ok and step_ok):
                raise DamagedState(
                    f"its optimizer's {name} does not fit a parameter of shape {list(param.shape)}"
                )


def check_resumable(detector, last) -> None:
    """Raise `DamagedState` unless `restore` would load `last` into `detector` (loads its model
    state; the random generators are left as they were)."""
    with torch.random.fork_rng(devices=[]):
        py, npy = random.getstate(), np.random.get_state()
        try:
            restore(detector, _optimizer(detector), last)
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def _first_line(err: BaseException) -> str:
    if isinstance(err, KeyError):  # str() of a KeyError is only the key
        return f"no {err.args[0]!r} in it" if err.args else "a key is missing"
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def fit_loop(
    detector,
    step: Callable[[torch.Tensor], torch.Tensor],
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    checkpoints: Checkpoints | None = None,
    resume: bool = False,
    progress: bool = True,
) -> list[dict]:
    """Train `detector.modules()` by minimising `step(images)`; return the history rows.

    `step` is called in train mode for training batches and, under `torch.no_grad()`, in eval
    mode for validation batches. The best state by validation loss (training loss when there is
    no validation split) is kept in memory, given to `checkpoints.save_checkpoint` and restored at
    the end; after every epoch `checkpoints.save_last` gets what `resume=True` needs to continue
    (up to `config.epochs`, which may be more than the run first had). Ctrl-C raises
    `Interrupted` with the last finished epoch.
    """
    cfg = detector.config
    optimizer = _optimizer(detector)
    history: list[dict] = []
    best, best_state, start, stale = math.inf, None, 0, 0
    if resume:
        if checkpoints is None:
            raise ValueError("resume=True needs the checkpoints to resume from")
        history, best, stale, start = restore(detector, optimizer, checkpoints.load_last())
        best_state = checkpoints.checkpoint()["state"]
    bar = tqdm(
        range(start, cfg.epochs),
        desc=f"train {detector.name}",
        disable=not progress,
        initial=start,
        total=cfg.epochs,
    )
    done = start
    try:
        for epoch in bar:
            t0 = time.perf_counter()
            train_loss = _run_epoch(detector, step, train_loader, optimizer)
            val_loss = (
                _run_epoch(detector, step, val_loader, None)
                if val_loader is not None
                else train_loss
            )
            bad = [x for x in (train_loss, val_loss) if not math.isfinite(x)]
            if bad:
                raise Diverged(
                    f"training diverged: the loss became {bad[0]} in epoch {epoch + 1}, so no "
                    f"model of this epoch is kept; train again with a lower --lr (this run: "
                    f"{cfg.lr:g})"
                )
            row = {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - t0,
            }
            history.append(row)
            bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
            if val_loss < best:
                best, stale = val_loss, 0
                best_state = copy.deepcopy(detector.state_dict())
                if checkpoints is not None:
                    checkpoints.save_checkpoint(detector, epoch=epoch + 1, val_loss=val_loss)
            else:
                stale += 1
            if checkpoints is not None:
                checkpoints.save_history(history)
                checkpoints.save_last(
                    {
                        "state": detector.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "rng": _rng_state(),
                        "history": history,
                        "best": best,
                        "stale": stale,
                        "epoch": epoch + 1,
                    }
                )
            done = epoch + 1
            if cfg.patience and stale >= cfg.patience:
                bar.write(
                    f"early stopping at epoch {epoch + 1}: no validation improvement for "
                    f"{stale} epochs"
                )
                break
    except KeyboardInterrupt:
        bar.close()
        raise Interrupted(done) from None
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
