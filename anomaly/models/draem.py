"""The two networks of DRAEM, sized for a CPU.

Zavrtanik, Kristan and Skočaj, "DRAEM - A Discriminatively Trained Reconstruction Embedding for
Surface Anomaly Detection", ICCV 2021. `ReconstructiveNet` is an encoder-decoder without skip
connections that learns to turn an image with a synthetic anomaly back into the clean image;
`DiscriminativeNet` is a U-Net that reads the concatenation [image, reconstruction] and segments
what differs, as two-class logits. The paper's networks start at 128 and 64 channels and train
for 700 epochs on a GPU; here both start at `width` channels (8 is enough for 128 px images on a
CPU) and normalise after every convolution: BatchNorm as the paper's, or GroupNorm. Training,
the losses and the anomaly map live in `anomaly/detectors/draem.py`.
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn


def norm_layer(kind: str, channels: int) -> nn.Module:
    """Normalisation: "batch" = BatchNorm (the paper's); "group" = GroupNorm of 2-channel groups,
    which acts the same in training and evaluation (no running statistics)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(max(1, channels // 2), channels)
    raise ValueError(f"unknown norm {kind!r}; choose 'batch' or 'group'")


def double_conv(c_in: int, c_out: int, norm: str = "batch") -> nn.Sequential:
    """Two 3x3 convolutions (size kept), each followed by a normalisation and ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        norm_layer(norm, c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        norm_layer(norm, c_out),
        nn.ReLU(inplace=True),
    )


def _check(x: torch.Tensor, depth: int, name: str) -> None:
    f = 2**depth
    if x.shape[-1] % f or x.shape[-2] % f:
        raise ValueError(
            f"{name}(depth={depth}) needs H and W divisible by {f}, got {tuple(x.shape[-2:])}"
        )


def _channels(width: int, depth: int) -> list[int]:
    """width, 2 width, 4 width, 8 width, 8 width, ... for levels 0..depth."""
    return [width * 2 ** min(i, 3) for i in range(depth + 1)]


class ReconstructiveNet(nn.Module):
    """Encoder-decoder (no skips): image [B, C, H, W] -> reconstruction [B, C, H, W] in [0, 1].

    Args:
        in_channels: image channels; the output has the same number.
        width: channels of the full-resolution level; level i has `width * 2**min(i, 3)`.
        depth: number of 2x2 max-poolings; H and W must be divisible by 2**depth. The bottleneck
            is [width * 2**min(depth, 3), H / 2**depth, W / 2**depth].
    """

    def __init__(
        self, in_channels: int = 1, width: int = 16, depth: int = 4, norm: str = "batch"
    ) -> None:
        super().__init__()
        self.hparams = {"in_channels": in_channels, "width": width, "depth": depth, "norm": norm}
        self.depth = depth
        chans = _channels(width, depth)
        enc: list[nn.Module] = [double_conv(in_channels, chans[0], norm)]
        for a, b in pairwise(chans):
            enc += [nn.MaxPool2d(2), double_conv(a, b, norm)]
        dec: list[nn.Module] = []
        for a, b in zip(chans[::-1], chans[-2::-1]):
            dec += [
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                double_conv(a, b, norm),
            ]
        dec += [nn.Conv2d(chans[0], in_channels, 3, padding=1), nn.Sigmoid()]
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check(x, self.depth, "ReconstructiveNet")
        return self.decoder(self.encoder(x))


class DiscriminativeNet(nn.Module):
    """U-Net segmenter: [image, reconstruction] [B, 2C, H, W] -> logits [B, 2, H, W].

    Channel 0 of the logits is "normal", channel 1 "anomaly".

    Args:
        in_channels: input channels, twice the image channels.
        width: channels of the full-resolution level; level i has `width * 2**min(i, 3)`.
        depth: number of 2x2 max-poolings; H and W must be divisible by 2**depth.
    """

    def __init__(
        self, in_channels: int = 2, width: int = 16, depth: int = 4, norm: str = "batch"
    ) -> None:
        super().__init__()
        self.hparams = {"in_channels": in_channels, "width": width, "depth": depth, "norm": norm}
        self.depth = depth
        chans = _channels(width, depth)
        self.down = nn.ModuleList([double_conv(in_channels, chans[0], norm)])
        self.down.extend(double_conv(a, b, norm) for a, b in pairwise(chans))
        self.pool = nn.MaxPool2d(2)
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.up = nn.ModuleList(
            double_conv(deep + skip, skip, norm) for deep, skip in zip(chans[::-1], chans[-2::-1])
        )
        self.head = nn.Conv2d(chans[0], 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check(x, self.depth, "DiscriminativeNet")
        skips = []
        for i, block in enumerate(self.down):
            x = block(self.pool(x) if i else x)
            skips.append(x)
        x = skips.pop()
        for block in self.up:
            x = block(torch.cat([self.upsample(x), skips.pop()], dim=1))
        return self.head(x)
