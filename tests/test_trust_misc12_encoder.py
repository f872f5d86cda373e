"""An encoder given through the API is checked by the first layer its forward calls."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from anomaly.backbones import build_backbone


class _OutOfOrder(nn.Module):
    """Registers its second layer first, as a module built by hand may."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.head = nn.Conv2d(16, 8, 1)  # registered first, called second
        self.stem = nn.Conv2d(channels, 16, 3, stride=2, padding=1)

    def forward_features(self, x):
        return self.head(torch.relu(self.stem(x)))


def test_channels_are_read_from_the_layer_called_first_not_registered_first():
    """The check read the first submodule with in_channels in registration order, so this
    1-channel encoder was refused as taking 16 channels ("use --channels 16")."""
    backbone = build_backbone("encoder:mine", in_channels=1, module=_OutOfOrder(1))
    assert backbone.out_channels == [8] and backbone.stride == [2]
    with pytest.raises(ValueError, match="takes only 3-channel images.*use --channels 3$"):
        build_backbone("encoder:mine", in_channels=1, module=_OutOfOrder(3))
    module = _OutOfOrder(1)
    build_backbone("encoder:mine", in_channels=1, module=module)
    assert not module.stem._forward_pre_hooks  # the hooks of the check are gone
