"""`anomaly.synthetic.alter`: quiet local defects for `auto` (blur, tint, faint overlay)."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from anomaly.synthetic import ALTERATIONS, MIN_VISIBLE, alter, local_mask


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _textured(n: int = 6, size: int = 64, channels: int = 3) -> torch.Tensor:
    torch.manual_seed(0)
    coarse = torch.rand(n, channels, size // 4, size // 4)
    fine = torch.rand(n, channels, size, size)
    up = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")
    return (0.6 * up + 0.4 * fine).clamp(0, 1)


def test_same_generator_same_defects():
    x = _textured()
    a, ma = alter(x, _gen(3))
    b, mb = alter(x, _gen(3))
    c, _ = alter(x, _gen(4))
    assert torch.equal(a, b) and torch.equal(ma, mb)
    assert not torch.equal(a, c)


def test_each_kind_changes_its_region_only():
    x = _textured()
    out, masks = alter(x, _gen(0))
    assert out.shape == x.shape and masks.shape == (6, 64, 64)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    for i in range(len(x)):
        mask = masks[i].numpy() > 0
        assert mask.any(), f"image {i} ({ALTERATIONS[i % 3]}) got no visible defect"
        assert 0.002 < mask.mean() < 0.25  # one small region, not the whole image
        change = (out[i] - x[i]).abs().amax(0).numpy()
        assert change[mask].mean() >= MIN_VISIBLE
        far = ~ndimage.binary_dilation(mask, iterations=4)
        assert change[far].max() == 0, "pixels away from the region changed"


def test_invisible_alterations_are_dropped():
    flat = torch.full((3, 1, 48, 48), 0.5)  # a blur of a flat image changes nothing
    out, masks = alter(flat, _gen(1), kinds=("blur",))
    assert torch.equal(out, flat) and masks.sum() == 0


def test_greyscale_images_and_unknown_kinds():
    x = _textured(channels=1)
    out, masks = alter(x, _gen(2), kinds=("shift",))
    assert out.shape == x.shape and (masks.flatten(1).amax(1) > 0).all()
    with pytest.raises(ValueError, match="unknown alteration"):
        alter(x, _gen(2), kinds=("melt",))


def test_local_masks_are_soft_small_and_inside():
    m = local_mask(20, (80, 80), _gen(5))
    assert m.shape == (20, 80, 80) and float(m.min()) >= 0 and float(m.max()) <= 1
    area = (m >= 0.5).float().mean((1, 2)).numpy()
    assert (area > 0).all() and (area < 0.3).all()
    assert len(np.unique(np.round(area, 3))) > 10  # sizes vary
