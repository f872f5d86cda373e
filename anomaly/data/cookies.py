"""Procedural cat-cookie data set in the MVTec AD layout.

Stands in for the 31 photos of handmade cat-shaped cookies of the original project: a golden-brown
cat head with two ears, a chocolate patch on the forehead, chocolate eyes, whiskers and nose, a
raised paw with pad imprints and a foot at the bottom left, on a light grey table. Normal cookies
vary the way handmade ones do (pose, chocolate placed, sized and smeared by hand, browning, grain,
hairline cracks, lighting, sensor noise); defective ones are broken (`crack`), carry a blob of
whole-grain `mustard`, or lie under a piece of `plastic` wrap, each with a pixel-exact mask.

Shapes are signed distance fields in cookie units (1 = about the cookie's width), so a seed draws
the same cookie at any image size. Each image has its own generator seeded by (seed, split, kind,
index): images depend neither on each other nor on the order they are made in.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from anomaly.data.cookies_render import KINDS, render_cookie
from anomaly.data.files import manifest_files
from anomaly.data.generated import (
    check_made,
    check_place,
    check_unedited,
    complete,
    read_manifest,
    recover,
    settings_changed,
    write_png,
    write_staged,
)

__all__ = ["GENERATOR_VERSION", "KINDS", "PRESETS", "make_cookies", "render_cookie"]

GENERATOR_VERSION = "1.0"
PRESETS = {  # train/good, test/good, then test images per defect kind
    "tiny": {"train": 8, "good": 4, "crack": 2, "mustard": 2, "plastic": 2},
    "toy": {"train": 18, "good": 6, "crack": 3, "mustard": 2, "plastic": 2},
    "benchmark": {"train": 200, "good": 50, "crack": 30, "mustard": 30, "plastic": 30},
}
# The range of `difficulty` that changes something useful: at 0.1 a mustard blob covers a third
# of the image (far below, all of it); from about 44 on, sizes and contrast are at their floors.
DIFFICULTY = (0.1, 50.0)
_KIND_IDS = {"good": 0, "crack": 1, "mustard": 2, "plastic": 3}
_FOLDERS = ("ground_truth", "test", "train")  # moved into place in this order: train last


# --- the data set -------------------------------------------------------------------------------
def make_cookies(
    root: str | Path,
    preset: str = "toy",
    seed: int = 0,
    size: int = 256,
    difficulty: float = 1.0,
    progress: bool = False,
    overwrite: bool = False,
) -> dict:
    """Write a cookie data set in the MVTec AD layout and return its manifest.

    Layout: `train/good/000.png`, `test/good/000.png`, `test/<kind>/000.png`,
    `ground_truth/<kind>/000_mask.png` (L mode, 255 = defect, 0 = good) and `manifest.json`.

    Args:
        root: folder to write. Making the same data set again in it is fine; a folder that
            holds a cookie data set with other settings raises `ValueError` unless `overwrite`;
            a folder holding anything else is always refused. The set appears whole: it is
            written into a hidden staging folder inside `root`, moved into place when complete
            (`anomaly.data.generated`); an interrupted run is completed by running it again.
        preset: "tiny" (8 + 4 good, 2 per defect kind; for tests), "toy" (18 + 6 good, crack
            3, mustard 2, plastic 2: the original's 31 photos) or "benchmark" (200 + 50 good,
            30 per defect kind).
        seed: non-negative; the same seed and `GENERATOR_VERSION` give byte-identical files.
        size: side of the square images in pixels, at least 32.
        difficulty: 0.1 to 50 (`DIFFICULTY`), higher is harder. Defect sizes are multiplied by `difficulty ** -0.5`
            (areas by `1 / difficulty`; the wrap's length, already large, by
            `difficulty ** -0.25`), never below a few pixels, and defect contrast (mustard and
            wrap opacity, how dark a crack is and how much table shows through it) by
            `clip(difficulty ** -0.5, 0.15, 1)`. 1.0 is the reference; 2.0 halves areas at
            71 % contrast; 4.0 quarters them at 50 %; below 1.0 defects only grow. Sizes are
            log-uniform within a set, so every set holds small and large defects.
        progress: show a tqdm progress bar, one step per image (at 4096 px, about half a
            minute each).
        overwrite: replace a cookie data set made with other settings: once the new one is
            complete, delete the old one's `train/`, `test/`, `ground_truth/` and
            `manifest.json` (nothing else; refused, with nothing deleted, if they hold files
            its manifest does not list). A folder without a cookie `manifest.json` is never
            deleted.

    Returns:
        The manifest, also saved as `manifest.json`: generator version, preset, seed, size,
        difficulty, counts per "split/kind" and, per image path, its split, kind, mask path
        (None for good images), defect area in pixels and area fraction.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if isinstance(size, bool) or int(size) != size or not 32 <= size <= 4096:
        raise ValueError(f"size must be a whole number of pixels, 32 to 4096; got {size!r}")
    if not DIFFICULTY[0] <= difficulty <= DIFFICULTY[1]:  # NaN fails too
        raise ValueError(
            f"difficulty must be a positive finite number, {DIFFICULTY[0]:g} to "
            f"{DIFFICULTY[1]:g}; got {difficulty!r} (below "
            f"{DIFFICULTY[0]:g} a mustard blob or wrap covers most of the image, or every retry to "
            f"draw one fails; above {DIFFICULTY[1]:g} defects are already at their smallest and "
            "faintest)"
        )
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    size, seed, difficulty, counts = int(size), int(seed), float(difficulty), PRESETS[preset]
    jobs = [("train", "good", i) for i in range(counts["train"])]
    jobs += [("test", "good", i) for i in range(counts["good"])]
    jobs += [("test", kind, i) for kind in KINDS for i in range(counts[kind])]
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "preset": preset,
        "seed": seed,
        "size": size,
        "difficulty": difficulty,
        "counts": {
            "train/good": counts["train"],
            "test/good": counts["good"],
            **{f"test/{kind}": counts[kind] for kind in KINDS},
        },
        "images": {},
    }
    root = Path(os.path.expanduser(root))  # "~/data" is home's, not a folder named ~
    settings = {key: value for key, value in manifest.items() if key != "images"}
    check_place(root, "cookie data set")
    made = _made(read_manifest(root / "manifest.json"))
    if (done := recover(root, "make-cookies", settings, list(_FOLDERS), made)) is not None:
        return done  # an interrupted run of this command had written every image
    retire = _check_root(root, settings, overwrite)
    # None on a non-empty root: the same set again, and _check_root refused any edited file
    if retire is None and complete(root, previous := read_manifest(root / "manifest.json")):
        return previous  # every file there as written: nothing to do

    def write(folder: Path) -> dict:
        from tqdm.auto import tqdm

        for split, kind, i in tqdm(jobs, desc="cookies", unit="image", disable=not progress):
            rng = np.random.default_rng([seed, split == "test", _KIND_IDS[kind], i])
            image, mask = render_cookie(rng, size, kind, difficulty)
            rel = f"{split}/{kind}/{i:03d}.png"
            write_png(image, folder / rel)
            entry = {"split": split, "kind": kind, "mask": None}
            entry |= {"defect_area": 0, "area_fraction": 0.0}
            if kind != "good":
                entry["mask"] = f"ground_truth/{kind}/{i:03d}_mask.png"
                write_png(mask.astype(np.uint8) * 255, folder / entry["mask"])
                entry["defect_area"] = int(mask.sum())
                entry["area_fraction"] = round(entry["defect_area"] / size**2, 6)
            manifest["images"][rel] = entry
        return manifest

    return write_staged(root, "make-cookies", settings, write, list(_FOLDERS), retire)


def _check_root(root: Path, settings: dict, overwrite: bool) -> tuple[list, set] | None:
    """Refuse to mix two data sets, or a data set and other files, in one folder; return what
    of an earlier set the new one replaces (its folders and files), or None.

    `overwrite` replaces only a data set this generator made (its folder has a cookie
    `manifest.json`), and deletes only what the generator writes: never a user's own folder.
    """
    if not root.exists() or not any(root.iterdir()):
        return None
    previous = read_manifest(root / "manifest.json")
    made = _made(previous)
    if made is not None and {key: previous.get(key) for key in settings} == settings:
        check_unedited(root, previous, "make-cookies", "making it again")
        return None  # the same set again: each file is replaced by the same bytes
    if made is None:
        raise ValueError(
            f"{root} already holds files that this generator did not make (no cookie "
            "manifest.json that reads as one), so it will not write there, with or without "
            "--overwrite; choose an empty or new folder"
        )
    if not overwrite:
        raise ValueError(
            f"{root} already holds a cookie data set made with other settings "
            f"({settings_changed(previous, settings)}); "
            "choose another folder, or pass --overwrite (overwrite=True) to replace "
            "it"
        )
    folders = [name for name in reversed(_FOLDERS) if (root / name).exists()]
    check_made(root, folders, made)
    check_unedited(root, previous, "make-cookies", "--overwrite")
    return folders, made


def _made(manifest: dict | None) -> set[str] | None:
    """The files a cookie `manifest.json` lists; None when it is no cookie manifest."""
    if not isinstance(manifest, dict) or not {"generator_version", "preset"} <= manifest.keys():
        return None
    images = manifest.get("images")
    return manifest_files(images if isinstance(images, dict) else {})
