"""K-means on learned features: the original project's second method.

k-means (k=2 by default, as the original) is fitted to the bottleneck features of normal training
images, taken from a trained run's encoder (AE, UNet or VAE); a test image's score is its distance
to the nearest centroid. An image's feature vector is its whole bottleneck, flattened (as the
original passed it to k-means), with each element standardised by its mean and spread over the
training images, so that no channel dominates the distance by scale alone. Measured on the cookie
benchmark with the UNet run's bottleneck: global average pooling gave image AUROC 0.53 (the
pooled vector washes out a small defect), flattening 0.65, flattening and standardising 0.67.

A patch-level variant clusters the spatial bottleneck vectors (one per feature-map position) so
the method also gives an anomaly map: each position's distance to its nearest patch centroid,
upsampled to the image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans, MiniBatchKMeans

from anomaly.config import Config
from anomaly.detectors.base import Detector, register
from anomaly.maps import gaussian_blur

PATCH_CLUSTERS = 32  # clusters of the patch-level variant: normal texture has more than 2 modes


@register("kmeans")
class KMeansDetector(Detector):
    """Distance to the nearest k-means centroid of normal bottleneck features."""

    def __init__(self, config, source=None) -> None:
        super().__init__(config)
        self.source = source  # the trained reconstruction detector whose encoder gives features
        self.centers: torch.Tensor | None = None
        self.patch_centers: torch.Tensor | None = None
        self.mean: torch.Tensor | None = None  # of the training vectors, for standardising
        self.scale: torch.Tensor | None = None

    def modules(self) -> dict[str, torch.nn.Module]:
        return self.source.modules() if self.source is not None else {}

    def _load_source(self) -> None:
        if self.source is None:  # anomaly.pipeline.build_detector loads it from --from RUN
            raise ValueError("The kmeans method needs features from a trained run: "
                             "train --method kmeans --from RUN (an ae, unet or vae run)")
        if not hasattr(self.source, "features"):
            raise ValueError(f"kmeans needs an ae, unet or vae run; {self.config.source_run} is "
                             f"a {self.source.name} run")
        self.source.to(self.device)

    @torch.no_grad()
    def _features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image vectors [B, C*h*w] on the CPU, bottleneck maps [B, C, h, w])."""
        fmap = self.source.features(images)
        return fmap.flatten(1).float().cpu(), fmap

    def _standardise(self, vectors: torch.Tensor) -> torch.Tensor:
        return (vectors - self.mean) / self.scale

    def fit(self, train_data, val_data=None, *, progress: bool = False, resume: bool = False,
            checkpoints=None):
        self.refuse_resume(resume)
        self._load_source()
        vectors, patches = [], []
        for batch in self.loader(train_data):
            vec, fmap = self._features(batch["image"].to(self.device))
            vectors.append(vec)
            patches.append(fmap.permute(0, 2, 3, 1).reshape(-1, fmap.shape[1]).cpu().numpy())
        vectors, patches = torch.cat(vectors), np.concatenate(patches)
        # scale: the standard deviation, floored at 1e-3 of the mean one so that constant
        # elements (a dead ReLU) do not blow up
        self.mean, std = vectors.mean(0), vectors.std(0)
        self.scale = std.clamp(min=1e-3 * float(std.mean()) + 1e-12)
        k = min(self.config.k, len(vectors))
        km = KMeans(n_clusters=k, n_init=10, random_state=self.config.seed).fit(
            self._standardise(vectors).numpy())
        pkm = MiniBatchKMeans(n_clusters=min(PATCH_CLUSTERS, len(patches)), n_init=3,
                              random_state=self.config.seed, batch_size=4096).fit(patches)
        self.centers = torch.as_tensor(km.cluster_centers_, dtype=torch.float32)
        self.patch_centers = torch.as_tensor(pkm.cluster_centers_, dtype=torch.float32)
        return self

    @torch.no_grad()
    def predict_batch(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vec, fmap = self._features(images)
        scores = torch.cdist(self._standardise(vec), self.centers).min(dim=1).values
        b, c, h, w = fmap.shape
        flat = fmap.permute(0, 2, 3, 1).reshape(-1, c).cpu()
        dist = torch.cdist(flat, self.patch_centers).min(dim=1).values.reshape(b, 1, h, w)
        maps = F.interpolate(dist, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return scores, gaussian_blur(maps, self.config.smooth_sigma)

    def state_dict(self) -> dict:
        from dataclasses import asdict

        return {"source_config": asdict(self.source.config), "source": self.source.state_dict(),
                "centers": self.centers, "patch_centers": self.patch_centers,
                "mean": self.mean, "scale": self.scale}

    def load_state_dict(self, state: dict) -> None:
        from anomaly.detectors import get_detector

        source_config = Config(**state["source_config"])
        self.source = get_detector(source_config.method)(source_config)
        self.source.load_state_dict(state["source"])
        self.source.to(self.device)
        if "mean" not in state:
            raise RuntimeError("this kmeans run was made by an older anomaly (pooled features); "
                               "train it again: train --method kmeans --from SOURCE_RUN --out RUN")
        self.centers, self.patch_centers = state["centers"], state["patch_centers"]
        self.mean, self.scale = state["mean"], state["scale"]
