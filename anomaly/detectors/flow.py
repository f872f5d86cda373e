"""Normalizing-flow detector (`flow`): how unlikely is each feature under a density of normal ones?

FastFlow (Yu et al., "FastFlow: Unsupervised Anomaly Detection and Localization via 2D
Normalizing Flows", 2021): a frozen ImageNet backbone gives mid-level feature maps; for each one a
2-D flow (`anomaly.models.flow.FeatureFlow`) is trained to map the features of normal images to a
standard normal, by maximum likelihood. A defect gives features the flow has never seen, which land
far from the origin: the per-position negative log-likelihood is the anomaly map, as in CFlow-AD
(Gudovskiy et al., "CFLOW-AD: Real-Time Unsupervised Anomaly Detection with Localization via
Conditional Normalizing Flows", WACV 2022).

Recipe:
- features: the backbone's stages (`anomaly.features`; EfficientNet-Lite0 blocks 4 and 10, 40
  channels at stride 8 and 112 at stride 16, or `config.layers`), each standardised per channel
  with the mean and standard deviation of the training features. The image is mirrored outwards
  by `config.feature_pad` pixels before the backbone and the padded cells are cropped off
  (`anomaly.features.padded_maps`), so edge features do not see the backbone's zero padding,
  which no feature in the middle of a training image ever sees. The backbone never trains, so
  `fit` computes the features of the training (and validation) images once and trains only the
  flows, through the shared `anomaly.train.fit_loop`.
- loss: negative log-likelihood per dimension, 0.5 ||z||^2 - log|det J| + 0.5 log 2 pi, divided by
  the number of feature values, averaged over stages (the val loss in history.csv is this).
- map: per-position NLL per channel (log-determinant included), upsampled to the image, averaged
  over stages, Gaussian smoothed (`config.smooth_sigma`); image score = the map's max (or the
  top-k mean, `config.score_topk`), optionally without `config.score_border` edge pixels.
  FastFlow's map, 1 - exp(-0.5 mean z^2), ranked the cookie images as well and localised
  slightly worse.

Defaults (4 coupling blocks per stage, hidden width = channels, clamp 2) were chosen on the cookie
benchmark: more blocks or half-width sub-networks gave the same AUROC at up to twice the cost,
and AUROC stops rising after about half the default epochs while the validation NLL keeps
falling; 160 px ranked the cookies better than 128 px and as well as 192 px (numbers in
docs/measurements.md). The 16 px of mirrored padding (`METHOD_DEFAULTS["flow"]`) helped on both
the cookies and the real-photo suite; leaving a border out of the image score did not, as the
stride-8 and 16 maps are coarse.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from anomaly.detectors.base import Detector
from anomaly.detectors.registry import register
from anomaly.features import build_backbone, padded_maps, parse_layers, whole_cells
from anomaly.maps import gaussian_blur, image_score
from anomaly.models.flow import FeatureFlow

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def flow_nll_map(z: torch.Tensor, log_det: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood per position and per channel, [B, H, W], from the flow's output.

    Args:
        z: the flow's output [B, C, H, W], standard normal for normal features.
        log_det: the flow's log|det J| per position, [B, H, W].
    """
    c = z.shape[1]
    return 0.5 * (z * z).mean(dim=1) - log_det / c + HALF_LOG_2PI


def flow_anomaly_map(
    outputs: list[tuple[torch.Tensor, torch.Tensor]], size: tuple[int, int]
) -> torch.Tensor:
    """Anomaly map [B, H, W] at image `size`: each stage's `flow_nll_map`, upsampled, averaged.

    Args:
        outputs: (z, log_det) of each stage's flow, as `FlowHead` returns them.
        size: (H, W) of the images.
    """
    maps = [
        F.interpolate(
            flow_nll_map(z, log_det)[:, None],
            size=tuple(size),
            mode="bilinear",
            align_corners=False,
        )[:, 0]
        for z, log_det in outputs
    ]
    return torch.stack(maps).mean(dim=0)


class FlowHead(nn.Module):
    """What the flow detector learns: per-stage feature standardisation and one flow per stage."""

    def __init__(
        self, channels: list[int], steps: int = 4, hidden_ratio: float = 1.0, clamp: float = 2.0
    ) -> None:
        super().__init__()
        self.hparams = {
            "channels": list(channels),
            "steps": steps,
            "hidden_ratio": hidden_ratio,
            "clamp": clamp,
        }
        self.flows = nn.ModuleList(FeatureFlow(c, steps, hidden_ratio, clamp) for c in channels)
        for i, c in enumerate(channels):
            self.register_buffer(f"mean{i}", torch.zeros(1, c, 1, 1))
            self.register_buffer(f"std{i}", torch.ones(1, c, 1, 1))

    def set_statistics(self, features: list[torch.Tensor]) -> None:
        """Per-channel mean and std of raw training features, one [N, C, h, w] tensor per stage."""
        for i, f in enumerate(features):
            mean = f.mean(dim=(0, 2, 3), keepdim=True)
            std = f.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
            getattr(self, f"mean{i}").copy_(mean)
            getattr(self, f"std{i}").copy_(std)

    def normalise(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Standardise raw features per channel (on the features' device)."""
        return [
            (f - getattr(self, f"mean{i}").to(f.device)) / getattr(self, f"std{i}").to(f.device)
            for i, f in enumerate(features)
        ]

    def forward(self, features: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Standardised features, one per stage -> (z, log|det J| per position), one per stage."""
        return [flow(f) for flow, f in zip(self.flows, features)]


class _FeatureCache(Dataset):
    """Cached features, one flat vector per image under "image": what `fit_loop` feeds `step`."""

    def __init__(self, features: list[torch.Tensor]) -> None:
        self.flat = torch.cat([f.flatten(1) for f in features], dim=1)

    def __len__(self) -> int:
        return len(self.flat)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.flat[i]}


@register("flow")
class FlowDetector(Detector):
    """FastFlow-style detector: frozen backbone features, one trained 2-D flow per stage.

    Args:
        config: the run's `Config` (reads size, channels, backbone, layers, feature_pad, epochs,
            batch_size, lr, weight_decay, patience, seed, smooth_sigma, score_topk,
            score_border).
        steps: coupling blocks per flow.
        hidden_ratio: hidden channels of the coupling sub-networks, as a multiple of C.
        clamp: bound of the coupling log-scales.
        backbone: an `nn.Module` mapping images [B, C, H, W] in [0, 1] to a list of feature maps;
            by default `anomaly.features.build_backbone(config.backbone)` (EfficientNet-Lite0:
            blocks 4 and 10, 40 channels at stride 8 and 112 at stride 16).
    """

    # 10 epochs: image AUROC flattens halfway on the cookie benchmark; colour helps; 160 px: the
    # smallest size that ranks the cookies as well as larger ones (docs/measurements.md)
    def __init__(
        self,
        config,
        steps: int = 4,
        hidden_ratio: float = 1.0,
        clamp: float = 2.0,
        backbone: nn.Module | None = None,
    ) -> None:
        super().__init__(config)
        if backbone is None:
            backbone = build_backbone(config.backbone, layers=parse_layers(config.layers) or None)
        self.backbone = backbone.eval().requires_grad_(False)
        self.pad = 0  # mirrored padding of the images (anomaly.features.padded_maps)
        if config.feature_pad and hasattr(backbone, "stride"):
            self.pad = whole_cells(config.feature_pad, list(backbone.stride))
        channels = getattr(backbone, "out_channels", None)
        if channels is None:
            with torch.no_grad():
                channels = [f.shape[1] for f in backbone(torch.zeros(1, config.channels, 64, 64))]
        with torch.random.fork_rng(devices=[]):  # seeded weights, global RNG left untouched
            torch.manual_seed(config.seed)
            self.head = FlowHead(list(channels), steps, hidden_ratio, clamp)
        self._shapes: list[tuple[int, int, int]] | None = None

    def modules(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone, "head": self.head}

    @torch.no_grad()
    def raw_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The frozen backbone's feature maps of images [B, C, H, W] in [0, 1]."""
        self.backbone.eval()
        return [f.float() for f in padded_maps(self.backbone, images, self.pad)]

    def _cache(self, data, progress: bool) -> list[torch.Tensor]:
        from tqdm.auto import tqdm

        stages: list[list[torch.Tensor]] = []
        for batch in tqdm(self.loader(data), desc="features", disable=not progress, leave=False):
            feats = self.raw_features(batch["image"].to(self.device))
            stages = stages or [[] for _ in feats]
            for store, f in zip(stages, feats):
                store.append(f.cpu())
        if not stages:
            raise ValueError("fit() got an empty data set: there are no images to learn from")
        return [torch.cat(s) for s in stages]

    def step(self, packed: torch.Tensor) -> torch.Tensor:
        """Mean NLL per dimension of a batch of cached, standardised features (flat vectors)."""
        sizes = [math.prod(s) for s in self._shapes]
        feats = [f.reshape(-1, *s) for f, s in zip(packed.split(sizes, dim=1), self._shapes)]
        return torch.stack([flow_nll_map(z, ld).mean() for z, ld in self.head(feats)]).mean()

    def fit(
        self,
        train_data,
        val_data=None,
        *,
        progress: bool = True,
        resume: bool = False,
        checkpoints=None,
    ):
        """Compute the backbone features once, then train the flows on them (`train_steps`)."""
        train = self._cache(train_data, progress)
        self.head.set_statistics(train)
        self._shapes = [tuple(f.shape[1:]) for f in train]
        val = None
        if val_data is not None and len(val_data):
            val = _FeatureCache(self.head.normalise(self._cache(val_data, progress)))
        return self.train_steps(
            _FeatureCache(self.head.normalise(train)),
            val,
            checkpoints=checkpoints,
            resume=resume,
            progress=progress,
        )

    @torch.no_grad()
    def stage_outputs(self, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(z, log|det J| per position) of each stage's flow, for images [B, C, H, W] in [0, 1]."""
        self.head.eval()
        return self.head(self.head.normalise(self.raw_features(images)))

    @torch.no_grad()
    def predict_batch(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = flow_anomaly_map(self.stage_outputs(images), images.shape[-2:])
        maps = gaussian_blur(maps, self.config.smooth_sigma)
        return image_score(maps, self.config.score_topk, self.config.score_border), maps

    def state_dict(self) -> dict:
        head = {"hparams": dict(self.head.hparams), "head": self.head.state_dict()}
        return {**head, "encoder_sha256": self.encoder_sha256}  # encoder:RUN: which model of it

    def load_state_dict(self, state: dict) -> None:
        if state["hparams"] != self.head.hparams:
            raise ValueError(
                f"this flow checkpoint was made for flows {state['hparams']}, but the "
                f"detector has {self.head.hparams}; build it with the same settings"
            )
        self.head.load_state_dict(state["head"])
