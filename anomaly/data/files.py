"""Finding image files, and the error that names a bad one: no torch, so that commands that only
read a run folder (`threshold`) start fast. `anomaly.data.folder` reads the images."""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class DataError(ValueError):
    """A problem with the data folder; the message names the file or folder and the fix."""


def manifest_files(images: dict, prefix: str = "") -> set[str]:
    """The files a generator's manifest lists: each image (`images`' keys, relative to the data
    set's folder) and its mask, with `prefix` before each (a photo suite's set folder)."""
    masks = {i["mask"] for i in images.values() if isinstance(i, dict) and i.get("mask")}
    return {prefix + rel for rel in set(images) | masks}


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS


def scan_images(folder: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """What `folder` directly holds, sorted: (image files, symbolic links that lead to no file,
    everything else but hidden folders such as .ipynb_checkpoints). The one listing of a folder
    of images: training and test folders, `threshold --good-images` and `predict FOLDER`."""
    images, broken, stray = [], [], []
    for p in sorted(folder.iterdir()):
        if p.is_dir() and p.name.startswith("."):
            continue  # .ipynb_checkpoints, .git, ...
        if p.is_symlink() and not p.exists():
            broken.append(p)
        else:
            (images if p.is_file() and _is_image(p) else stray).append(p)
    return images, broken, stray


def broken_link(p: Path) -> str:
    """Why the symbolic link `p` leads to no file (a loop, or a missing target)."""
    try:
        p.resolve(strict=True)
    except RuntimeError:
        return "a symbolic link that points back to itself (a loop); fix the link or delete it"
    except OSError as e:
        if e.errno == 40:  # ELOOP
            return "a symbolic link that points back to itself (a loop); fix the link or delete it"
    return f"a symbolic link to {os.readlink(p)}, which does not exist; fix the link or delete it"
