"""A 2-D normalizing flow on feature maps: affine coupling blocks, written out by hand.

FastFlow (Yu et al., "FastFlow: Unsupervised Anomaly Detection and Localization via 2D
Normalizing Flows", 2021) maps the feature map of a frozen backbone, position by position, to a
standard normal with a stack of affine coupling blocks whose sub-networks are small convolutions
(alternating 3x3 and 1x1), so the density of a feature also sees its neighbours. CFlow-AD
(Gudovskiy et al., "CFLOW-AD: Real-Time Unsupervised Anomaly Detection with Localization via
Conditional Normalizing Flows", WACV 2022) scores positions by the same per-position likelihood.

One `FlowBlock` is what FrEIA's `AllInOneBlock` does in FastFlow's configuration:

    x = [x1, x2]                      split the channels in two halves
    (s, t) = subnet(x1)               conv k x k -> ReLU -> conv k x k, k = 3 or 1
    s = clamp * tanh(s / clamp)       soft clamp: |s| < clamp keeps exp(s) finite
    y = [x1, x2 * exp(s) + t]         affine coupling, log|det J| = sum(s)
    y = y * exp(a) + b                a learned per-channel scale and shift, log|det| = H W sum(a)
    y = y[:, perm]                    a fixed random channel permutation, log|det| = 0

The last convolution of every sub-network starts at zero, so an untrained flow is the identity
(Kingma and Dhariwal, "Glow", 2018). `FeatureFlow.forward` returns z and the log-determinant
per position; summed over positions it is the exact log|det| of the whole map's Jacobian.
"""

from __future__ import annotations

import torch
from torch import nn


class FlowBlock(nn.Module):
    """One invertible step: affine coupling, per-channel affine, channel permutation.

    Args:
        channels: feature channels C (at least 2).
        hidden: channels of the sub-network's hidden layer.
        kernel_size: 3 or 1, the sub-network's convolutions.
        clamp: bound of the coupling's log-scale (FastFlow uses 2).
        perm_seed: seed of this block's fixed channel permutation.
    """

    def __init__(
        self,
        channels: int,
        hidden: int,
        kernel_size: int = 3,
        clamp: float = 2.0,
        perm_seed: int = 0,
    ) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"a coupling block needs at least 2 channels, got {channels}")
        self.c1, self.c2, self.clamp = channels // 2, channels - channels // 2, clamp
        pad = kernel_size // 2
        self.subnet = nn.Sequential(
            nn.Conv2d(self.c1, hidden, kernel_size, padding=pad),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 2 * self.c2, kernel_size, padding=pad),
        )
        nn.init.zeros_(self.subnet[-1].weight)
        nn.init.zeros_(self.subnet[-1].bias)
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.shift = nn.Parameter(torch.zeros(1, channels, 1, 1))
        perm = torch.randperm(channels, generator=torch.Generator().manual_seed(perm_seed))
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    def _coupling(self, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self.subnet(x1).split(self.c2, dim=1)
        return self.clamp * torch.tanh(s / self.clamp), t

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, C, H, W] -> (y [B, C, H, W], log|det J| per position [B, H, W])."""
        x1, x2 = x.split((self.c1, self.c2), dim=1)
        s, t = self._coupling(x1)
        y = torch.cat((x1, x2 * torch.exp(s) + t), dim=1)
        y = y * torch.exp(self.log_scale) + self.shift
        return y[:, self.perm], s.sum(dim=1) + self.log_scale.sum()

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y = (y[:, self.inv_perm] - self.shift) * torch.exp(-self.log_scale)
        x1, y2 = y.split((self.c1, self.c2), dim=1)
        s, t = self._coupling(x1)
        return torch.cat((x1, (y2 - t) * torch.exp(-s)), dim=1)


class FeatureFlow(nn.Module):
    """A stack of `FlowBlock`s mapping a feature map [B, C, H, W] to z of the same shape.

    Args:
        channels: feature channels C.
        steps: number of blocks (FastFlow: 8 for ResNet-18 features).
        hidden_ratio: hidden channels of each sub-network, as a multiple of C (FastFlow: 1.0).
        clamp: bound of the coupling log-scales.
        conv3x3_only: use 3x3 convolutions in every block, instead of alternating 3x3 and 1x1.
    """

    def __init__(
        self,
        channels: int,
        steps: int = 8,
        hidden_ratio: float = 1.0,
        clamp: float = 2.0,
        conv3x3_only: bool = False,
    ) -> None:
        super().__init__()
        self.hparams = {
            "channels": channels,
            "steps": steps,
            "hidden_ratio": hidden_ratio,
            "clamp": clamp,
            "conv3x3_only": conv3x3_only,
        }
        hidden = max(1, round(channels * hidden_ratio))
        self.blocks = nn.ModuleList(
            FlowBlock(channels, hidden, 3 if conv3x3_only or i % 2 == 0 else 1, clamp, perm_seed=i)
            for i in range(steps)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, C, H, W] -> (z [B, C, H, W], log|det J| per position [B, H, W]).

        `log_det.sum((1, 2))` is the log-determinant of the Jacobian of the whole map x -> z.
        """
        log_det = x.new_zeros(x.shape[0], *x.shape[2:])
        for block in self.blocks:
            x, ld = block(x)
            log_det = log_det + ld
        return x, log_det

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, C, H, W] -> x, the exact inverse of `forward`."""
        for block in reversed(self.blocks):
            z = block.inverse(z)
        return z


__all__ = ["FeatureFlow", "FlowBlock"]
