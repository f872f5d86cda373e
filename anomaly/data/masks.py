"""Defect masks as saved by people and tools: a non-zero pixel is a defect (soft edges aside).

Masks come in many formats besides MVTec AD's 0/255 greyscale PNGs: 0/1 PNGs, palette PNGs
(index 1 = dark red, as label tools save them), red-on-black RGB, 16-bit files holding 0/255,
faint 0/30 masks. Reading them as brightness with a threshold at half the range read all of
those as empty, so their defect pixels were silently counted as normal. Here a pixel is a defect
when its decoded value is non-zero in any channel, for every mode (`mask_array`): the palette's
colour for "P", any colour channel for RGB(A). A grey mask with soft edges (anti-aliased by a
labelling tool, or resized with a smoothing filter: more than 8 values, a bright maximum) is
read as one sees it (`soft_cut`, named in a warning): a pixel is a defect where it is at least
half the brightest within 2 px. `check_defect_mask` makes an empty mask of a defective image an
error, and warns about a mask that marks most of its image (inverted?). `mask_tensor` resizes a
mask to the model's size by nearest neighbour, never to an empty one: a defect smaller than a
model pixel that it would miss is marked on the pixels it touches, and named in a warning.
`load_mask` reads a mask file with them (`anomaly.data.folder.AnomalyDataset` checks it too)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from anomaly.data.files import DataError
from anomaly.data.image_kind import open_image, warn_fresh

INVERTED_FRACTION = 0.75  # a mask marking more of its image than this is probably inverted


def _marked(a: np.ndarray) -> np.ndarray:
    """Which pixels of a colour array [H, W, C] (C 2 or 4: the last is alpha) are marked: a
    non-zero colour that is not transparent; masks drawn as opaque paint (any colour, black too)
    on a transparent layer are read from the alpha channel."""
    colour, alpha = a[..., :-1].any(axis=-1), a[..., -1] > 0
    marked = colour & alpha
    if not marked.any() and alpha.any() and not alpha.all():
        return alpha  # black paint on a transparent layer
    return marked


def mask_array(im: Image.Image) -> np.ndarray:
    """A decoded mask image as bool [H, W]: True where a pixel is non-zero (a defect).

    Modes "1", "L", "I;16*", "I" and "F": value > 0. "P": its palette colour is not black
    (index 0 needs not be the background). "RGB": any channel non-zero. With alpha ("LA", "PA",
    "RGBA"): a non-zero colour where the pixel is not transparent. Others: as RGB.
    """
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode not in ("1", "L", "LA", "RGB", "RGBA", "I", "F") and not mode.startswith("I;16"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBa, La, ...
    a = np.asarray(im)
    if im.mode in ("LA", "RGBA"):
        return _marked(a)
    if a.ndim == 3:
        return a.any(axis=-1)
    return a > 0


MASK_READING = 2  # metrics.json's "mask_reading": 2 reads soft edges as one sees them (12-05)
SOFT_TOP = 128  # a grey mask whose maximum is at least this, with values between, has soft edges
SOFT_REACH = 2  # px: how far a soft rim lies from the brightest pixel that makes it a rim
LABEL_LEVELS = 8  # a mask of at most this many values is a label map (resizing makes dozens)
_SOFT_SAID: set[str] = set()  # folders whose soft masks were named (once a folder, not a file)


def forget_said() -> None:
    """Begin a call's warnings (`predict_images`, `score_run`): a file's (Pillow's, values out
    of range: `image_kind.warn_once`) and a mask folder's soft edges are said once a call, not
    once a process (a service's later requests of the same file said nothing)."""
    from anomaly.data import image_kind

    _SOFT_SAID.clear()
    image_kind._SAID.clear()


def soft_cut(im: Image.Image, path: str | Path) -> np.ndarray | None:
    """A grey mask with soft edges as bool [H, W], or None for any other mask (read by
    `mask_array`): a pixel is a defect where it is at least half of the brightest within
    `SOFT_REACH` pixels, and at least an eighth of its region's brightest. An anti-aliased rim
    is cut beside its defect's core, while a thin scratch a resize dimmed to 22, alone or
    running out of a bright blob, keeps its own (one cut for the whole mask, or for each
    region, dropped it).

    Soft edges: a greyscale mask ("L", 16-bit, or RGB with three equal channels) whose maximum
    is at least `SOFT_TOP`, that holds values between 0 and it, and more than `LABEL_LEVELS`
    values. Masks of few values (0/255, 0/1, label maps 0/127/255 or 0/1/2, faint 0/30) are
    not: every non-zero pixel stays a defect. The first soft mask of a folder is named in a
    warning, with the area each rule gives."""
    from scipy import ndimage

    if im.mode not in ("L", "RGB", "I") and not im.mode.startswith("I;16"):
        return None
    a = np.asarray(im)
    if a.ndim == 3:
        if not ((a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all()):
            return None  # red on black, colour-coded kinds: any channel non-zero
        a = a[..., 0]
    top = a.max()
    if top < SOFT_TOP or not ((a > 0) & (a < top)).any() or np.unique(a).size <= LABEL_LEVELS:
        return None  # two values, or a label map's few (127 beside 255): every non-zero pixel
    near = ndimage.maximum_filter(a, size=2 * SOFT_REACH + 1)  # the brightest within reach
    regions, n = ndimage.label(a > 0, structure=np.ones((3, 3), bool))
    peaks = np.r_[0.0, ndimage.maximum(a, regions, np.arange(1, n + 1))]  # each region's own
    marked = (a > 0) & (a >= np.maximum(near / 2, peaks[regions] / 8))
    folder = str(Path(path).parent)
    if folder not in _SOFT_SAID and marked.sum() < (a > 0).sum():
        _SOFT_SAID.add(folder)
        warn_fresh(  # (said again in a later call: `forget_said`)
            f"{path}: this mask has soft edges (grey levels between 0 and {top}), as resizing "
            "or anti-aliasing leaves them: a pixel is read as defect where it is at least half "
            f"of the brightest near it ({int(marked.sum())} px; every non-zero pixel would be "
            f"{int((a > 0).sum())}; so did versions before 2026-12-05: their pixel metrics of "
            "these masks differ). Other such masks of its folder are read so without a word. "
            "Save masks with two values (0 and 255, resized by nearest neighbour) for exact edges",
            stacklevel=3,
        )
    return marked


def mask_tensor(a: np.ndarray, size: int | None, path: str | Path | None = None) -> torch.Tensor:
    """A bool mask [H, W] as float32 [size, size] in {0, 1} (nearest neighbour), or its own size
    when `size` is None.

    Nearest neighbour reads one pixel of every block, so it can miss a defect smaller than a
    model pixel (a 1 px scratch in a 512 px mask at 64 px) and the defective image's mask came
    out empty: its defect left the pixel metrics without a word. When it would, the model pixels
    the defect touches are marked instead (an area resize > 0), and a warning names `path` (when
    given); a mask that nearest neighbour leaves non-empty is unchanged.
    """
    x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    if size is not None and x.shape != (size, size):
        near = F.interpolate(x[None, None], size=(size, size), mode="nearest-exact")[0, 0]
        if not (near > 0.5).any() and (x > 0.5).any():
            near = F.adaptive_max_pool2d(x[None, None], (size, size))[0, 0]
            if path is not None:
                warnings.warn(
                    f"{path}: its defect ({int((x > 0.5).sum())} px of {x.shape[1]}x"
                    f"{x.shape[0]}) is smaller than one pixel at --size {size}, so resizing "
                    f"would have left no defect; the {int((near > 0.5).sum())} model pixel(s) "
                    "it touches are marked instead. The model sees the defect blurred into "
                    "them: a larger --size shows it better",
                    stacklevel=2,
                )
        x = near
    return (x > 0.5).float()


LOSSY = ("JPEG", "MPO")  # formats whose compression adds faint grey around a drawn defect


def mask_files(path: str | Path) -> list[Path]:
    """The files of one image's mask: `path` itself, or the images in it when it is a folder
    (MVTec LOCO AD keeps each image's masks in `ground_truth/<kind>/<stem>/000.png, 001.png`,
    one per defect; `read_mask` reads their union). DataError for a folder with none."""
    from anomaly.data.files import scan_images

    p = Path(path)
    if not p.is_dir():
        return [p]
    images, broken, _ = scan_images(p, "folders inside are not read")
    if broken or not images:
        raise DataError(
            f"{broken[0] if broken else p}: "
            + ("a link to nothing" if broken else "no mask files in this folder")
            + f", read as the masks of the image {p.name}.* (MVTec LOCO AD's layout: one folder"
            " of masks per image, their union its mask). Put its masks in it, or delete it"
        )
    return images


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file at its own size as bool [H, W] (True = defect); DataError when unreadable.
    A folder of masks (`mask_files`) reads as their union, all of one size.
    A JPEG mask (`LOSSY`) marks a defect where a pixel has a channel at least half on, not
    wherever it is non-zero: compression leaves faint grey around every edge, which would
    count as defect."""
    if Path(path).is_dir():
        masks = [(f, read_mask(f)) for f in mask_files(path)]
        first, a = masks[0]
        for f, b in masks[1:]:
            if b.shape != a.shape:
                raise DataError(
                    f"{f}: mask is {b.shape[1]}x{b.shape[0]} but {first.name} beside it is "
                    f"{a.shape[1]}x{a.shape[0]}; the masks of one image have its size"
                )
            a = a | b
        return a
    with open_image(path) as im:
        if im.format in LOSSY:
            return np.asarray(im.convert("RGB")).max(axis=-1) >= 128  # red on black too
        soft = soft_cut(im, path)
        return mask_array(im) if soft is None else soft


def load_mask(path: str | Path, size: int | None = 256) -> torch.Tensor:
    """Read a defect mask as float32 [size, size] with values {0, 1}: every non-zero pixel is a
    defect, in any mode (`mask_array`: 0/255, 0/1, palette, red on black, 16-bit, ...), but in a
    grey mask with soft edges (`soft_cut`) or a JPEG one (`read_mask`)."""
    return mask_tensor(read_mask(path), size, path)


def check_defect_mask(a: np.ndarray, path: str | Path, image: str | Path) -> None:
    """The mask `a` (bool [H, W], from `path`) of the defective image `image`: a DataError when
    it marks nothing (its defect pixels would count as normal), a warning naming it when it marks
    more than `INVERTED_FRACTION` of the image (white background, black defect?)."""
    if not a.any():
        raise DataError(
            f"{path}: this mask marks no defect (every pixel is 0), but its image {image} is a "
            "defective test image. A mask marks the defect with non-zero pixels (white, or any "
            "colour, on black): redraw it, delete it to leave the image out of the pixel "
            "metrics, or move the image to the good images if it has no defect."
        )
    fraction = float(a.mean())
    if fraction > INVERTED_FRACTION:
        warnings.warn(
            f"{path}: this mask marks {fraction:.0%} of its image as defect; is it inverted? "
            "Defects must be the non-zero pixels (white on black), the background 0",
            stacklevel=3,
        )
