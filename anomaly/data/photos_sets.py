"""The real-photo suite's table (`anomaly.data.photos`): which photo each set cuts, where its
training and test regions lie, which defect kinds it gets, and how a source photo is read from
the installed packages (nothing is downloaded). scikit-image's `brick`, `grass` and `gravel`
photos and the `elpv-dataset` package are kept for independent evaluation and never used here."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from anomaly.data.photos_defects import KINDS

_F = np.float32
# The 8 symmetries of the square: rotate by 90 degrees k times, then maybe mirror left-right.
DIHEDRAL = ("r0", "r90", "r180", "r270", "m0", "m90", "m180", "m270")


@dataclass(frozen=True)
class PhotoSet:
    """One set: which photo, where its training and test crops come from, and how they look.

    Regions are (x0, y0, x1, y1) rectangles in the photo's pixels; a crop lies wholly inside one
    region. `circle` (cx, cy, r): crops must also lie wholly inside this circle.
    """

    name: str
    photo: str  # key of `SOURCES`
    kind: str  # what a person would call it
    crop: int  # crop side in the photo's pixels
    size: int  # side of the saved images
    train: tuple[tuple[int, int, int, int], ...]
    test: tuple[tuple[int, int, int, int], ...]
    transforms: tuple[str, ...] = ("r0",)
    circle: tuple[int, int, int] | None = None
    kinds: tuple[str, ...] = KINDS  # the defect kinds drawn
    note: str = field(default="", compare=False)


# photo key -> (package, how to load it); every photo but a set's own gives foreign material
SOURCES = {
    "moon": ("scikit-image", "skimage.data.moon()"),
    "cell": ("scikit-image", "skimage.data.cell()"),
    "immunohistochemistry": ("scikit-image", "skimage.data.immunohistochemistry()"),
    "hubble_deep_field": ("scikit-image", "skimage.data.hubble_deep_field()"),
    "page": ("scikit-image", "skimage.data.page()"),
    "coins": ("scikit-image", "skimage.data.coins()"),
    "retina": ("scikit-image", "skimage.data.retina()"),
    "flower": ("scikit-learn", "sklearn.datasets.load_sample_images() flower.jpg"),
    "china": ("scikit-learn", "sklearn.datasets.load_sample_images() china.jpg"),
    "grace_hopper": ("matplotlib", "matplotlib.cbook.get_sample_data('grace_hopper.jpg')"),
    # used only as foreign material pasted into the sets' defects
    "astronaut": ("scikit-image", "skimage.data.astronaut()"),
    "chelsea": ("scikit-image", "skimage.data.chelsea()"),
    "coffee": ("scikit-image", "skimage.data.coffee()"),
    "rocket": ("scikit-image", "skimage.data.rocket()"),
    "camera": ("scikit-image", "skimage.data.camera()"),
}

# Coin centres (x, y) in skimage's coins photo, row by row, found once by thresholding against
# the local mean and kept here so the set does not depend on a segmentation. Training coins are
# each row's three on the left, test coins each row's two on the right; the fourth column is
# left out, so no training crop touches a test crop.
_COINS = (
    ((44, 54), (100, 56), (155, 50), (276, 52), (334, 43)),
    ((44, 124), (102, 125), (153, 127), (270, 119), (336, 124)),
    ((43, 197), (101, 195), (154, 197), (273, 193), (347, 186)),
    ((45, 259), (113, 265), (172, 261), (300, 263), (358, 267)),
)
_COIN_BOX = 36  # a 64 px crop centred on the coin, moved by up to 4 px: boxes of 72 px
_COINS_SHAPE = (303, 384)  # (height, width) of skimage's coins photo


def _coin_boxes(columns: range) -> tuple[tuple[int, int, int, int], ...]:
    """72 px boxes centred on the coins, moved inwards where a coin is closer to the photo's
    edge than that (a box past the edge would give crops narrower than 64 px)."""
    (h, w), side = _COINS_SHAPE, 2 * _COIN_BOX
    boxes = []
    for row in _COINS:
        for x, y in (row[i] for i in columns):
            x0 = min(max(0, x - _COIN_BOX), w - side)
            y0 = min(max(0, y - _COIN_BOX), h - side)
            boxes.append((x0, y0, x0 + side, y0 + side))
    return tuple(boxes)


_NO_BLUR = tuple(k for k in KINDS if k != "blur")  # for photos too smooth to show a blur
SETS = (
    PhotoSet(
        "moon",
        "moon",
        "stochastic texture, greyscale (lunar surface)",
        192,
        256,
        train=((0, 0, 240, 512),),
        test=((272, 0, 512, 512),),
        kinds=_NO_BLUR,
        note="lit from one side: no flips; no blur defects (too smooth to show one)",
    ),
    PhotoSet(
        "cell",
        "cell",
        "faint stochastic texture, greyscale (microscope background)",
        128,
        256,
        train=((0, 60, 550, 250),),
        test=((0, 280, 310, 660),),
        transforms=DIHEDRAL,
        kinds=_NO_BLUR,
        note="the cell and its halo are left out; no blur defects (already out of focus)",
    ),
    PhotoSet(
        "tissue",
        "immunohistochemistry",
        "stochastic texture, colour (stained tissue)",
        192,
        256,
        train=((0, 0, 240, 240), (272, 272, 512, 512)),
        test=((272, 0, 512, 240), (0, 272, 240, 512)),
        transforms=DIHEDRAL,
        note="train: top-left and bottom-right quarters, test: the other two; test "
        "crops hold somewhat more pale stroma (mean grey 169 against 151)",
    ),
    PhotoSet(
        "deepfield",
        "hubble_deep_field",
        "sparse stochastic texture, colour (galaxies)",
        256,
        256,
        train=((0, 0, 480, 872),),
        test=((520, 0, 1000, 872),),
        transforms=DIHEDRAL,
    ),
    PhotoSet(
        "page",
        "page",
        "regular pattern, greyscale (printed text)",
        64,
        128,
        train=((0, 0, 184, 96), (200, 112, 384, 191)),
        test=((0, 112, 184, 191), (200, 0, 384, 96)),
        note="the page is lit much brighter on the right, and has a heading at the top and "
        "code at the bottom: train and test each get two opposite quarters; no flips",
    ),
    PhotoSet(
        "coins",
        "coins",
        "objects, greyscale (one coin per image)",
        64,
        128,
        train=_coin_boxes(range(3)),
        test=_coin_boxes(range(3, 5)),
        note="different coins in train and test; lit from one side: no flips",
    ),
    PhotoSet(
        "retina",
        "retina",
        "structure, colour (fundus vessels)",
        320,
        256,
        train=((0, 0, 1411, 560),),
        test=((0, 760, 1411, 1411),),
        transforms=("r0", "m0", "r180", "m180"),
        circle=(705, 705, 660),
        kinds=_NO_BLUR,
        note="upper vs lower retina, either way up and mirrored (as a left or right eye)",
    ),
    PhotoSet(
        "dahlia",
        "flower",
        "regular pattern, colour (dahlia petals)",
        80,
        160,
        train=((170, 85, 298, 365),),
        test=((316, 85, 445, 365),),
        transforms=DIHEDRAL,
        circle=(307, 223, 128),
        note="left vs right half of the flower",
    ),
)


@cache
def load_photo(key: str) -> np.ndarray:
    """The photo `key` of `SOURCES` as uint8 (H, W) or (H, W, 3), read from its package."""
    if key not in SOURCES:
        raise ValueError(f"unknown photo {key!r}; choose one of {sorted(SOURCES)}")
    if key in ("flower", "china"):
        from sklearn.datasets import load_sample_images

        bunch = load_sample_images()
        names = [Path(f).name for f in bunch.filenames]
        image = bunch.images[names.index(f"{key}.jpg")]
    elif key == "grace_hopper":
        from matplotlib import cbook

        with cbook.get_sample_data("grace_hopper.jpg") as f, Image.open(f) as im:
            image = np.asarray(im.convert("RGB"))
    else:
        import skimage.data

        image = getattr(skimage.data, key)()
    image = np.ascontiguousarray(image, dtype=np.uint8)
    image.setflags(write=False)
    return image
