"""What `anomaly.data.folder.AnomalyDataset` says about a test folder as it lists it, beyond what
it refuses: the folders of a data set (a broken symbolic link among them is an error, not left
out), defective images whose mask is missing (named, with where the mask goes: they are left out
of the pixel metrics), and masks given for good images (ignored: named, so that nobody takes them
for used); a mask folder that is not read (masks/ where ground_truth/ is: named); JPEG masks
(read at half brightness: named); and the layout mistakes: `test/Good/`
for `test/good/` (refused), image files lying directly in train/ or test/ (not read). And, as
each image is read, a float or 32-bit image whose values are clipped (named) or NaN (refused).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from anomaly.data.files import DataError, _is_image, broken_link, named, scan_images
from anomaly.data.layout_names import good_name_word, mask_stem, maybe_good_word, unsorted_word
from anomaly.data.masks import read_mask
from anomaly.onnx_checks import SYSTEM_FOLDERS, skipped_silently

NAMED = 3  # files named in one warning; the rest are counted
MASK_FOLDERS = ("ground_truth", "masks")  # where masks are looked for, in this order


def subfolders(folder: Path) -> list[Path]:
    """The folders `folder` holds, sorted, hidden ones and `SYSTEM_FOLDERS` (a macOS zip's
    __MACOSX/, a USB stick's Recycle Bin) left out; a DataError names a symbolic link that leads
    nowhere (a folder of images moved or deleted), which was left out silently."""
    found = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.name.lower() in SYSTEM_FOLDERS:
            continue
        if p.is_symlink() and not p.exists():
            raise DataError(f"{p}: {broken_link(p)}")
        if p.is_dir():
            found.append(p)
    return found


def warn_missing_masks(samples, mask_root: Path | None) -> None:
    """Warn, naming the first few, about defective `samples` (`folder.Sample`s) with no mask when
    others have one: each is left out of the pixel metrics, which only counted them before. Says
    where its mask goes under `mask_root` (`<kind>/<stem>_mask.png`). Nothing is said when no
    image has a mask (a data set without masks gets no pixel metrics at all)."""
    _warn_unread_masks(mask_root)
    defective = [s for s in samples if s.label]
    missing = [s for s in defective if s.mask_path is None]
    if mask_root is None or not missing or len(missing) == len(defective):
        return
    where = named(
        [
            f"{s.path} (its mask goes in {mask_root / s.defect / Path(s.path).stem}_mask.png)"
            for s in missing
        ],
        NAMED,
        sep="; ",
    )
    has, they = ("has", "it is") if len(missing) == 1 else ("have", "they are")
    warnings.warn(
        f"{len(missing)} of the {len(defective)} defective test images {has} no mask, so "
        f"{they} left out of the pixel metrics: {where}. Save each mask "
        "there (the image's size, non-zero pixels = defect); without one, an image counts in "
        "the image metrics only",
        stacklevel=3,
    )


def _warn_unread_masks(mask_root: Path | None) -> None:
    """Warn about a mask folder beside `mask_root` (the one read) that is not read: `masks/`
    in the MVTec AD layout (it reads ground_truth/ only), or `masks/` beside a `ground_truth/`
    in the plain layout (one is read). Its masks were ignored without a word."""
    if mask_root is None:
        return
    for name in MASK_FOLDERS:
        other = mask_root.parent / name
        if name != mask_root.name and other.is_dir() and any(other.iterdir()):
            warnings.warn(
                f"{other}/ is not read: masks are read from {mask_root}/ only "
                f"(<defect>/<image stem>_mask.png), so its masks are ignored. Move them there",
                stacklevel=4,
            )


def warn_good_masks(folder: Path, defects: str) -> None:
    """Warn, naming them, when masks in `folder` (ground_truth/good/) mark a defect: good images
    have none, so their masks are ignored (all-zero masks there are as expected, and not named).
    `defects` says where defective images go (e.g. "test/<defect>/")."""
    marked = []
    for m in scan_images(folder)[0]:
        try:
            if read_mask(m).any():
                marked.append(m)
        except DataError:
            continue  # ignored all the same; an unreadable file is nothing we use
    if not marked:
        return
    warnings.warn(
        f"{folder}: {len(marked)} mask(s) of good images mark a defect "
        f"({named(map(str, marked), NAMED)}), and are "
        "ignored: a good image has no defect, so its mask is all zeros. If those images have "
        f"defects, move them to {defects} and their masks to {folder.parent}/<defect>/; else "
        "delete the masks",
        stacklevel=4,
    )


# folder names that say "defect-free" in inspection, but are not the layout's good/
GOOD_WORDS = {"good", "normal", "ok", "okay", "pass", "passed", "nominal", "defect_free",
              "defect-free", "defectfree", "no_defect", "no-defect", "nodefect", "clean"}  # fmt: skip


def check_good_name(split: Path) -> None:
    """Refuse a `split` folder (train/, test/, or a plain layout's root) whose defect-free
    images are in `Good/`, `normal/`, `ok/`, ... (`GOOD_WORDS`), or in a folder whose name holds
    a good word and none that says otherwise (`layout_names.good_name_word`: good2/,
    "good copy"/, OK_parts/, normal_images/; not not_ok/ or good_but_scratched/): folder names
    are exact, so these would be read as a defect kind and their good images as defects."""
    if not split.is_dir():
        return
    maybe = [(d.name, w) for d in subfolders(split) if (w := maybe_good_word(d.name))]
    if maybe:  # good_backup/, good_train/, or a defect kind pass_through_hole/: said, not refused
        warnings.warn(
            f"{split}: {named([f'{n}/ (it says {w!r})' for n, w in maybe], NAMED)} "
            f"{'is' if len(maybe) == 1 else 'are'} read as defect kinds, their images scored as "
            f"defects: if one holds good images, move them into {split / 'good'}/",
            stacklevel=4,
        )
    if unsorted := [d.name for d in subfolders(split) if unsorted_word(d.name)]:
        warnings.warn(
            f"{split}: {named([f'{n}/' for n in unsorted], NAMED)} "
            f"{'is' if len(unsorted) == 1 else 'are'} read as defect kinds, every image in them "
            "counted as a defect in the metrics. If they hold photos not judged yet, move them "
            "out of the data set and check them with `python -m anomaly predict --run RUN FOLDER`",
            stacklevel=4,
        )
    for d in subfolders(split):
        exact = d.name.lower() in GOOD_WORDS and d.name != "good"
        word = None if exact else good_name_word(d.name)
        if exact or word:
            said = (
                "folder names are exact, and the defect-free images go in"
                if exact
                else f"its name says {word!r}, but defect-free images are read from"
            )
            raise DataError(
                f"{d}: {said} {split.name}/good/ only (lower case); {d.name}/ would be read as a "
                f"defect kind, its images scored as defects. Rename it to {split / 'good'}"
                + (" (or move its images into it)" if (split / "good").exists() else "")
                + (
                    ""
                    if exact
                    else "; if it is a defect kind, say what is wrong in its name (e.g. "
                    f"{word}_but_<defect>/ or not_{word}/)"
                )
            )


def check_mvtec_root(root: Path) -> None:
    """A folder read in the MVTec AD layout (it holds train/ or test/) that also holds good/:
    without train/ it is a plain data set with a defect kind named test/ (refused, saying
    so); with train/, good/ is not read (named)."""
    if not (root / "good").is_dir():
        return
    if not (root / "train").is_dir():
        raise DataError(
            f"{root} holds good/ and test/ but no train/. In the plain layout (good/ and one "
            "folder per defect kind) no defect kind may be named test/ or train/: rename it. "
            f"In the MVTec AD layout the training images go in {root / 'train' / 'good'}/"
        )
    warnings.warn(
        f"{root / 'good'}/ is not read: this data set is in the MVTec AD layout (train/ and "
        "test/), which trains on train/good/ and tests test/<kind>/. Move its images there, or "
        "out of the data set",
        stacklevel=4,
    )


def warn_validation(root: Path) -> None:
    """Name ROOT/validation/good/ (MVTec LOCO AD's defect-free validation images), which is not
    read: `train` holds out part of train/good/ for the threshold instead, and said nothing."""
    val = root / "validation" / "good"
    if val.is_dir():
        warnings.warn(
            f"{val}/ is not read: the threshold is set on good images held out of train/good/. "
            "To set it on these instead, after training: python -m anomaly threshold --run RUN "
            f"--rule conformal --value 0.05 --good-images {val}",
            stacklevel=4,
        )


def warn_loose_images(split: Path) -> None:
    """Name the image files lying directly in `split` (train/ or test/): only its folders
    (good/, <defect>/) are read. Those named as masks (`mask_stem`: KolektorSDD2 keeps
    `10000_GT.png` beside `10000.png`) are said to be masks, not told to move among images."""
    if not split.is_dir():
        return
    files = [
        p for p in split.iterdir() if p.is_file() and _is_image(p) and not skipped_silently(p.name)
    ]
    masks = sorted(p.name for p in files if mask_stem(p))
    loose = sorted(p.name for p in files if not mask_stem(p))
    if masks:
        warnings.warn(
            f"{split}: {named(masks, NAMED)} {'lies' if len(masks) == 1 else 'lie'} directly in "
            f"{split.name}/, named as {'a mask' if len(masks) == 1 else 'masks'} (<stem>_mask, "
            "_GT, _label), and not read. A defective image's mask goes in "
            f"{split.parent / 'ground_truth'}/<defect>/<stem>_mask.png, the image in "
            f"{split.parent / 'test'}/<defect>/; a good image needs none, and training images "
            "must be good ones",
            stacklevel=4,
        )
    if loose:
        where = "good/" if split.name == "train" else "good/ or <defect>/"
        warnings.warn(
            f"{split}: {named(loose, NAMED)} {'lies' if len(loose) == 1 else 'lie'} directly in "
            f"{split.name}/ and {'is' if len(loose) == 1 else 'are'} not read; only its folders "
            f"are. Move {'it' if len(loose) == 1 else 'them'} into {split.name}/{where}"
            + (
                " (those whose mask beside them marks nothing; one that marks a defect is a "
                "defective image: test/<defect>/)"
                if masks
                else ""
            ),
            stacklevel=4,
        )


def warn_lossy_masks(lossy: list[str]) -> None:
    """Name the JPEG masks (`masks.LOSSY`), which `read_mask` reads at half brightness."""
    if lossy:
        warnings.warn(
            f"{named(lossy, NAMED)} {'is a JPEG mask' if len(lossy) == 1 else 'are JPEG masks'}:"
            " compression leaves faint grey around each defect, so in a JPEG mask a pixel is"
            " defect only when a channel is at least half on (in a PNG mask, every non-zero"
            " pixel, soft grey edges aside)."
            " Save masks as PNG for exact edges",
            stacklevel=4,
        )


# The values the reader maps to black and white, by mode; what lies outside is clipped
WIDE_MODES = {"F": 1.0, "I": 65535.0}


def check_value_range(path: str | Path, im) -> None:
    """Name a float (or 32-bit integer) image whose values lie outside what the reader maps to
    black and white (0-1 for floats, 0-65535 for integers), because they are clipped: a float
    TIFF saved in 0-255 reads as mostly white, its defects with it. One warning per file, with
    the range found and how much was clipped; NaN pixels are refused (they have no brightness,
    and would make the image's score NaN)."""
    import numpy as np

    from anomaly.data.image_kind import warn_once

    top = WIDE_MODES.get(im.mode)
    if top is None:
        return
    a = np.asarray(im, dtype=np.float64)
    if nan := int(np.isnan(a).sum()):
        raise DataError(
            f"{path}: {nan} of its {a.size} pixel values are NaN (not a number); fill them "
            "(with the background value, say) and save it again"
        )
    clipped = float(np.mean((a < 0) | (a > top)))
    words = (
        f"{clipped:.1%} of its values lie outside 0-{top:g} (it holds {a.min():.4g} to "
        f"{a.max():.4g}) and are clipped to black or white: save it scaled to 0-{top:g}, or as "
        "an 8- or 16-bit image"
    )
    if clipped:
        warn_once(path, words, stacklevel=4)


def check_mask_header(mask: str, image: str, size: tuple[int, int], turn: int) -> bool:
    """Refuse a mask that does not open, or whose size is not its image's as shown (`size`,
    after the image's EXIF orientation `turn`); the words say when it fits the image as stored,
    before that turn. True for a JPEG mask (`masks.LOSSY`)."""
    from PIL import Image

    from anomaly.data.image_kind import displayed_size
    from anomaly.data.masks import LOSSY, mask_files

    if Path(mask).is_dir():  # MVTec LOCO AD: a folder of the image's masks, each checked
        lossy = [check_mask_header(str(f), image, size, turn) for f in mask_files(mask)]
        return any(lossy)  # every file checked, not up to the first JPEG
    try:
        with Image.open(mask) as m:
            mask_size, lossy = displayed_size(m), m.format in LOSSY
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(
            f"{mask}: not a readable mask ({e}). Re-save it as a PNG of its image's size, or "
            "delete it."
        ) from None
    if mask_size != size:
        stored = turn in (5, 6, 7, 8) and mask_size == size[::-1]
        raise DataError(
            f"{mask}: mask is {mask_size[0]}x{mask_size[1]} but its image {image} is "
            f"{size[0]}x{size[1]}; masks must have the size of their image."
            + (TURNED_WORDS.format(turn=turn) if stored else "")
        )
    return lossy


TURNED_WORDS = (
    " The image carries EXIF orientation {turn}: it is shown, and scored, turned, and the mask "
    "fits it as stored. Draw the mask on the image as a viewer shows it, or save the image "
    "without the orientation tag (turned for good)"
)


def warn_turned(turned: list[tuple[str, int]]) -> None:
    """Name defective images with a mask whose EXIF orientation turns them: the mask must be
    drawn on the image as shown, which labelling tools that ignore EXIF do not do."""
    if turned:
        warnings.warn(
            f"{named([f'{p} (EXIF orientation {t})' for p, t in turned], NAMED)}: "
            f"{'this defective image is' if len(turned) == 1 else 'these defective images are'} "
            "shown and scored turned by EXIF; "
            f"{'its mask' if len(turned) == 1 else 'their masks'} must be drawn on the image as "
            "a viewer shows it (a labelling tool that ignores EXIF draws it on the stored "
            "pixels, and the pixel metrics are then wrong): check they line up",
            stacklevel=4,
        )


def check_not_split(root: Path) -> None:
    """Refuse a folder with good/ (read in the plain layout) that is the train/ or test/ (or
    validation/) folder of an MVTec AD data set: read so, `train` took its test images for
    training images, held some out and tested the rest, never read train/good/ or the masks
    in ground_truth/, and said nothing."""
    parent = root.parent
    mvtec = (parent / "train" / "good").is_dir() and (parent / "test").is_dir()
    own_masks = any((root / m).is_dir() for m in MASK_FOLDERS)  # a plain data set's masks/
    if root.name.lower() == "train" and any(d.name != "good" for d in subfolders(root)):
        return  # MVTec AD's train/ holds good/ alone; this one defect kinds too: a data set
    if root.name.lower() in ("train", "test", "validation") and mvtec and not own_masks:
        raise DataError(
            f"{root} is the {root.name}/ folder of the data set {parent} (MVTec AD layout: "
            f"train/good/, test/<kind>/, ground_truth/). Pass {parent}: its training images are "
            "read from train/good/, its test images from test/, their masks from ground_truth/"
        )


def no_layout(root: Path) -> str:
    """What to do with a folder `root` that holds no train/, test/ or good/ folder, in words:
    pass one of the data sets it holds, move the images it holds directly into good/ (a user's
    first try: a flat folder of photos), or make the layout; or rename Train/ or Good/ (a
    Windows copy), which a data set of its own would have been taken for."""
    cased = [p.name for p in subfolders(root) if p.name.lower() in ("train", "test", "good")]
    if {n.lower() for n in cased} & {"train", "good"}:  # a layout's own (Test/ alone is none)
        fix = " and ".join(f"{n}/ to {n.lower()}/" for n in cased)
        return f"Folder names are exact (lower case): rename {fix}, then pass {root} again."
    cats = [p.name for p in subfolders(root) if (p / "train").is_dir() or (p / "good").is_dir()]
    if cats:
        return (
            f"It holds data sets ({', '.join(cats[:5])}); pass one of them, e.g. {root / cats[0]}."
        )
    n = sum(
        1 for p in root.iterdir() if not p.name.startswith(".") and p.is_file() and _is_image(p)
    )
    if n and (root.name == "good" or good_name_word(root.name)):
        return (
            f"It holds {n} image{'s' * (n != 1)} directly, as a data set's folder of good images "
            f"does: pass the folder above it, {root.parent}, whose good/ it is (rename it good/)."
        )
    if n:
        return (
            f"It holds {n} image{'s' * (n != 1)} directly; a data set keeps them in folders: move "
            f"the defect-free ones into {root / 'good'}/ (defective ones, if any, into "
            f"{root / '<defect>'}/, masks optional), then pass {root} again."
        )
    return (
        "Put defect-free images in ROOT/good/ (and defects in ROOT/<defect>/), or use the MVTec "
        "AD layout ROOT/train/good/, ROOT/test/<defect>/."
    )
