"""The detector contract every method follows, the `Predictions` it returns, and the registry.

A detector learns "normal" from defect-free images (`fit`) and returns, for any data set, one
score per image and one anomaly map per image (`predict`). Everything downstream (metrics,
thresholds, overlays, the explorer, the CLI and the benchmark) consumes `Predictions` only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


@dataclass
class Predictions:
    """Per-image scores and per-pixel maps for one data set, in data set order.

    Attributes:
        paths: image file paths.
        labels: 0 = good, 1 = defective, shape [N].
        defects: defect kind per image ("good" for normal images).
        scores: image anomaly scores, higher = more anomalous, shape [N].
        maps: per-pixel anomaly maps, float32 [N, H, W] at the data set's image size.
        masks: ground-truth masks, uint8 {0,1} [N, H, W], or None when the data has none.
    """

    paths: list[str]
    labels: np.ndarray
    defects: list[str]
    scores: np.ndarray
    maps: np.ndarray
    masks: np.ndarray | None = None
    method: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.maps = np.asarray(self.maps, dtype=np.float32)
        if self.masks is not None:
            self.masks = (np.asarray(self.masks) > 0).astype(np.uint8)
        n = len(self.paths)
        for name in ("labels", "defects", "scores", "maps"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Predictions.{name} has {len(getattr(self, name))} rows, paths has {n}")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def has_masks(self) -> bool:
        return self.masks is not None and bool(self.masks.any())

    def save(self, path: str | Path) -> None:
        """Save to one compressed .npz file (maps as float16 to stay small)."""
        np.savez_compressed(
            path, paths=np.array(self.paths), labels=self.labels, defects=np.array(self.defects),
            scores=self.scores, maps=self.maps.astype(np.float16),
            masks=self.masks if self.masks is not None else np.zeros((0,), np.uint8),
            method=np.array(self.method), meta=np.array(json.dumps(self.meta)),
        )

    @classmethod
    def load(cls, path: str | Path) -> "Predictions":
        z = np.load(path, allow_pickle=False)
        masks = z["masks"] if z["masks"].size else None
        return cls(paths=[str(p) for p in z["paths"]], labels=z["labels"],
                   defects=[str(d) for d in z["defects"]], scores=z["scores"],
                   maps=z["maps"].astype(np.float32), masks=masks, method=str(z["method"]),
                   meta=json.loads(str(z["meta"])))


class Detector:
    """Base class: subclasses set `name` and implement `fit`, `predict_batch`, and the state.

    `predict` runs `predict_batch` over a loader and gathers a `Predictions`. Subclasses keep
    their learned state in `state_dict()` / `load_state_dict()` (a plain dict of tensors and
    JSON-able values) so that a run folder can save and restore any method the same way.
    """

    name: ClassVar[str] = ""

    def __init__(self, config) -> None:
        self.config = config
        self.device = torch.device("cpu")

    # --- to implement -------------------------------------------------------------------
    def fit(self, train_data: Dataset, val_data: Dataset | None = None, run_dir: Path | None = None):
        raise NotImplementedError

    @torch.no_grad()
    def predict_batch(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (scores [B], maps [B, H, W]) for a batch of images [B, C, H, W] in [0, 1]."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------
    def to(self, device: str | torch.device) -> "Detector":
        self.device = torch.device(device)
        for module in self.modules().values():
            module.to(self.device)
        return self

    def modules(self) -> dict[str, torch.nn.Module]:
        """The torch modules this detector owns (moved by `to`, set to eval in `predict`)."""
        return {}

    def loader(self, data: Dataset, shuffle: bool = False, batch_size: int | None = None) -> DataLoader:
        bs = batch_size or getattr(self.config, "batch_size", 16)
        return DataLoader(data, batch_size=bs, shuffle=shuffle, num_workers=0)

    def train_steps(self, train_data: Dataset, val_data: Dataset | None, run_dir=None,
                    resume: bool = False, progress: bool = True):
        """Minimise `self.step(images)` with the shared loop (`anomaly.train.fit_loop`)."""
        from anomaly.train import fit_loop

        val_loader = self.loader(val_data) if val_data is not None and len(val_data) else None
        self.history = fit_loop(self, self.step, self.loader(train_data, shuffle=True), val_loader,
                                run_dir=run_dir, resume=resume, progress=progress)
        return self

    @torch.no_grad()
    def predict(self, data: Dataset | DataLoader, progress: bool = False) -> Predictions:
        from tqdm.auto import tqdm

        loader = data if isinstance(data, DataLoader) else self.loader(data)
        for module in self.modules().values():
            module.eval()
        paths, labels, defects, scores, maps, masks = [], [], [], [], [], []
        for batch in tqdm(loader, desc=f"predict {self.name}", disable=not progress, leave=False):
            s, m = self.predict_batch(batch["image"].to(self.device))
            scores.append(s.detach().float().cpu().numpy())
            maps.append(m.detach().float().cpu().numpy())
            masks.append(batch["mask"].numpy())
            paths += list(batch["path"])
            labels += [int(x) for x in batch["label"]]
            defects += list(batch["defect"])
        if not paths:
            raise ValueError("predict() got an empty data set: there are no images to score")
        mask_arr = np.concatenate(masks)
        return Predictions(paths, np.array(labels), defects, np.concatenate(scores),
                           np.concatenate(maps), mask_arr, method=self.name)


REGISTRY: dict[str, type[Detector]] = {}


def register(name: str) -> Callable[[type[Detector]], type[Detector]]:
    """Class decorator: make a detector available by name to notebooks, CLI and benchmark."""

    def wrap(cls: type[Detector]) -> type[Detector]:
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return wrap


def get_detector(name: str) -> type[Detector]:
    from anomaly import detectors  # noqa: F401  (importing registers every method)

    if name not in REGISTRY:
        raise KeyError(f"Unknown method {name!r}; choose one of: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]
