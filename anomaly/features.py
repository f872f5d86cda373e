"""PatchCore-style patch features from a pretrained backbone, offline.

A backbone (`anomaly.backbones`, whose names this module re-exports) maps images [B, C, H, W] in
[0, 1] to a list of feature maps (finest first), with `out_channels` and `stride` lists describing
them. `FeatureExtractor` turns those maps into one patch-feature map the way PatchCore does (Roth
et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022): average each map over a
3x3 neighbourhood, upsample the deeper map to the finer one's grid, concatenate, and optionally
average groups of channels to bound the dimension. The backbones, by name, are listed in
`anomaly.backbones` (`build_backbone`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# the backbones were first defined here: their names stay importable from anomaly.features
from anomaly.backbones import (
    DEFAULT_LAYERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LITE0_STAGE_ENDS,
    MOBILENET_FILE,
    MOBILENET_INSTALL,
    MOBILENET_PACKAGE,
    MOBILENET_STAGE_ENDS,
    TORCHVISION_WEIGHTS,
    Backbone,
    EfficientNetLite0,
    EncoderBackbone,
    MobileNetV2,
    TorchvisionResNet,
    build_backbone,
    fold_batch_norms,
    mobilenet_v2_weights,
    parse_layers,
    torchvision_weights,
)

__all__ = [  # this module's names and the backbones' (re-exported)
    "DEFAULT_LAYERS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LITE0_STAGE_ENDS",
    "MOBILENET_FILE",
    "MOBILENET_INSTALL",
    "MOBILENET_PACKAGE",
    "MOBILENET_STAGE_ENDS",
    "TORCHVISION_WEIGHTS",
    "Backbone",
    "EfficientNetLite0",
    "EncoderBackbone",
    "FeatureExtractor",
    "MobileNetV2",
    "TorchvisionResNet",
    "build_backbone",
    "fit_whitening",
    "fold_batch_norms",
    "local_patch_features",
    "mobilenet_v2_weights",
    "padded_maps",
    "parse_layers",
    "torchvision_weights",
    "whole_cells",
]


def padded_maps(backbone: nn.Module, x: torch.Tensor, pad: int) -> list[torch.Tensor]:
    """The backbone's maps of images x mirrored outwards by `pad` pixels, cropped back to the
    image's own cells (pad must be a multiple of every stride in `backbone.stride`)."""
    if pad <= 0:
        return list(backbone(x))
    if pad >= min(x.shape[-2:]):
        raise ValueError(
            f"images of {tuple(int(v) for v in x.shape[-2:])} px are too small for feature "
            f"padding {pad}: use larger images or less padding"
        )
    maps = backbone(F.pad(x, (pad, pad, pad, pad), mode="reflect"))
    return [
        m[..., pad // s : m.shape[-2] - pad // s, pad // s : m.shape[-1] - pad // s]
        for m, s in zip(maps, backbone.stride)
    ]


def whole_cells(pad: int, strides: list[int]) -> int:
    """`pad` rounded up to a multiple of every stride, so whole cells can be cropped off."""
    if pad < 0:
        raise ValueError(f"feature padding must be >= 0 pixels, got {pad}")
    step = math.lcm(*strides)
    return math.ceil(pad / step) * step


def local_patch_features(maps: list[torch.Tensor], pool: int = 3) -> torch.Tensor:
    """PatchCore's locally aware patch features of feature maps (finest first): each averaged
    over a `pool` x `pool` neighbourhood (stride 1), the coarser ones upsampled bilinearly to the
    finest map's grid, all concatenated along the channels."""
    size = maps[0].shape[-2:]
    out = []
    for m in maps:
        if pool > 1:
            m = F.avg_pool2d(m, pool, 1, pool // 2, count_include_pad=False)
        if m.shape[-2:] != size:
            m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
        out.append(m)
    return torch.cat(out, 1)


def fit_whitening(
    feats: torch.Tensor, shrink: float, seed: int = 0, max_rows: int = 50_000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [D] and matrix W [D, D] that whiten patch features [N, D]: (f - mean) @ W has unit
    covariance along every principal direction of the training patches, after each eigenvalue
    is raised by `shrink` times their mean (so near-constant directions are not blown up into
    noise). Distances between whitened features are Mahalanobis distances under the shrunk
    covariance: a change along a direction normal patches barely vary in (a faint stain, a
    shift of colour) counts as much as a large one along a direction they vary a lot in.

    The covariance is estimated from at most `max_rows` rows, drawn with `seed`.
    """
    if shrink <= 0:
        raise ValueError(f"whitening needs a shrinkage > 0, got {shrink}")
    gen = torch.Generator().manual_seed(int(seed))
    rows = feats
    if len(feats) > max_rows:
        rows = feats[torch.randperm(len(feats), generator=gen)[:max_rows].to(feats.device)]
    rows = rows.double()
    mean = rows.mean(0)
    centred = rows - mean
    cov = centred.T @ centred / max(1, len(rows) - 1)
    eigenvalues, vectors = torch.linalg.eigh(cov)
    eigenvalues = eigenvalues.clamp(min=0)
    floor = shrink * eigenvalues.mean().clamp(min=1e-12)
    matrix = vectors / (eigenvalues + floor).sqrt()
    return mean.float(), matrix.float()


class FeatureExtractor(nn.Module):
    """PatchCore's locally aware patch features from a backbone's maps.

    Each map is averaged over a `pool` x `pool` neighbourhood (stride 1), the coarser maps are
    upsampled bilinearly to the finest map's grid, and all are concatenated. When the result has
    more than `max_dim` channels, each layer is averaged down to an equal share of `max_dim`
    (PatchCore's adaptive average pooling over channels, which is deterministic and keeps each
    layer's weight equal).

    `set_whitening(mean, matrix)` adds a last, fitted linear step: (feature - mean) @ matrix
    (`fit_whitening`), as a 1x1 convolution, so exports and other runtimes include it.

    With `pad` > 0 the image is first mirrored outwards by `pad` pixels (rounded up to a multiple
    of every stage's stride), and the padded cells are cropped off the result: a patch on the
    image's edge then sees mirrored image around it instead of the backbone's zero padding,
    which made edge patches of normal images look anomalous.

    Output: [B, dim, H / stride, W / stride] with `dim`, `stride` and `pad` attributes.
    """

    def __init__(
        self, backbone: Backbone, pool: int = 3, max_dim: int = 1024, pad: int = 0
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.pool = pool
        self.stride = backbone.stride[0]
        self.pad = whole_cells(pad, backbone.stride)
        total = sum(backbone.out_channels)
        self.reduce = total > max_dim
        if self.reduce:
            share = max_dim // len(backbone.out_channels)
            for i, c in enumerate(backbone.out_channels):  # [share, c, 1, 1] channel-averaging
                eye = torch.eye(c).unsqueeze(0)
                weight = F.adaptive_avg_pool1d(eye, share)[0].T.reshape(share, c, 1, 1)
                self.register_buffer(f"reduce{i}", weight.contiguous(), persistent=False)
            self.dim = share * len(backbone.out_channels)
        else:
            self.dim = total
        self.whitening: tuple[torch.Tensor, torch.Tensor] | None = None  # (mean, matrix)
        self._whiten_conv: tuple[torch.Tensor, torch.Tensor] | None = None  # (weight, bias)

    def set_whitening(self, mean: torch.Tensor | None, matrix: torch.Tensor | None) -> None:
        """Whiten the output with `fit_whitening`'s mean [dim] and matrix [dim, dim]; None = off.
        `whitening` keeps them (on the CPU) for saving."""
        if mean is None or matrix is None:
            self.whitening = self._whiten_conv = None
            return
        if tuple(matrix.shape) != (self.dim, self.dim) or tuple(mean.shape) != (self.dim,):
            raise ValueError(
                f"whitening of shape {tuple(mean.shape)}, {tuple(matrix.shape)} does not fit "
                f"features of {self.dim} dimensions"
            )
        weight = matrix.T.contiguous().float()  # out x in
        self.whitening = (mean.cpu(), matrix.cpu())
        self._whiten_conv = (weight.view(self.dim, self.dim, 1, 1), -(weight @ mean.float()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pad
        if p > 0:  # mirror the image outwards, so that no feature of it sees zero padding
            if p >= min(x.shape[-2:]):
                raise ValueError(
                    f"images of {tuple(int(v) for v in x.shape[-2:])} px are too small for feature "
                    f"padding {p}: use larger images or less padding"
                )
            x = F.pad(x, (p, p, p, p), mode="reflect")
        maps = self.backbone(x)
        if self.reduce:
            maps = [F.conv2d(m, getattr(self, f"reduce{i}")) for i, m in enumerate(maps)]
        out = local_patch_features(maps, self.pool)
        if p > 0:  # back to the image's own cells
            c = p // self.stride
            out = out[..., c : out.shape[-2] - c, c : out.shape[-1] - c]
        if self._whiten_conv is not None:
            weight, bias = self._whiten_conv
            out = F.conv2d(out, weight.to(out.device), bias.to(out.device))
        return out
