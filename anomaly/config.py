"""One typed configuration for a run; its fields mirror the CLI flags and are saved as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path


@dataclass
class Config:
    """Everything that decides what a run learns. Saved as `config.json` in the run folder.

    Only the fields a method reads matter to it; the rest keep their defaults.
    """

    method: str = "unet"
    data: str = ""
    size: int = 128               # images are resized to size x size
    channels: int = 1             # 1 = grayscale (as the original), 3 = RGB
    seed: int = 0
    device: str = "auto"          # auto = cuda, then mps, then cpu
    # training (reconstruction, draem, flow)
    epochs: int = 40
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    val_fraction: float = 0.1     # of train/good, held out for validation and the threshold
    patience: int = 10            # early stopping: epochs without validation improvement
    loss: str = "l2"              # l2 | ssim (reconstruction methods)
    width: int = 32               # channels of the first level of the networks
    latent: int = 64              # bottleneck channels (ae, vae)
    kl_weight: float = 1e-3       # vae
    corrupt: float = 0.0          # ae/unet/vae: fraction of training images given a synthetic
                                  # anomaly the network must remove (denoising); 0 = plain
    smooth_sigma: float = 2.0     # Gaussian smoothing of anomaly maps, in pixels
    score_topk: float = 0.0       # 0 = image score is the map's max; else mean of the top fraction
    # feature methods (kmeans, patchknn, flow)
    source_run: str = ""          # kmeans: the trained run whose encoder gives features
    k: int = 2                    # kmeans clusters (2, as the original)
    backbone: str = "efficientnet_lite0"
    coreset_ratio: float = 0.01
    neighbors: int = 1
    # thresholds
    threshold_quantile: float = 0.99

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        raw = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{path}: unknown config fields {unknown}; was it written by a newer anomaly?")
        return cls(**raw)

    def replace(self, **changes) -> "Config":
        data = asdict(self)
        data.update({k: v for k, v in changes.items() if v is not None})
        return Config(**data)
