"""U-Net reconstruction network, as in the original project (usuyama/pytorch-unet).

Ronneberger, Fischer and Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation",
MICCAI 2015. The layout follows usuyama/pytorch-unet's `pytorch_unet.UNet`, which the original
project trained to reconstruct good images: double 3x3 convolutions (conv + ReLU, twice) on four
levels of 64, 128, 256 and 512 channels, 2x2 max-pooling down, bilinear up-sampling, skip
connections by concatenation and a final 1x1 convolution. Here the width and the number of levels
are parameters, the output passes through a sigmoid (images live in [0, 1]; the original's output
was the raw 1x1 convolution, `sigmoid=False`), and `batch_norm=True` adds a BatchNorm after each
convolution (off by default, to stay faithful to the original). At width 64, grayscale, the
network has the original's 7,781,761 parameters.

Because the skip connections carry full-resolution detail straight to the output, a U-Net can learn
something close to the identity and reconstruct defects too; the bottleneck autoencoder in
`autoencoder.py` is the model that really has to compress.
"""

from __future__ import annotations

import torch
from torch import nn


def double_conv(c_in: int, c_out: int, batch_norm: bool = False) -> nn.Sequential:
    """Two 3x3 convolutions (padding 1, size kept), each followed by [BatchNorm and] ReLU."""
    layers: list[nn.Module] = []
    for a, b in ((c_in, c_out), (c_out, c_out)):
        layers.append(nn.Conv2d(a, b, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(b))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """U-Net that maps an image [B, C, H, W] in [0, 1] to a reconstruction of the same shape.

    Args:
        in_channels: image channels (1 = grayscale, 3 = RGB); the output has the same number.
        width: channels of the first level; level i has `width * 2**i` (64 -> 64, 128, 256, 512).
        depth: number of levels (4 as the original); H and W must be divisible by 2**(depth - 1).
        bilinear: up-sample bilinearly (the original); False uses 2x2 transposed convolutions.
        batch_norm: add BatchNorm after every 3x3 convolution (the original had none).
        sigmoid: squash the output into [0, 1]; False returns the raw 1x1 convolution, as the
            original did (recorded in `hparams` only when False, so older checkpoints still load).
    """

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 64,
        depth: int = 4,
        bilinear: bool = True,
        batch_norm: bool = False,
        sigmoid: bool = True,
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"UNet depth must be at least 2, got {depth}")
        self.hparams = {
            "in_channels": in_channels,
            "width": width,
            "depth": depth,
            "bilinear": bilinear,
            "batch_norm": batch_norm,
        }
        if not sigmoid:
            self.hparams["sigmoid"] = False
        self.sigmoid = sigmoid
        chans = [width * 2**i for i in range(depth)]
        self.down = nn.ModuleList()
        c_prev = in_channels
        for c in chans:
            self.down.append(double_conv(c_prev, c, batch_norm))
            c_prev = c
        self.pool = nn.MaxPool2d(2)
        self.upsample = nn.ModuleList()
        self.up = nn.ModuleList()
        for c_deep, c_skip in zip(chans[:0:-1], chans[-2::-1]):
            if bilinear:  # as the original: up-sample, then concatenate all deep channels
                self.upsample.append(
                    nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
                )
                self.up.append(double_conv(c_deep + c_skip, c_skip, batch_norm))
            else:
                self.upsample.append(nn.ConvTranspose2d(c_deep, c_skip, 2, stride=2))
                self.up.append(double_conv(2 * c_skip, c_skip, batch_norm))
        self.head = nn.Conv2d(chans[0], in_channels, 1)

    def _check(self, x: torch.Tensor) -> None:
        f = 2 ** (len(self.down) - 1)
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(
                f"UNet(depth={len(self.down)}) needs H and W divisible by {f}, "
                f"got {tuple(x.shape[-2:])}"
            )

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        self._check(x)
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        return skips

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Deepest feature map, [B, width * 2**(depth-1), H / 2**(depth-1), W / 2**(depth-1)]."""
        return self._encode(x)[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = self._encode(x)
        x = skips.pop()
        for upsample, block in zip(self.upsample, self.up):
            x = block(torch.cat([upsample(x), skips.pop()], dim=1))
        x = self.head(x)
        return torch.sigmoid(x) if self.sigmoid else x
