"""Pixel metrics at one size for every method: maps and masks brought to `EVAL_SIZE` first.

Each method predicts at its own size (`ae` and `unet` 128 px, `flow` 160, `patchknn` 224,
`auto` 448), and a mask resized to each of them is another ground truth: nearest neighbour
breaks a thin defect into pieces at one size and not at another, and AUPRO weighs every piece as
a region of its own. Scored that way, the benchmark's AUPRO moved by up to 0.23 between a
method's own size and the masks' 256 px (meandiff on retina, 0.660 against 0.888; session 31,
docs/measurements.md), so rows of one table were not comparable. So `score`, the benchmark and
the train-size curve compute pixel AUROC and AUPRO at `EVAL_SIZE` x `EVAL_SIZE` for every method:
each map resized bilinearly (antialiased when shrunk), each mask read again from its file and
resized by nearest neighbour, a defect that this would erase kept on the pixels it touches
(`anomaly.data.masks.mask_tensor`). 256 px is the size of most masks here (the cookies' and the
photo suite's; nearest neighbour repeats the pixels of smaller ones) and anomalib's default
image size. MVTec AD's own evaluation scores maps at each image's full size; a mask larger than
256 px loses detail here, alike for every method.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from anomaly.data.masks import mask_tensor, read_mask

EVAL_SIZE = 256


def maps_at(maps: np.ndarray, size: int = EVAL_SIZE) -> np.ndarray:
    """Maps [N, H, W] resized to [N, size, size]: bilinear, antialiased when shrunk."""
    x = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[:, None]
    if x.shape[-2:] == (size, size):
        return x[:, 0].numpy()
    shrink = x.shape[-1] > size or x.shape[-2] > size
    out = F.interpolate(
        x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink
    )
    return out[:, 0].numpy()


def masks_at(mask_paths, size: int = EVAL_SIZE) -> np.ndarray:
    """uint8 {0, 1} [N, size, size] masks read from `mask_paths` (None: no mask file, all 0)."""
    masks = np.zeros((len(mask_paths), size, size), np.uint8)
    for i, path in enumerate(mask_paths):
        if path is not None:
            # `load_mask` without its path: its warning names the run's --size, which this is not
            masks[i] = mask_tensor(read_mask(path), size).numpy()
    return masks


def at_eval_size(pred, mask_paths):
    """`pred` (a `Predictions`) as its pixel metrics are computed: maps and masks at
    `EVAL_SIZE`, the masks read again from `mask_paths` (one per image, in its order; None for a
    good image or a defect without a mask file). `pred` itself when it carries no masks."""
    if not pred.has_masks:
        return pred
    if len(mask_paths) != len(pred):
        raise ValueError(f"{len(mask_paths)} mask paths for {len(pred)} predictions")
    return dataclasses.replace(pred, maps=maps_at(pred.maps), masks=masks_at(mask_paths))
