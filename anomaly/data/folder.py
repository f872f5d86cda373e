"""`AnomalyDataset`: images (and optional defect masks) from a folder, checked as it is read.

Two layouts are read. The MVTec AD layout (Bergmann et al., "MVTec AD: A Comprehensive
Real-World Dataset for Unsupervised Anomaly Detection", CVPR 2019):

    ROOT/train/good/*                      defect-free training images
    ROOT/test/good/*                       defect-free test images
    ROOT/test/<defect>/*                   defective test images, one folder per kind
    ROOT/ground_truth/<defect>/<stem>_mask.png   optional masks, non-zero = defect
                                                 (`<stem>.png` is accepted too)

and the plain layout most people have on day one:

    ROOT/good/*                            defect-free images
    ROOT/<defect>/*                        defective images, one folder per kind
    ROOT/masks/<defect>/<stem>_mask.png    optional (or ROOT/ground_truth/<defect>/...)

Problems in the folder (a missing or empty folder, an unreadable image, a mask that fits no
image, a broken link) raise `DataError` naming the file and how to fix it; defective images
without a mask, and masks of good images (ignored), are named in warnings (`input_checks`).
"""

from __future__ import annotations

import copy
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from anomaly.data.files import (
    IMAGE_EXTENSIONS,
    DataError,
    _is_image,
    broken_link,
    named,
    nfc,
    plain_test_count,
    refuse_control_names,
    scan_images,
    skipped,
)
from anomaly.data.generated import interrupted
from anomaly.data.image_kind import (
    displayed_size,
    empty_file,
    named_warnings,
    orientation,
    unreadable_fix,
)
from anomaly.data.input_checks import (
    MASK_FOLDERS,
    check_good_name,
    check_mask_header,
    check_mvtec_root,
    check_not_split,
    no_layout,
    warn_good_masks,
    warn_loose_images,
    warn_lossy_masks,
    warn_missing_masks,
    warn_turned,
    warn_validation,
)
from anomaly.data.input_checks import subfolders as _subfolders
from anomaly.data.layout_names import (
    check_not_mask_folder,
    check_not_masks,
    check_same_stems,
    mask_stem,
    warn_loose_masks,
)
from anomaly.data.masks import (
    check_defect_mask,
    load_mask,  # noqa: F401  (re-exported: anomaly.data.load_mask)
    mask_tensor,
    read_mask,
)
from anomaly.data.reading import (  # noqa: F401  (re-exported, where they used to live)
    image_tensor,
    image_to_array,
    load_image,
    read_image,
)
from anomaly.onnx_checks import skipped_silently


@dataclass(frozen=True)
class Sample:
    """One image of the data set: where it is, what it is, and where its mask is (if any)."""

    path: str
    label: int  # 0 = good, 1 = defective
    defect: str  # "good" or the defect folder name
    mask_path: str | None = None


# --- finding the files ------------------------------------------------------------------------


def _list_images(folder: Path, what: str) -> list[Path]:
    """Sorted image files of `folder`; warns about anything else; raises if there are none."""
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found. Create it and put the {what} in it.")
    folders = "folders inside are not read; move their images up"
    images, broken, stray = scan_images(folder, folders)
    refuse_control_names(folder, [folder, *images, *broken])  # a kind's folder too
    if broken:
        raise DataError(f"{broken[0]}: {broken_link(broken[0])}")
    if not images:
        holds = f" It holds {skipped(stray, folders)}." if stray else ""
        raise DataError(
            f"{folder}: no images in this folder. Put the {what} in it as "
            f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} files, or remove the folder.{holds}"
        )
    return images


def _match_masks(mask_dir: Path, images: list[Path], rel: str) -> dict[Path, Path]:
    """Map each image to its mask in `mask_dir`; a mask that fits no image is an error. An
    image's mask may also be a folder named as the image (MVTec LOCO AD: `<stem>/000.png`, ...,
    one per defect), whose masks `read_mask` joins; a folder named as no image is an error."""
    by_stem = {nfc(p.stem): p for p in images}  # ü as one character or as u + ¨ (macOS)
    folders = _subfolders(mask_dir)
    found = {by_stem[nfc(d.name)]: d for d in folders if nfc(d.name) in by_stem}
    if found:  # LOCO's layout: its other folders are no one's masks
        if stray := [d for d in folders if nfc(d.name) not in by_stem]:
            raise DataError(
                f"{stray[0]}: this folder of masks matches no image. Expected an image named "
                f"{stray[0].name}.* in {rel}/ (the masks of image <stem>.png go in a folder "
                "<stem>/, or in one file <stem>_mask.png); rename or delete the folder."
            )
        files = [  # ._x.png (macOS), Thumbs.db: no masks
            p
            for p in mask_dir.iterdir()
            if p.is_file() and _is_image(p) and not skipped_silently(p.name)
        ]
    else:
        files = _list_images(mask_dir, "masks (non-zero pixels = defect)")
    for m in sorted(files):
        stem = mask_stem(m) or m.stem  # <stem>_mask, any case (MVTec AD's: _mask)
        image = by_stem.get(nfc(stem)) or by_stem.get(nfc(m.stem))
        if image is None:
            cased = [p.name for k, p in by_stem.items() if k.lower() == nfc(stem).lower()]
            raise DataError(
                f"{m}: this mask matches no image. Expected an image named {stem}.* in {rel}/ "
                f"(mask <stem>_mask.png goes with image <stem>.png); rename or delete the mask."
                + (
                    f" ({cased[0]} there differs only in case: names match exactly)"
                    if cased
                    else ""
                )
            )
        if image in found:
            raise DataError(
                f"{m}: {image.name} already has the mask {found[image].name}; keep only one."
            )
        found[image] = m
    return found


def _defect_kinds(folders: list[Path], what: str, masks_go: Path) -> dict[str, list[Path]]:
    """Each folder's images (`what`: their words); masks in a kind's place refused (`masks_go`)."""
    kinds = {}
    for d in folders:
        check_not_mask_folder(d, {f.name for f in folders}, masks_go)
        kinds[d.name] = _list_images(d, what.format(d.name))
    if folders:
        check_not_masks(kinds, folders[0].parent, masks_go)
    return kinds


# --- the data set -----------------------------------------------------------------------------


class AnomalyDataset(Dataset):
    """Images of one split as a torch `Dataset` of dicts, for torch's default collate.

    Each item is::

        {"image": float32 [channels, size, size] in [0, 1],
         "mask": float32 [size, size] in {0, 1} (zeros for good images and missing masks),
         "label": int (0 good, 1 defective), "defect": str ("good" or the folder name),
         "path": str (absolute path of the image),
         "mask_known": bool (False for a defective image with no mask file)}

    Order is deterministic: "good" first, then defect folders by name, files by name.

    In the MVTec AD layout (`ROOT/train/good`, `ROOT/test/<kind>`, see the module docstring) the
    splits are the folders. In the plain layout (`ROOT/good`, `ROOT/<defect>`) the split is a
    fixed rule, the same on every machine: the good images, sorted by name, are split evenly by
    position, `round(n * holdout)` of them (at least one when there are two or more) go to test
    and the rest to train; with the default `holdout=0.2` that is about every 5th image (of 10:
    the 5th and 10th; of 12: the 6th and 12th). Every defect image is in test. Masks for the plain layout are read from
    `ROOT/ground_truth/<defect>/` if that folder exists, else `ROOT/masks/<defect>/`.

    Construction lists the files and opens every header (cheap), so a non-image or a mask whose
    size differs from its image fails at once; a file truncated after its header fails when it
    is read (`check()` reads them all). To hold out a validation set, use `subset(indices)`.

    Args:
        root: the data folder.
        split: "train" or "test".
        size: images and masks are resized to size x size.
        channels: 1 (grayscale) or 3 (RGB).
        cache: keep each decoded, resized image in memory after its first read. Cached tensors
            (and the one all-zero mask of images without a mask) are returned as they are: do
            not modify an item's tensors in place.
        holdout: plain layout only, the fraction of good images that go to test.
        decode: "draft" decodes large JPEGs at a reduced scale (`load_image`), "full" whole.
        trained: plain layout only, the good images a run trained on or held out (names
            relative to the root, "good/x.png"): the train split is then those, and the test
            split's good images all the others, so good images added since training are tested,
            never a trained one, and the run's own split still reads (`train --resume`).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        size: int = 256,
        channels: int = 3,
        cache: bool = True,
        holdout: float = 0.2,
        trained: set[str] | None = None,
        decode: str = "full",
    ) -> None:
        if split not in ("train", "test"):
            raise DataError(f"split must be 'train' or 'test', not {split!r}")
        if channels not in (1, 3):
            raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), not {channels!r}")
        if not isinstance(size, int) or size < 1:
            raise DataError(f"size must be a positive int, not {size!r}")
        if not 0.0 <= holdout < 1.0:
            raise DataError(f"holdout must be in [0, 1), not {holdout!r}")
        self.root = Path(os.path.abspath(os.path.expanduser(root)))  # "~/data": home's
        self.split, self.size, self.channels, self.cache = split, size, channels, cache
        self.holdout, self.trained, self.decode = holdout, trained, decode
        if self.root.is_file():
            raise DataError(
                f"{self.root} is a file; give the data set's folder (the one that holds train/ "
                "and test/, or good/)"
            )
        if not self.root.is_dir():
            raise DataError(
                f"{self.root}: data folder not found. Check the path (data that moved since a "
                "run was trained: give its new place with --data NEW_PATH), or make a synthetic "
                f"set with anomaly.data.make_cookies('{root}').{interrupted(self.root)}"
            )
        if (self.root / "train").is_dir() or (self.root / "test").is_dir():
            self.layout = "mvtec"
            self.samples = self._scan_mvtec()
        elif (self.root / "good").is_dir():
            check_not_split(self.root)  # data/bottle/test/ itself: read as a plain data set
            self.layout = "folder"
            self.samples = self._scan_plain()
        else:
            hint = no_layout(self.root) + interrupted(self.root)
            raise DataError(f"{self.root}: no train/good/ or good/ folder. {hint}")
        self._check_headers()
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._zeros: torch.Tensor | None = None

    # --- scanning -----------------------------------------------------------------------------
    def _samples(self, images: list[Path], defect: str, masks: dict[Path, Path]) -> list[Sample]:
        label = 0 if defect == "good" else 1
        return [
            Sample(str(p), label, defect, str(masks[p]) if p in masks and label else None)
            for p in images
        ]

    def _masks_for(
        self, mask_root: Path | None, kinds: dict[str, list[Path]], rel: str
    ) -> dict[Path, Path]:
        """Masks of every defect kind under `mask_root`; a mask folder with no kind is an error."""
        if mask_root is None or not mask_root.is_dir():
            return {}
        warn_loose_masks(mask_root, kinds)  # masks/*.png: not read
        masked = {d.name for d in _subfolders(mask_root)}  # kinds whose masks match by stem
        check_same_stems({k: v for k, v in kinds.items() if k in masked}, Path(self.root, rel))
        masks: dict[Path, Path] = {}
        for d in _subfolders(mask_root):
            if d.name == "good":  # good images have no defect; their masks are zeros
                warn_good_masks(d, f"{rel}/<defect>/")  # one that marks a defect is named
                continue
            if d.name not in kinds:
                raise DataError(
                    f"{d}: masks for a defect kind with no images; expected a folder "
                    f"{rel}/{d.name}/ with the images. Rename or delete the mask folder."
                )
            masks.update(_match_masks(d, kinds[d.name], f"{rel}/{d.name}"))
        return masks

    def _scan_mvtec(self) -> list[Sample]:
        good = self.root / self.split / "good"
        check_mvtec_root(self.root)
        check_good_name(self.root / self.split)
        warn_loose_images(self.root / self.split)
        if self.split == "train":
            if not good.is_dir():
                raise DataError(
                    f"{good}: folder not found. The MVTec AD layout needs the defect-free "
                    f"training images in ROOT/train/good/." + interrupted(self.root)
                )
            images = _list_images(good, "defect-free training images")
            warn_validation(self.root)
            check_not_masks({"good": images}, good.parent, self.root / "ground_truth")
            return self._samples(images, "good", {})
        test = self.root / "test"
        if not test.is_dir():
            raise DataError(
                f"{test}: folder not found. Put test images in ROOT/test/good/ and "
                f"ROOT/test/<defect>/ (one folder per defect kind)."
            )
        folders = _subfolders(test)
        if not folders:
            raise DataError(
                f"{test}: no folders in it. Put test images in ROOT/test/good/ "
                f"and ROOT/test/<defect>/ (one folder per defect kind)."
            )
        folders.sort(key=lambda p: (p.name != "good", p.name))
        kinds = _defect_kinds(folders, "'{}' test images", self.root / "ground_truth")
        masks = self._masks_for(self.root / "ground_truth", kinds, "test")
        samples: list[Sample] = []
        for kind, images in kinds.items():
            samples += self._samples(images, kind, masks)
        warn_missing_masks(samples, self.root / "ground_truth")
        return samples

    def _scan_plain(self) -> list[Sample]:
        check_good_name(self.root)
        good = _list_images(self.root / "good", "defect-free images")
        check_not_masks({"good": good}, self.root, self.root / "masks")
        if self.trained is not None:  # a run's own record: it learned those, tests the others
            test = self.split == "test"
            trained = {nfc(name) for name in self.trained}  # a Mac's copy: pièce as e + ´
            split_good = [p for p in good if (nfc(f"good/{p.name}") in trained) != test]
        else:
            n = len(good)
            n_test = plain_test_count(n, self.holdout)
            test_idx = {int((j + 1) * n / n_test) - 1 for j in range(n_test)}
            test = self.split == "test"
            split_good = [p for i, p in enumerate(good) if (i in test_idx) == test]
        samples = self._samples(split_good, "good", {})
        if self.split == "train":
            return samples
        warn_loose_images(self.root)
        mask_root = next((self.root / m for m in MASK_FOLDERS if (self.root / m).is_dir()), None)
        kinds = _defect_kinds(
            [d for d in _subfolders(self.root) if d.name not in ("good", *MASK_FOLDERS)],
            "'{}' defect images",
            mask_root or self.root / "masks",
        )
        masks = self._masks_for(mask_root, kinds, str(self.root))
        for kind, images in kinds.items():
            samples += self._samples(images, kind, masks)
        warn_missing_masks(samples, mask_root)
        return samples

    def _check_headers(self) -> None:
        lossy, turned, broken = [], [], []  # broken: every unreadable file, named at once
        for s in self.samples:
            try:
                with named_warnings(s.path), Image.open(s.path) as im:
                    image_size, turn = displayed_size(im), orientation(im)
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
                why = (
                    empty_file(s.path)
                    or f"is not a readable image ({e}). {unreadable_fix(e, s.path)}"
                )
                broken.append((s.path, f"{s.path} {why}"))
                continue
            if s.mask_path is not None:
                try:
                    if check_mask_header(s.mask_path, s.path, image_size, turn):
                        lossy.append(str(s.mask_path))
                except DataError as e:  # another size than its image's, or unreadable
                    broken.append((s.mask_path, str(e)))
                if turn != 1:
                    turned.append((s.path, turn))
        if broken:  # one at a time, a folder of 30 damaged copies took 30 runs to find
            first = broken[0][1].rstrip(".")
            more = f". Not usable either: {named([str(p) for p, _ in broken[1:]], 3)}"
            raise DataError(first + (more if len(broken) > 1 else "."))
        warn_lossy_masks(lossy)
        warn_turned(turned)

    # --- the Dataset ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.samples)

    def load(self, s: Sample) -> tuple[torch.Tensor, torch.Tensor]:
        """The (image, mask) tensors of one sample, from the cache when there."""
        hit = self._cache.get(s.path)
        if hit is not None:
            return hit
        image = load_image(s.path, self.size, self.channels, self.decode)
        if s.mask_path is not None:  # a defective image's: an empty one is an error
            mask = read_mask(s.mask_path)
            check_defect_mask(mask, s.mask_path, s.path)
            mask = mask_tensor(mask, self.size, s.mask_path)
        else:  # one all-zero mask shared by every image without one (read-only, as cached ones)
            if self._zeros is None:
                self._zeros = torch.zeros(self.size, self.size)
            mask = self._zeros
        if self.cache:
            self._cache[s.path] = (image, mask)
        return image, mask

    def __getitem__(self, index: int) -> dict:
        s = self.samples[index]
        image, mask = self.load(s)
        # mask_known: False for a defective image without a mask file (its zeros mean "unknown",
        # not "no defect"), so pixel metrics leave it out
        return {
            "image": image,
            "mask": mask,
            "label": s.label,
            "defect": s.defect,
            "path": s.path,
            "mask_known": s.label == 0 or s.mask_path is not None,
        }

    def subset(self, indices) -> AnomalyDataset:
        """A view of these samples, in the order given, sharing this data set's cache."""
        view = copy.copy(self)
        view.samples = [self.samples[int(i)] for i in indices]
        return view

    def check(self) -> None:
        """Read every image and mask once (filling the cache); one DataError lists every bad file."""
        bad = []
        for s in self.samples:
            try:
                self.load(s)
            except DataError as e:
                bad.append(str(e))
        if bad:
            raise DataError(f"{len(bad)} unusable files:\n" + "\n".join(bad))

    # --- views ---------------------------------------------------------------------------------
    @property
    def paths(self) -> list[str]:
        return [s.path for s in self.samples]

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    @property
    def defects(self) -> list[str]:
        return [s.defect for s in self.samples]

    @property
    def has_masks(self) -> bool:
        return any(s.mask_path is not None for s in self.samples)

    def counts(self) -> dict[str, int]:
        """Images per defect kind ("good" first), e.g. {"good": 40, "crack": 12}."""
        return dict(Counter(self.defects))

    def __repr__(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in self.counts().items())
        return (
            f"AnomalyDataset('{self.root}', split={self.split!r}, {len(self)} images "
            f"({kinds}), size={self.size}, channels={self.channels}, "
            f"masks={'yes' if self.has_masks else 'no'})"
        )
