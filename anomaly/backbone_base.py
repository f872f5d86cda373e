"""The base of the feature backbones (`anomaly.backbones`): what a backbone returns, ImageNet's
normalisation, stage names, and batch norms folded into the convolutions before them."""

from __future__ import annotations

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(nn.Module):
    """Images [B, C, H, W] in [0, 1] -> list of feature maps, finest first.

    Attributes:
        out_channels: channels of each returned map.
        stride: input pixels per feature cell of each returned map.
    """

    out_channels: list[int]
    stride: list[int]

    def __init__(self, imagenet: bool = True) -> None:
        super().__init__()
        self.imagenet = imagenet
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Grayscale -> 3 channels, then ImageNet mean/std (pretrained backbones only)."""
        if not self.imagenet:
            return x
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std


def stage_numbers(layers: tuple[str, ...], prefix: str) -> list[int]:
    """("blocks.4", "blocks.10") -> [4, 10]; [] when a name does not have the form."""
    numbers = []
    for name in layers:
        rest = name.removeprefix(prefix)
        if rest == name or not rest.isdigit():
            return []
        numbers.append(int(rest))
    return sorted(numbers)


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """Fold every batch norm that directly follows a convolution in an `nn.Sequential`, in place."""
    for seq in module.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
                seq[i] = torch.nn.utils.fusion.fuse_conv_bn_eval(seq[i].eval(), seq[i + 1].eval())
                seq[i + 1] = nn.Identity()
    return module
