"""Convolutional autoencoder with a real bottleneck (no skip connections).

The classic reconstruction baseline for visual anomaly detection: train on defect-free images only,
and a defect, never seen, is reconstructed badly. See Bergmann et al., "Improving Unsupervised
Defect Segmentation by Applying Structural Similarity to Autoencoders", VISAPP 2019, for the
convolutional autoencoder used on MVTec AD. Each encoder level halves the size with a strided 4x4
convolution followed by a 3x3 convolution; a 1x1 convolution then maps to `latent` channels at
H / 2**depth (e.g. [64, 8, 8] for a 128 px image). The decoder mirrors it with transposed
convolutions. `Encoder` and `Decoder` are shared with the VAE in `vae.py`.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, transpose: bool = False):
    """Convolution (size-keeping for 3x3, halving/doubling for 4x4 stride 2) + BN + LeakyReLU."""
    conv = nn.ConvTranspose2d if transpose else nn.Conv2d
    pad = (kernel - 1) // 2 if stride == 1 else 1
    return nn.Sequential(
        conv(c_in, c_out, kernel, stride=stride, padding=pad, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2, inplace=True),
    )


def level_channels(width: int, depth: int) -> list[int]:
    """Channels of the encoder levels: width, 2 width, 4 width, 8 width, 8 width, ..."""
    return [width * 2 ** min(i, 3) for i in range(depth)]


class Encoder(nn.Module):
    """[B, C, H, W] -> [B, out_channels, H / 2**depth, W / 2**depth] (linear last layer)."""

    def __init__(self, in_channels: int, width: int, out_channels: int, depth: int) -> None:
        super().__init__()
        self.depth = depth
        layers: list[nn.Module] = []
        c_prev = in_channels
        for c in level_channels(width, depth):
            layers += [conv_bn(c_prev, c, 4, stride=2), conv_bn(c, c)]
            c_prev = c
        layers.append(nn.Conv2d(c_prev, out_channels, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = 2**self.depth
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(
                f"depth {self.depth} needs H and W divisible by {f}, got {tuple(x.shape[-2:])}"
            )
        return self.net(x)


class Decoder(nn.Module):
    """[B, latent, h, w] -> [B, out_channels, h * 2**depth, w * 2**depth], sigmoid output."""

    def __init__(self, latent: int, width: int, out_channels: int, depth: int) -> None:
        super().__init__()
        chans = level_channels(width, depth)[::-1]  # deepest first: 8w, 4w, 2w, w
        layers: list[nn.Module] = [conv_bn(latent, chans[0], 1)]
        for c_in, c_out in zip(chans, chans[1:] + chans[-1:]):
            layers += [conv_bn(c_in, c_out, 4, stride=2, transpose=True), conv_bn(c_out, c_out)]
        layers += [nn.Conv2d(chans[-1], out_channels, 3, padding=1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class ConvAE(nn.Module):
    """Bottleneck autoencoder: image [B, C, H, W] in [0, 1] -> reconstruction of the same shape.

    Args:
        in_channels: image channels (1 = grayscale, 3 = RGB); the output has the same number.
        width: channels of the first level; level i has `width * 2**min(i, 3)`.
        latent: channels of the bottleneck, which is [latent, H / 2**depth, W / 2**depth].
        depth: number of halvings; H and W must be divisible by 2**depth (16 for depth 4).
    """

    def __init__(
        self, in_channels: int = 1, width: int = 32, latent: int = 64, depth: int = 4
    ) -> None:
        super().__init__()
        self.hparams = {
            "in_channels": in_channels,
            "width": width,
            "latent": latent,
            "depth": depth,
        }
        self.encoder = Encoder(in_channels, width, latent, depth)
        self.decoder = Decoder(latent, width, in_channels, depth)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The bottleneck code, [B, latent, H / 2**depth, W / 2**depth]."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Same as `encode`: the features a clustering or k-NN scorer reads."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
