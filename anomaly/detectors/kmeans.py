"""K-means on learned features: the original project's second method, and a version that localises.

k-means is fitted to the bottleneck features of normal training images, taken from a trained
run's encoder (AE, UNet or VAE; `anomaly.pipeline` loads it from `--from RUN`); a test image's
score is its distance to the nearest centroid. `config.kmeans_features` says which features:

- "original": the original project's (its `UNet.forward_features` and `kmeans.py`): the
  bottleneck max-pooled 2x2 once more, flattened, not standardised; Euclidean distance.
- "flat": the flattened bottleneck, each element standardised by its mean and spread over the
  training images, so that no channel dominates the distance by scale alone.
- "cell": k-means at every bottleneck position separately (one cell covers 8x8 pixels of a
  4-level UNet), each channel standardised over the training images at that position. A cell's
  distance to its nearest centroid, over the square root of the channels, is the anomaly map
  (upsampled, smoothed); the image score is the map's maximum over cells. A small defect moves
  a few cells a lot, while in a whole-image vector it is diluted by every other cell.

`config.k` is the number of clusters; 0 chooses it by rule: the k in 2..8 with the best
silhouette of the training vectors (Rousseeuw, "Silhouettes", J. Comput. Appl. Math. 1987), if
that silhouette reaches 0.25, below which Kaufman and Rousseeuw ("Finding Groups in Data", 1990)
find no substantial cluster structure; otherwise k = 1 (the distance to the mean).
`kmeans_features` "" and `k` 0 under `--recipe original` mean the original's: "original", k = 2.

Every variant also returns the per-cell map (with k = 1 at each cell for "original" and "flat"),
so the original's k-means, which had none, can be compared on localisation too.

Why "cell": on the cookie benchmark and on two real-photo sets it ranked images at least as
well as "flat" and "original", and its map localises defects, where a position-free k-means of
all cells (the map it replaces) did not; global average pooling of the bottleneck threw the
defects away. Between the three features the image rankings differ by no more than one
retraining of the UNet moves them, so localisation decides. The numbers are in
docs/measurements.md.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from anomaly.config import Config
from anomaly.detectors.base import Detector, register
from anomaly.maps import gaussian_blur

K_CANDIDATES = range(2, 9)  # what the k rule tries
MIN_SILHOUETTE = 0.25  # Kaufman and Rousseeuw: below this, no substantial structure
FEATURES = ("original", "flat", "cell")


def choose_k(vectors: np.ndarray, seed: int = 0) -> int:
    """The k rule: the best-silhouette k in 2..8 if its silhouette is at least 0.25, else 1."""
    best_k, best = 1, MIN_SILHOUETTE
    for k in K_CANDIDATES:
        if k >= len(vectors):
            break
        labels = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(vectors)
        score = silhouette_score(vectors, labels)
        if score >= best:
            best_k, best = k, score
    return best_k


def _centers(vectors: np.ndarray, k: int, seed: int, n_init: int = 10) -> torch.Tensor:
    """k-means centroids [k, D] of `vectors` [N, D] (k = 1: the mean, without k-means)."""
    k = min(k, len(vectors))
    if k == 1:
        return torch.as_tensor(vectors.mean(0, keepdims=True), dtype=torch.float32)
    km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(vectors)
    return torch.as_tensor(km.cluster_centers_, dtype=torch.float32)


def _spread(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation along `dim`; the deviation floored at 1e-3 of its mean so
    that constant elements (a dead ReLU) do not blow up."""
    std = x.std(dim, keepdim=True) if x.shape[dim] > 1 else torch.zeros_like(x.mean(dim, True))
    return x.mean(dim, keepdim=True), std.clamp(min=1e-3 * float(std.mean()) + 1e-12)


@register("kmeans")
class KMeansDetector(Detector):
    """Distance to the nearest k-means centroid of normal bottleneck features."""

    def __init__(self, config, source=None) -> None:
        super().__init__(config)
        self.source = source  # the trained reconstruction detector whose encoder gives features
        original = getattr(config, "recipe", "project") == "original"
        self.kind = config.kmeans_features or ("original" if original else "cell")
        if self.kind not in FEATURES:
            raise ValueError(
                f"--kmeans-features {self.kind!r}: choose one of {', '.join(FEATURES)}"
            )
        self.k = config.k or (2 if original else 0)  # 0: by rule, in fit
        self.centers: torch.Tensor | None = None  # [k, D], or [cells, k, C] for "cell"
        self.mean: torch.Tensor | None = None  # standardising ("flat"): [D]
        self.scale: torch.Tensor | None = None
        self.cell_mean: torch.Tensor | None = None  # per cell and channel: [cells, 1, C]
        self.cell_scale: torch.Tensor | None = None

    def modules(self) -> dict[str, torch.nn.Module]:
        return self.source.modules() if self.source is not None else {}

    def _load_source(self) -> None:
        if self.source is None:  # anomaly.pipeline.build_detector loads it from --from RUN
            raise ValueError(
                "The kmeans method needs features from a trained run: "
                "train --method kmeans --from RUN (an ae, unet or vae run)"
            )
        if not hasattr(self.source, "features"):
            raise ValueError(
                f"kmeans needs an ae, unet or vae run; {self.config.source_run} is "
                f"a {self.source.name} run"
            )
        self.source.to(self.device)

    @torch.no_grad()
    def _bottleneck(self, images: torch.Tensor) -> torch.Tensor:
        return self.source.features(images).float().cpu()

    def _vectors(self, fmap: torch.Tensor) -> torch.Tensor:
        """Whole-image vectors [B, D] ("original", "flat"; standardised for "flat")."""
        if self.kind == "original":
            return F.max_pool2d(fmap, 2).flatten(1)
        return (fmap.flatten(1) - self.mean) / self.scale

    def _cells(self, fmap: torch.Tensor) -> torch.Tensor:
        """Standardised vectors per cell: [cells, B, C]."""
        b, c, h, w = fmap.shape
        return (fmap.permute(2, 3, 0, 1).reshape(h * w, b, c) - self.cell_mean) / self.cell_scale

    def fit(
        self,
        train_data,
        val_data=None,
        *,
        progress: bool = False,
        resume: bool = False,
        checkpoints=None,
    ):
        self.refuse_resume(resume)
        self._load_source()
        fmap = torch.cat(
            [self._bottleneck(batch["image"].to(self.device)) for batch in self.loader(train_data)]
        )
        b, c, h, w = fmap.shape
        self.cell_mean, self.cell_scale = _spread(fmap.permute(2, 3, 0, 1).reshape(h * w, b, c), 1)
        cells = self._cells(fmap)
        seed = self.config.seed
        if self.kind == "cell":
            if self.k == 0:
                self.k = choose_k(cells.permute(1, 0, 2).reshape(b, -1).numpy(), seed)
            self.centers = torch.stack([_centers(v.numpy(), self.k, seed, n_init=3) for v in cells])
        else:
            if self.kind == "flat":
                self.mean, self.scale = (t[0] for t in _spread(fmap.flatten(1), 0))
            vectors = self._vectors(fmap).numpy()
            if self.k == 0:
                self.k = choose_k(vectors, seed)
            self.centers = _centers(vectors, self.k, seed)
        return self

    @torch.no_grad()
    def predict_batch(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self._bottleneck(images)
        b, c, h, w = fmap.shape
        cells = self._cells(fmap)  # [cells, B, C]
        if self.kind == "cell":
            dist = torch.cdist(cells, self.centers).min(dim=2).values
        else:
            dist = cells.norm(dim=2)  # to the per-cell mean: the map only
        dist = (dist / math.sqrt(c)).T.reshape(b, 1, h, w)
        if self.kind == "cell":
            scores = dist.flatten(1).amax(dim=1)
        else:
            scores = torch.cdist(self._vectors(fmap), self.centers).min(dim=1).values
        maps = F.interpolate(dist, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return scores, gaussian_blur(maps[:, 0], self.config.smooth_sigma)

    def state_dict(self) -> dict:
        from dataclasses import asdict

        state = {
            "source_config": asdict(self.source.config),
            "source": self.source.state_dict(),
            "kind": self.kind,
            "k": self.k,
            "centers": self.centers,
            "cell_mean": self.cell_mean,
            "cell_scale": self.cell_scale,
        }
        if self.kind == "flat":
            state.update(mean=self.mean, scale=self.scale)
        return state

    def load_state_dict(self, state: dict) -> None:
        from anomaly.detectors import get_detector

        if "cell_mean" not in state or (state.get("kind") == "flat" and "mean" not in state):
            raise RuntimeError(
                "this kmeans run was made by an older anomaly (no per-cell "
                "statistics); train it again: train --method kmeans --from "
                "SOURCE_RUN --out RUN"
            )
        source_config = Config(**state["source_config"])
        self.source = get_detector(source_config.method)(source_config)
        self.source.load_state_dict(state["source"])
        self.source.to(self.device)
        self.kind, self.k, self.centers = state["kind"], int(state["k"]), state["centers"]
        self.cell_mean, self.cell_scale = state["cell_mean"], state["cell_scale"]
        self.mean, self.scale = state.get("mean"), state.get("scale")
