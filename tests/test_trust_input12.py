"""Input the data folder gives without a word where it should say something: a TIFF of several
pages read as one, training images unlike each other, defective images without their mask, a
test folder that is a broken link, masks of good images, and a warning repeated per worker."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly.data.files import DataError
from anomaly.data.folder import read_image


def _grey(value: int, size: tuple[int, int] = (32, 32)) -> Image.Image:
    return Image.fromarray(np.full(size[::-1], value, np.uint8))


# --- 1. a file of several images is refused, naming it ------------------------------------------
def test_a_tiff_of_several_pages_is_refused_and_a_thumbnail_page_is_not(tmp_path: Path) -> None:
    stack = tmp_path / "stack.tif"
    _grey(0).save(stack, save_all=True, append_images=[_grey(255)])
    with pytest.raises(DataError, match=r"stack.tif: a TIFF of 2 pages .*Save the page you mean"):
        read_image(stack)
    thumb = tmp_path / "thumb.tif"  # its second page a reduced-resolution copy: read as before
    _grey(200).save(thumb, save_all=True, append_images=[_grey(0, (8, 8))])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = read_image(thumb)
    assert a.shape == (32, 32, 1) and np.allclose(a, 200 / 255)
