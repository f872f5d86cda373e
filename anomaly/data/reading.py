"""Reading one image file as the models see it: decoded to float32 in [0, 1] (`read_image`,
`image_to_array`), then to the model's channels and size (`image_tensor`); `load_image` does
both. `anomaly.data.folder` re-exports them, where they used to live."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anomaly.data.files import DataError
from anomaly.data.image_kind import draft_size, open_image
from anomaly.data.input_checks import check_value_range
from anomaly.onnx_predict import resize_channels

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601-2, as PIL's convert("L")


def image_to_array(im: Image.Image) -> np.ndarray:
    """Convert any PIL image to float32 [H, W, 1 or 3] in [0, 1].

    8-bit modes are divided by 255, 16-bit modes (`I;16*`, and `I` as older Pillow opens 16-bit
    PNGs) by 65535, float images (`F`) are clipped. Transparent images are composited on white.
    """
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im, dtype=np.float32) / 65535.0
        return np.clip(a, 0.0, 1.0)[..., None]
    if mode == "F":
        return np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)[..., None]
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "1":
        im = im.convert("L")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBa, La, ...
    a = np.asarray(im, dtype=np.float32) / 255.0
    if a.ndim == 2:
        a = a[..., None]
    if im.mode in ("LA", "RGBA"):  # composite on white
        color, alpha = a[..., :-1], a[..., -1:]
        a = color * alpha + (1.0 - alpha)
    return a


def load_image(path: str | Path, size: int | None = 256, channels=3, decode="full") -> torch.Tensor:
    """Read one image as a float32 tensor [channels, size, size] in [0, 1]: `channels` 1
    (grayscale, luma weights as PIL's "L") or 3 (RGB), resized by Pillow's bilinear filter to
    size x size (widened when shrinking; the aspect ratio not kept; `size=None`: the file's own;
    exactly as an exported run's file says, `anomaly.onnx_predict.resize_channels`), a large
    JPEG decoded at a reduced scale first with `decode` "draft" (`draft_size`); `DataError`
    naming an unreadable file."""
    try:
        return image_tensor(read_image(path, draft_size(decode, size)), size, channels)
    except MemoryError:  # resizing it
        raise out_of_memory(path) from None


def out_of_memory(path) -> DataError:
    """The error of an image whose decoding or resizing ran out of memory: named (a traceback
    from numpy stopped the whole command, or train blamed --size), with the fix."""
    return DataError(
        f"{path}: ran out of memory reading this image (too large for the memory left); shrink "
        "it, for example to 4000 pixels on its longer side, or free memory"
    )


def read_image(path: str | Path, draft: int | None = None) -> np.ndarray:
    """Decode one image file to float32 [H, W, 1 or 3] in [0, 1] (`DataError` naming the file
    when it cannot be read; `draft`: `open_image`'s); `image_tensor` makes the model's input."""
    try:
        with open_image(path, draft) as im:
            check_value_range(path, im)  # float / 32-bit images out of range: named, or refused
            return image_to_array(im)
    except MemoryError:
        raise out_of_memory(path) from None


def image_tensor(a: np.ndarray, size: int | None, channels: int) -> torch.Tensor:
    """`load_image`'s conversion of a decoded image `a` [H, W, 1 or 3]: to `channels`, resized to
    `size` (None: its own), as float32 [channels, H, W] in [0, 1]. One decode can serve two sizes
    (`predict` needs the model's size and the file's own, for the overlay)."""
    if channels == 1 and a.shape[-1] == 3:
        a = (a @ _LUMA)[..., None]
    elif channels == 3 and a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    if size is not None:  # as an exported run's file says (`anomaly.onnx_predict`), exactly
        a = resize_channels(a, size)
    x = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32))
    return x.clamp_(0.0, 1.0)
