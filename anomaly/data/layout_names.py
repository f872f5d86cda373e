"""Names that say what a folder of a data set holds, where the layout would read it as something
else (`anomaly.data.folder.AnomalyDataset` calls these as it lists a data set):

- a folder of good images named otherwise than `good/` (`good2/`, `OK_parts/`, `normal images/`:
  `good_name_word`), which would be scored as a defect kind;
- a folder of masks in a defect kind's place (`mask/`, `labels/`, `gt/`, ...: `check_not_masks`),
  whose masks would be scored as defective images, and masks beside their defect images;
- masks lying directly in the masks folder, without their `<defect>/` folder (`warn_loose_masks`),
  which are not read;
- two images of one stem in a defect folder (`s_0.png`, `s_0.jpg`: `check_same_stems`), when
  masks are matched to images by stem.
"""

from __future__ import annotations

import re
import warnings
from collections import defaultdict
from pathlib import Path

from PIL import Image

from anomaly.data.files import DataError, _is_image, named

NAMED = 3  # files named in one message; the rest are counted

# words of a folder name that say "defect-free" in inspection (after `_PHRASES`)
GOOD_NAME_WORDS = {"good", "normal", "ok", "okay", "pass", "passed", "nominal", "clean",
                   "defectfree", "nodefect"}  # fmt: skip
# words that add nothing to what a folder holds: a name of good words and these alone
# (good2, "good copy", OK_parts, normal_images) names a folder of good images; any other word
# (not_ok, good_but_scratched, pass_through_hole, clean_room_dust) may name a defect kind
NEUTRAL_WORDS = {"image", "images", "img", "imgs", "pic", "pics", "photo", "photos", "picture",
                 "pictures", "part", "parts", "piece", "pieces", "sample", "samples", "item",
                 "items", "unit", "units", "copy", "copies", "batch", "set", "data", "new",
                 "old", "more", "extra", "only", "all", "and", "the", "of", "v", "x"}  # fmt: skip
# words of a folder of images no one has judged yet ("to check", new_photos, unlabelled): in a
# data set it would be read as a defect kind, every image in it counted as a defect
UNSORTED_WORDS = {"new", "to", "be", "check", "checked", "tocheck", "unchecked", "inspect",
                  "unlabelled", "unlabeled", "unknown", "unsorted", "todo", "incoming", "inbox",
                  "queue", "pending", "review", "unseen", "predict", "score"}  # fmt: skip
# phrases that say "defect-free" with a defect or negating word in them, read as one good word
_PHRASES = (
    (re.compile(r"\b(defect|defects|flaw|fault|error)s? free\b"), "defectfree"),
    (
        re.compile(r"\b(no|non|without|zero) (defect|defects|defective|flaws?|faults?)\b"),
        "nodefect",
    ),
)
# folder names of masks (the layout reads only masks/ and ground_truth/)
MASK_NAME_WORDS = {"mask", "masks", "gt", "groundtruth", "label", "labels", "annotation",
                   "annotations", "annot", "segmentation", "segmentations", "seg"}  # fmt: skip


def name_words(name: str) -> list[str]:
    """The words of a folder name, lower case: split on everything but letters (digits, `_`,
    `-`, spaces) and between camelCase words ("OK_parts2" -> ok, parts; "goodParts" -> good,
    parts), the phrases that say "defect-free" ("defect free", "no defects") made one word."""
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", name)
    text = " ".join(re.findall(r"[a-z]+", spaced.lower()))
    for phrase, word in _PHRASES:
        text = phrase.sub(word, text)
    return text.split()


# words that say a name with a good word in it names a defect kind all the same: a negation
# (not_ok, no_good, NG) or a defect word (good_but_scratched, ok_with_dent)
NOT_GOOD_WORDS = {"not", "no", "non", "un", "bad", "ng", "nok", "nogood", "notok", "defect",
                  "defects", "defective", "fail", "failed", "failure", "reject", "rejected",
                  "anomaly", "anomalies", "anomalous", "abnormal", "fault", "faulty", "flaw",
                  "flawed", "broken", "damaged", "but", "with", "except"}  # fmt: skip


def maybe_good_word(name: str) -> str | None:
    """The good word in a folder name that `good_name_word` leaves to be a defect kind, when no
    word of it says otherwise (`NOT_GOOD_WORDS`): good_backup, good_train, normal_front, or a
    real defect kind such as pass_through_hole. Not refused (which cannot be told from the
    name), but named: a folder of good images there would be scored as defects."""
    words = name_words(name)
    if name == "good" or good_name_word(name) or set(words) & (NOT_GOOD_WORDS | MASK_NAME_WORDS):
        return None
    return next((w for w in words if w in GOOD_NAME_WORDS), None)


def unsorted_word(name: str) -> str | None:
    """The word of folder name `name` that says its images are not judged yet ("to check",
    new_photos, Unlabelled), when its words are such words (`UNSORTED_WORDS`) and words that add
    nothing (`NEUTRAL_WORDS`) alone; None for any other name (new_scratch: a defect kind)."""
    return _word_of(name, UNSORTED_WORDS)


def _word_of(name: str, kind: set[str]) -> str | None:
    """The first word of folder name `name` in `kind`, when its words are such words and
    words that add nothing (`NEUTRAL_WORDS`) alone; else None."""
    words = name_words(name)
    if not set(words) <= kind | NEUTRAL_WORDS:
        return None
    return next((w for w in words if w in kind), None)


def good_name_word(name: str) -> str | None:
    """The word of folder name `name` that says it holds defect-free images, or None.

    The rule: a name is a good folder's when its words (`name_words`) are good words
    (`GOOD_NAME_WORDS`) and words that add nothing (`NEUTRAL_WORDS`), at least one of them good:
    good2, "good copy", good_batch2, OK_parts, normal_images, Defect-Free. Any other word may
    name a defect (not_ok, no_good, good_but_scratched, pass_through_hole, clean_room_dust,
    normal_wear: read as defect kinds, as before). `good` itself is the layout's name, and not
    reported."""
    return None if name == "good" else _word_of(name, GOOD_NAME_WORDS)


# How mask files end their image's stem: MVTec AD's `_mask`, KolektorSDD2's `_GT`, KolektorSDD's
# and DAGM's `_label`
MASK_SUFFIXES = ("_mask", "_gt", "_label", "_labels")


def mask_stem(p: Path) -> str | None:
    """`p`'s image stem when `p` is named like a mask (`<stem>_mask.*`, `<stem>_GT.*`,
    `<stem>_label.*`: `MASK_SUFFIXES`, any case), else None."""
    stem = p.stem
    end = next((e for e in MASK_SUFFIXES if stem.lower().endswith(e) and len(stem) > len(e)), "")
    return stem[: -len(end)] if end else None


# said where a name ending in _GT or _label was taken for a mask: the way out for a photo
_PHOTO = " (a photo, not a mask? Rename it: a name ending in _mask, _GT or _label is a mask's)"


def _looks_like_mask(p: Path) -> bool:
    """Whether `p`, named like a mask (`mask_stem`), is one: named `<stem>_mask` (MVTec AD's
    own), or `_GT`, `_label` and drawn like a mask: at most 8 colours (black and white, a label
    map), or grey and mostly black (one resized with a smoothing filter). A product photo
    `bottle_label.png`, a close-up of its label, is an image. A dark-field photo of a part on
    black is taken for a mask: refused beside its image, with the rename that keeps it (a
    mask scored as a defective image would change the metrics without a word)."""
    if p.stem.lower().endswith("_mask"):
        return True
    try:
        with Image.open(p) as im:
            rgb = im.convert("RGB")
            if rgb.getcolors(maxcolors=8) is not None:
                return True
            r, g, b = rgb.split()
            grey = r.tobytes() == g.tobytes() == b.tobytes()
            return grey and r.histogram()[0] >= 0.5 * r.width * r.height
    except (OSError, SyntaxError, ValueError):
        return False


def _two_valued(p: Path) -> bool:
    """Whether image `p` holds at most two colours (a black-and-white or 0/1 mask): no photo
    does. An unreadable file is not (it is named when read as an image)."""
    try:
        with Image.open(p) as im:
            return im.convert("RGB").getcolors(maxcolors=2) is not None
    except (OSError, SyntaxError, ValueError):
        return False


def _kind_of(stems: list[str], kinds: dict[str, list[Path]], but: str = "") -> str | None:
    """The one defect kind (other than `but`) whose images have all these stems, or None."""
    found = [
        k
        for k, images in kinds.items()
        if k != but and set(stems) <= {p.stem for p in images} and stems
    ]
    return found[0] if len(found) == 1 else None


def check_not_mask_folder(folder: Path, kind_names: set[str], masks_go: Path) -> None:
    """Refuse a defect folder that holds no images but folders of masks (`mask/scratch/`, named
    as a defect kind of the data set, or holding `<stem>_mask.*` files): a folder of masks under
    another name than the one read (`masks_go`). Called before its images are listed, whose
    error ("move their images up") would give the wrong fix."""
    if any(p.is_file() and _is_image(p) for p in folder.iterdir()):
        return
    inner = [p for p in sorted(folder.iterdir()) if p.is_dir() and p.name[0] != "."]
    for d in inner:
        if d.name in kind_names - {folder.name} or any(
            mask_stem(p) and _is_image(p) for p in d.iterdir()
        ):
            raise DataError(
                f"{folder}: this looks like a folder of masks ({d.name}/ in it "
                f"{'is named as a defect kind' if d.name in kind_names else 'holds *_mask files'}"
                f"), read here as a defect kind. Masks go in {masks_go}/<defect>/<stem>_mask.png: "
                f"move its folders into {masks_go}/"
                + ("" if masks_go.exists() else f" (or rename {folder.name}/ to {masks_go.name}/)")
            )


def check_not_masks(kinds: dict[str, list[Path]], parent: Path, masks_go: Path) -> None:
    """Refuse the defect folders of `kinds` (name -> images, in `parent`) that hold masks, whose
    masks would be scored as defective images, naming the folder and where masks go (`masks_go`,
    `<defect>/<stem>_mask.png`). A defect folder is taken for a folder of masks when

    - every image in it is named `<stem>_mask.*` (no defect kind is), or
    - its name is a mask word (`MASK_NAME_WORDS`: mask, gt, labels, annotations, ...) and every
      image in it holds at most two colours, while the good images do not (a defect kind named
      `label` holds photos, or black-and-white images like the good ones, and is read; one image
      of several colours ends the check, so it costs one read or two);

    and an image `<stem>_mask.*` beside the image `<stem>.*` in a defect folder (or in good/:
    `_refuse_masks_among_good`) is a mask among the images (a lone `x_mask.png` is left as an
    image)."""
    good = kinds.get("good") or sorted(  # test/good/ (MVTec AD), else the plain layout's good/
        p for p in (parent / "good").glob("*") if p.is_file() and _is_image(p)
    )
    for kind, images in kinds.items():
        folder = parent / kind
        stems = [mask_stem(p) for p in images]
        if kind == "good":
            _refuse_masks_among_good(folder, images, stems, masks_go)
            continue
        if images and all(stems) and all(map(_looks_like_mask, images)):
            why = f"its {len(images)} image(s) are all named as masks (<stem>_mask, _GT, _label)"
        elif (
            set(name_words(kind)) & MASK_NAME_WORDS
            and images
            and all(map(_two_valued, images))
            and not (good and _two_valued(good[0]))  # a data set of black-and-white images
        ):
            why = f"it is named {kind}/ and its images are black-and-white"
            stems = [p.stem for p in images]
        else:
            if pairs := _mask_pairs(images, stems):
                raise DataError(
                    f"{folder}: {named([f'{m.name} (mask of {i.name}?)' for m, i in pairs], NAMED)}"
                    f" would be read as defective images: masks go in "
                    f"{masks_go / kind}/<stem>_mask.png, not among the images. Move "
                    f"{'it' if len(pairs) == 1 else 'them'} to {masks_go / kind}/" + _PHOTO
                )
            continue
        mask_kind = _kind_of(stems, kinds, but=kind)
        raise DataError(
            f"{folder}: this looks like a folder of masks ({why}), read here as a defect kind, "
            f"its masks scored as defective images. Masks go in {masks_go}/<defect>/"
            f"<stem>_mask.png: move them to {masks_go}/{mask_kind or '<defect>'}/"
            + ("" if mask_kind else " (the folder of their images' defect kind)")
        )


def _mask_pairs(images: list[Path], stems: list[str | None]) -> list[tuple[Path, Path]]:
    """(mask, image) for each of `images` named as the mask (`stems`: `mask_stem`'s) of another
    of them and drawn like one (`_looks_like_mask`)."""
    by_stem = {p.stem: p for p in images}
    return [(p, by_stem[s]) for p, s in zip(images, stems) if s in by_stem and _looks_like_mask(p)]


def _refuse_masks_among_good(
    folder: Path, images: list[Path], stems: list[str | None], masks_go: Path
) -> None:
    """Refuse `<stem>_mask.*` (`_GT`, `_label`) beside `<stem>.*` in a good folder: a mask read
    as a defect-free image, trained on or scored as one (KolektorSDD2's `10000_GT.png` beside
    `10000.png`, moved into train/good/ as told)."""
    if pairs := _mask_pairs(images, stems):
        raise DataError(
            f"{folder}: {named([f'{m.name} (mask of {i.name}?)' for m, i in pairs], NAMED)} "
            f"would be read as {'a defect-free image' if len(pairs) == 1 else 'defect-free images'}"
            f". A good image needs no mask: delete {'it' if len(pairs) == 1 else 'them'}, or, if "
            f"{'its image is' if len(pairs) == 1 else 'their images are'} defective, move "
            f"{'that image' if len(pairs) == 1 else 'those images'} into a defect kind's folder "
            f"and the mask into {masks_go}/<defect>/" + _PHOTO
        )


def warn_loose_masks(mask_root: Path, kinds: dict[str, list[Path]]) -> None:
    """Name the image files lying directly in `mask_root` (masks/ or ground_truth/): only its
    `<defect>/` folders are read, so those masks were ignored without a word, and the pixel
    metrics said there were no masks. Says the folder to move them to when all their stems are
    images of one defect kind."""
    if not mask_root.is_dir():
        return
    loose = sorted(
        p for p in mask_root.iterdir() if p.is_file() and _is_image(p) and p.name[0] != "."
    )
    if not loose:
        return
    kind = _kind_of([mask_stem(p) or p.stem for p in loose], kinds)
    where = f"{mask_root / kind}/" if kind else f"{mask_root}/<defect>/ (their images' kind)"
    one = len(loose) == 1
    warnings.warn(
        f"{mask_root}: {named([p.name for p in loose], NAMED)} {'lies' if one else 'lie'} "
        f"directly in {mask_root.name}/ and {'is' if one else 'are'} not read: masks are read "
        f"from {mask_root.name}/<defect>/<stem>_mask.png only. Move {'it' if one else 'them'} "
        f"into {where}",
        stacklevel=4,
    )


def check_same_stems(kinds: dict[str, list[Path]], parent: Path) -> None:
    """Refuse a defect folder holding two images of one stem (`s_0.png` and `s_0.jpg`) when
    masks are read: masks are matched to images by stem (`<stem>_mask.png`), so one mask would
    be given to either, and the other told to use the same file."""
    for kind, images in kinds.items():
        if kind == "good":  # test/good/: no masks are matched to good images
            continue
        by_stem: dict[str, list[Path]] = defaultdict(list)
        for p in images:
            by_stem[p.stem].append(p)
        same = [names for names in by_stem.values() if len(names) > 1]
        if same:
            said = named([" and ".join(p.name for p in names) for names in same], NAMED, sep="; ")
            first = same[0][-1]
            raise DataError(
                f"{parent / kind}: {said} have one name but for the extension; masks are matched "
                "to images by name (<stem>_mask.png), so one mask would go with either. Rename "
                f"one of each (e.g. {first.name} to {first.stem}_b{first.suffix}), and its mask "
                "to match"
            )
