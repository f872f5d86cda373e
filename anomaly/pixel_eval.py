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
256 px loses detail here, alike for every method. `score --pixel-size full` scores as MVTec AD
does (every map brought to its masks' own size, which must be one size for the whole test set),
`--pixel-size N` at N x N; `metrics.json` records which (`pixel_metrics_size`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from anomaly.data.image_kind import displayed_size
from anomaly.data.masks import MASK_READING, mask_files, mask_tensor, read_mask
from anomaly.safe_files import RunError, available_memory, is_out_of_memory, memory_words

EVAL_SIZE = 256
FULL = "full"  # `--pixel-size full`: the masks' own size, as MVTec AD's evaluation
SIZE_RANGE = (16, 8192)  # a side in pixels that `--pixel-size N` accepts
# the peak memory of the pixel metrics per pixel of every map: 22-30 bytes measured for the whole
# command (10 maps at 2048 and 4096 px), 33-38.5 for `evaluate` alone with other mixes of
# kinds (a review) plus 5 for the maps and masks themselves: the copies for the known masks,
# the sorted normal pixels and their merges; with a margin
BYTES_PER_PIXEL = 48


def parse_pixel_size(text: str) -> int | str:
    """`--pixel-size`'s value: `FULL`, or a side in pixels within `SIZE_RANGE`."""
    if text.strip().lower() == FULL:
        return FULL
    size = int(text) if text.strip().isdecimal() and text.strip().isascii() else None  # not 5_12
    if size is None or not SIZE_RANGE[0] <= size <= SIZE_RANGE[1]:
        raise ValueError(
            f"--pixel-size {text!r}: give a side in pixels from {SIZE_RANGE[0]} to "
            f"{SIZE_RANGE[1]} (default {EVAL_SIZE}), or {FULL} for the masks' own size"
        )
    return size


def _pair(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def maps_at(maps: np.ndarray, size: int | tuple[int, int] = EVAL_SIZE) -> np.ndarray:
    """Maps [N, H, W] resized to [N, size, size] (or [N, h, w] for `size` (h, w)): bilinear,
    antialiased when shrunk."""
    h, w = _pair(size)
    x = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[:, None]
    if x.shape[-2:] == (h, w):
        return x[:, 0].numpy()
    shrink = x.shape[-2] > h or x.shape[-1] > w
    out = np.empty((len(x), h, w), np.float32)
    for i in range(0, len(x), 16):  # a few at a time: no second float32 copy of every map
        part = F.interpolate(
            x[i : i + 16], size=(h, w), mode="bilinear", align_corners=False, antialias=shrink
        )
        out[i : i + 16] = part[:, 0].numpy()
    return out


def masks_at(mask_paths, size: int | tuple[int, int] = EVAL_SIZE) -> np.ndarray:
    """uint8 {0, 1} [N, size, size] (or [N, h, w]) masks read from `mask_paths` (None: no mask
    file, all 0)."""
    h, w = _pair(size)
    masks = np.zeros((len(mask_paths), h, w), np.uint8)
    for i, path in enumerate(mask_paths):
        if path is not None:
            a = read_mask(path)
            if a.shape == (h, w):
                masks[i] = a
            elif h == w:
                # `load_mask` without its path: its warning names the run's --size, not this
                masks[i] = mask_tensor(a, h).numpy()
            else:  # only `full_size`'s (h, w), which every mask has: a mask changed meanwhile
                raise ValueError(f"{path}: its mask is {a.shape[1]}x{a.shape[0]}, not {w}x{h}")
    return masks


def full_size(mask_paths, image_paths=()) -> tuple[int, int] | None:
    """The one (height, width) of the mask files in `mask_paths` (None entries skipped) and of
    the images in `image_paths` (as viewers show them), read from their headers; None when there
    is no mask file (no pixel metrics to compute). ValueError naming two files when they differ
    in size: MVTec AD's evaluation compares each map with its mask at the image's size, and one
    array of maps holds one size, so a good image of another size would be scored at the masks'
    size without a word."""
    if not any(p is not None for p in mask_paths):
        return None
    first = None
    for path in [*mask_paths, *image_paths]:
        if path is None:
            continue
        path = mask_files(path)[0]  # a folder of one image's masks: its first, all one size
        with Image.open(path) as im:  # the header only; the files were read as the data set
            w, h = displayed_size(im)
        if first is None:
            first = (path, (h, w))
        elif (h, w) != first[1]:
            raise ValueError(
                f"--pixel-size {FULL} needs one size for the whole test set's images and masks, "
                f"but {first[0]} is {first[1][1]}x{first[1][0]} and {path} is {w}x{h}: give a "
                "size instead (--pixel-size 512 scores every map and mask at 512 x 512), or "
                "score each size's images apart"
            )
    return first[1]


def check_memory(
    n: int, hw: tuple[int, int], available: int | None, maps: int | None = None
) -> None:
    """ValueError when the pixel metrics of `n` maps at `hw` need more memory than `available`
    bytes (None: unknown, not checked); `maps`: the maps' own side, a size to suggest where
    `hw` enlarges them (64 px crops at the default 256: 16 times the pixels)."""
    need = n * hw[0] * hw[1] * BYTES_PER_PIXEL
    if available is not None and need > available:
        usual = n * EVAL_SIZE**2 * BYTES_PER_PIXEL
        own = n * maps**2 * BYTES_PER_PIXEL if maps else need
        fix = (
            f"give a smaller --pixel-size (the default {EVAL_SIZE} needs {memory_words(usual)})"
            if usual <= available and hw[0] * hw[1] > EVAL_SIZE**2
            else f"give --pixel-size {maps}, the maps' own size (it needs {memory_words(own)}), "
            f"or {FULL} (the masks'), or score the test images in smaller sets"
            if own <= available and maps**2 < hw[0] * hw[1]
            else "free memory, or score the test images in smaller sets"
        )
        raise ValueError(
            f"pixel metrics of {n} images at {hw[1]}x{hw[0]} need about {memory_words(need)} of "
            f"memory, and {memory_words(available)} is available: {fix}"
        )


def ran_out_of_memory(err: Exception, pixel_size: int | str) -> RunError | None:
    """The error, with the fix, for pixel metrics at `pixel_size` that failed with `err` for
    want of memory though `check_memory` let them start (a limit MemAvailable does not show);
    None when `err` is another error."""
    if not is_out_of_memory(err):
        return None
    smaller = pixel_size == FULL or pixel_size > EVAL_SIZE
    fix = (
        f"give a smaller --pixel-size (the default is {EVAL_SIZE})"
        if smaller
        else "free memory, or score the test images in smaller sets"
    )
    return RunError(
        f"the pixel metrics at --pixel-size {pixel_size} ran out of memory (a limit of the "
        f"process or container?), so no scores were written: {fix}"
    )


# how masks are read (`anomaly.data.masks`), recorded in metrics.json: 2 since 2026-12-05, when
# a soft-edged grey mask stopped counting every non-zero pixel as defect (its AUPRO moved)
MASK_READING_KEY = "mask_reading"


def at_eval_size(pred, mask_paths, size: int | str = EVAL_SIZE):
    """`pred` (a `Predictions`) as its pixel metrics are computed: maps and masks at `size` x
    `size` (`FULL`: the mask files' own size, `full_size`), the masks read again from
    `mask_paths` (one per image, in its order; None for a good image or a defect without a mask
    file). `pred` itself when it carries no masks. `pred.meta["pixel_metrics_size"]` says the
    size: an int, or [height, width] for `FULL`."""
    if not pred.has_masks:
        return pred
    if len(mask_paths) != len(pred):
        raise ValueError(f"{len(mask_paths)} mask paths for {len(pred)} predictions")
    size = parse_pixel_size(str(size))  # "512" from the API is 512, never 5 x 1
    if size == FULL:
        hw = full_size(mask_paths) or _pair(EVAL_SIZE)
        said = [hw[0], hw[1]]
    else:
        hw, said = _pair(size), size
    check_memory(len(pred), hw, available_memory(), maps=pred.maps.shape[-1])
    out = dataclasses.replace(pred, maps=maps_at(pred.maps, hw), masks=masks_at(mask_paths, hw))
    out.meta = {**pred.meta, "pixel_metrics_size": said, MASK_READING_KEY: MASK_READING}
    return out
