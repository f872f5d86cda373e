"""Test data shared by the test modules: tiny configs, CLI flags and in-memory image sets.

Import it as `from helpers import ...` (pytest puts tests/ on the path). The on-disk data set is
the `tiny_cookies` fixture of conftest.py; everything here is small enough to run in seconds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch.utils.data import Dataset

from anomaly.config import Config


def tiny_config(data, method: str = "ae", **overrides) -> Config:
    """A config that trains in about a second on the tiny cookie set (64 px, grey, width 8)."""
    base = {
        "method": method,
        "data": str(data),
        "size": 64,
        "channels": 1,
        "epochs": 2,
        "batch_size": 4,
        "width": 8,
        "latent": 16,
        "seed": 3,
        "device": "cpu",
        "patience": 0,
        "corrupt": 0.0,
    }
    base.update(overrides)
    return Config(**base)


def tiny_flags(data, **overrides) -> list[str]:
    """`train` flags for the same tiny auto-encoder as `tiny_config`."""
    flags = {
        "--data": str(data),
        "--method": "ae",
        "--size": "64",
        "--channels": "1",
        "--epochs": "2",
        "--batch-size": "4",
        "--width": "8",
        "--latent": "16",
        "--seed": "3",
        "--device": "cpu",
        "--patience": "0",
        "--corrupt": "0",
    }
    flags.update({k: str(v) for k, v in overrides.items()})
    return [x for item in flags.items() for x in item]


def copy_run(run: Path, dest: Path) -> Path:
    """A private copy of a run folder, for a test that damages it."""
    shutil.copytree(run, dest)
    return dest


class RandomImages(Dataset):
    """`n` seeded random images [channels, size, size] in AnomalyDataset's item format."""

    def __init__(
        self, n: int, size: int = 32, channels: int = 1, seed: int = 0, defective: bool = False
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, channels, size, size, generator=g)
        self.masks = torch.zeros(n, size, size)
        if defective:
            self.images[:, :, : size // 4, : size // 4] = 1.0
            self.masks[:, : size // 4, : size // 4] = 1.0
        self.label = int(defective)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {
            "image": self.images[i],
            "mask": self.masks[i],
            "label": self.label,
            "defect": "blob" if self.label else "good",
            "path": f"random/{i:03d}.png",
            "mask_known": True,
        }
