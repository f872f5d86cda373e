"""A benchmark suite of real-photo anomaly sets, made on demand from photos the packages ship.

The cookies are our own drawings; these sets are real photographs no one here made: scikit-image's
sample photos, scikit-learn's `load_sample_images` and matplotlib's sample data, all read from the
installed packages (nothing is downloaded). Each set takes one photo and cuts it into crops:
training crops from one part of the photo, test crops from another part, with a gap between, at
random positions (and, where the subject has no fixed orientation, random flips and quarter
turns). Normal variation is therefore real: no test image repeats a pixel a training image saw,
and no crop is drawn twice among a split's images of one kind.
Defective test crops get one drawn defect each (see `anomaly.data.photos_defects`): scratches,
stains, foreign material, holes, discolouration and local blur, from 0.1 % to 5 % of the image.

    make_photos("data/photos")     # ROOT/<set>/ in the MVTec AD layout, plus ROOT/manifest.json

scikit-image's `brick`, `grass` and `gravel` photos and the `elpv-dataset` package are kept for
independent evaluation of the project and are never used here.

Each image has its own generator seeded by (seed, set, split, kind, index), so the same seed and
`GENERATOR_VERSION` give byte-identical files with the same package versions (a different JPEG
decoder may change the JPEG sources by a grey level).
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from anomaly.data import generated
from anomaly.data.files import manifest_files
from anomaly.data.photos_defects import KINDS, add_defect

# the suite's table (its sets, their photos and regions; names importable from here too)
from anomaly.data.photos_sets import DIHEDRAL, SETS, SOURCES, PhotoSet, load_photo  # noqa: F401

GENERATOR = "anomaly.data.photos.make_photos"
# 1.1: coin boxes inside the photo; 1.2: no crop (box and transform) twice in a split's kind
GENERATOR_VERSION = "1.2"
COUNTS = {"train": 80, "good": 25, "defect": 7}  # train/good, test/good, test per defect kind
TINY = {"train": 6, "good": 3, "defect": 1}
# images of one kind per set: crops of one photo repeat long before this (a typo of 1e8 made
# 33,000 files in two minutes and went on)
MAX_COUNT = 5000
_F = np.float32


def _positions(spec: PhotoSet, rects) -> list[tuple[int, int, int, int]]:
    """Per region: (x0, y0, number of x positions, number of y positions) of a crop."""
    out = []
    height, width = load_photo(spec.photo).shape[:2]
    for x0, y0, x1, y1 in rects:
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise ValueError(
                f"photo set {spec.name}: region {(x0, y0, x1, y1)} reaches past its "
                f"{width} x {height} px photo; crops there would be cut short"
            )
        nx, ny = x1 - x0 - spec.crop + 1, y1 - y0 - spec.crop + 1
        if nx < 1 or ny < 1:
            raise ValueError(
                f"photo set {spec.name}: region {(x0, y0, x1, y1)} is smaller than "
                f"its {spec.crop} px crop"
            )
        out.append((x0, y0, nx, ny))
    return out


def _inside_circle(spec: PhotoSet, x: int, y: int) -> bool:
    if spec.circle is None:
        return True
    cx, cy, r = spec.circle
    xs, ys = np.array([x, x + spec.crop]) - cx, np.array([y, y + spec.crop]) - cy
    return bool((xs[:, None] ** 2 + ys[None, :] ** 2 <= r * r).all())


def _sample_crop(rng: np.random.Generator, spec: PhotoSet, split: str):
    """A crop box (x0, y0, x1, y1) inside the split's regions, and a transform."""
    regions = _positions(spec, spec.train if split == "train" else spec.test)
    weights = np.array([nx * ny for _, _, nx, ny in regions], float)
    for _ in range(1000):
        x0, y0, nx, ny = regions[rng.choice(len(regions), p=weights / weights.sum())]
        x, y = x0 + int(rng.integers(nx)), y0 + int(rng.integers(ny))
        if _inside_circle(spec, x, y):
            break
    else:
        raise ValueError(f"photo set {spec.name}: no crop fits its regions and circle")
    return (x, y, x + spec.crop, y + spec.crop), str(rng.choice(spec.transforms))


def _check_room(spec: PhotoSet, split: str, wanted: int) -> None:
    """Refused where the split's regions hold fewer distinct crops (box and transform) than
    `wanted` (coins' 12 training coins hold 972: asking for more would repeat
    images, and a held-out copy of a training image makes a threshold look tighter than it is)."""
    regions = _positions(spec, spec.train if split == "train" else spec.test)
    many = sum(nx * ny for _, _, nx, ny in regions) * len(spec.transforms)
    if wanted > many:
        raise ValueError(
            f"photo set {spec.name}: its {split} regions hold at most {many} distinct crops, "
            f"fewer than the {wanted} images asked for; ask for fewer (--train/--good/--defect)"
        )


def _new_crop(rng: np.random.Generator, spec: PhotoSet, split: str, seen: set):
    """A crop box and transform of the split unlike those in `seen` (the earlier images of its
    kind): drawn again, from the image's own generator, where it repeats one, so that an image
    that repeats none is drawn as before."""
    for _ in range(10_000):
        box, code = _sample_crop(rng, spec, split)
        if (box, code) not in seen:
            seen.add((box, code))
            return box, code
    raise ValueError(
        f"photo set {spec.name}: 10,000 draws found no {split} crop unlike the {len(seen)} "
        "made before; ask for fewer images (--train/--good/--defect)"
    )


def _transform(a: np.ndarray, code: str) -> np.ndarray:
    a = np.rot90(a, k=int(code[1:]) // 90)
    return np.ascontiguousarray(a[:, ::-1] if code[0] == "m" else a)


def render_crop(spec: PhotoSet, box, code: str, size: int) -> np.ndarray:
    """The crop as float32 [size, size, C] in [0, 1] (C = 1 for greyscale photos)."""
    photo = load_photo(spec.photo)
    x0, y0, x1, y1 = box
    crop = _transform(photo[y0:y1, x0:x1], code)
    if crop.shape[0] != size:
        crop = np.asarray(Image.fromarray(crop).resize((size, size), Image.LANCZOS))
    crop = crop.astype(_F) / 255
    return crop[..., None] if crop.ndim == 2 else crop


def _to_uint8(image: np.ndarray) -> np.ndarray:
    image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    return image[..., 0] if image.shape[-1] == 1 else image


def _set_id(name: str) -> int:
    return zlib.crc32(name.encode())  # stable across runs and Python versions


def _make_set(root: Path, spec: PhotoSet, seed: int, counts: dict, size: int) -> dict:
    donors = [load_photo(key) for key in SOURCES if key != spec.photo]
    donors = [d for d in donors if min(d.shape[:2]) >= size]
    jobs = [("train", "good", i) for i in range(counts["train"])]
    jobs += [("test", "good", i) for i in range(counts["good"])]
    jobs += [("test", kind, i) for kind in spec.kinds for i in range(counts["defect"])]
    # no crop twice among one split's images of one kind (a defect may fall on a good test
    # image's crop); more images asked for therefore keep the first ones, byte for byte
    images, seen = {}, {(split, kind): set() for split, kind, _ in jobs}
    for split, kind, i in jobs:
        kind_id = 0 if kind == "good" else 1 + KINDS.index(kind)
        rng = np.random.default_rng([seed, _set_id(spec.name), split == "test", kind_id, i])
        box, code = _new_crop(rng, spec, split, seen[split, kind])
        image = render_crop(spec, box, code, size)
        rel = f"{split}/{kind}/{i:03d}.png"
        entry = {
            "split": split,
            "kind": kind,
            "crop": list(box),
            "transform": code,
            "mask": None,
            "defect_area": 0,
            "area_fraction": 0.0,
        }
        if kind != "good":
            image, mask, facts = add_defect(rng, image, kind, donors)
            entry["mask"] = f"ground_truth/{kind}/{i:03d}_mask.png"
            entry["defect_area"] = int(mask.sum())
            entry["area_fraction"] = round(entry["defect_area"] / size**2, 6)
            entry.update(facts)
            generated.write_png(mask.astype(np.uint8) * 255, root / spec.name / entry["mask"])
        generated.write_png(_to_uint8(image), root / spec.name / rel)
        images[rel] = entry
    photo = load_photo(spec.photo)
    package, call = SOURCES[spec.photo]
    return {
        "photo": spec.photo,
        "package": package,
        "load": call,
        "photo_shape": list(photo.shape),
        "colour": photo.ndim == 3,
        "kind": spec.kind,
        "note": spec.note,
        "crop": spec.crop,
        "size": size,
        "transforms": list(spec.transforms),
        "regions": {"train": [list(r) for r in spec.train], "test": [list(r) for r in spec.test]},
        "circle": list(spec.circle) if spec.circle else None,
        "defect_kinds": list(spec.kinds),
        "counts": {
            "train/good": counts["train"],
            "test/good": counts["good"],
            **{f"test/{k}": counts["defect"] for k in spec.kinds},
        },
        "images": images,
    }


def make_photos(
    root: str | Path,
    seed: int = 0,
    overwrite: bool = False,
    size: int | None = None,
    train: int | None = None,
    good: int | None = None,
    defect: int | None = None,
    tiny: bool = False,
    sets: list[str] | tuple[str, ...] | None = None,
    progress: bool = False,
) -> dict:
    """Write the photo suite, one MVTec AD folder per set, and return its manifest.

    Layout: `ROOT/<set>/train/good/000.png`, `ROOT/<set>/test/good/000.png`,
    `ROOT/<set>/test/<kind>/000.png`, `ROOT/<set>/ground_truth/<kind>/000_mask.png` (L mode,
    255 = defect) and `ROOT/manifest.json`.

    Args:
        root: folder to write. Writing the same suite again is fine. A folder whose
            `manifest.json` says `make_photos` wrote it is replaced with `overwrite=True` (only
            its set folders and manifest are deleted); any other non-empty folder is refused.
            The sets are written into a hidden staging folder inside `root` and appear when all
            are complete, the manifest last; run an interrupted call again to complete it.
        seed: non-negative; the same seed gives byte-identical files (see the module docstring).
        size: side of the saved images; None = each set's own (128-256 px, see `SETS`).
        train, good, defect: training images, good test images and test images per defect kind
            (6 kinds) of every set; None = `COUNTS` (80, 25, 7), or `TINY` (6, 3, 1) if `tiny`.
        tiny: small counts, for tests.
        sets: names of the sets to make (default all of `SETS`).
        progress: show a tqdm progress bar over the sets.

    Returns:
        The manifest, also saved as `manifest.json`: generator and version, seed, counts and, per
        set, the photo and its package, the kind of set, crop and image size, the train and test
        regions, and per image its split, defect kind, crop box, transform, mask and defect area.
    """
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    if size is not None and (isinstance(size, bool) or int(size) != size or size < 32):
        raise ValueError(f"size must be a whole number of pixels, at least 32; got {size!r}")
    base = TINY if tiny else COUNTS
    counts = {
        "train": base["train"] if train is None else train,
        "good": base["good"] if good is None else good,
        "defect": base["defect"] if defect is None else defect,
    }
    for key, value in counts.items():
        if (
            isinstance(value, bool)
            or int(value) != value
            or value < 0
            or (key == "train" and value < 1)
            or value > MAX_COUNT
        ):
            raise ValueError(
                f"{key} must be a whole number, at least {int(key == 'train')} and at most "
                f"{MAX_COUNT}; got {value!r}"
            )
    names = [s.name for s in SETS]
    unknown = sorted(set(sets or ()) - set(names))
    if unknown:
        raise ValueError(f"unknown photo sets {unknown}; choose from {names}")
    chosen = [s for s in SETS if sets is None or s.name in sets]
    for spec in chosen:  # before any file is written
        _check_room(spec, "train", counts["train"])
        _check_room(spec, "test", max(counts["good"], counts["defect"]))
    manifest = {
        "generator": GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "size": size,
        "counts": {k: int(v) for k, v in counts.items()},
        "defect_kinds": list(KINDS),
        "sets": {},
    }
    root = Path(os.path.expanduser(root))  # "~/data" is home's, not a folder named ~
    names = [spec.name for spec in chosen]
    arguments = {k: v for k, v in manifest.items() if k != "sets"} | {"sets": names}
    generated.check_place(root, "photo suite")
    every = [spec.name for spec in SETS]
    made = _made(root, generated.read_manifest(root / "manifest.json"))
    if (done := generated.recover(root, "make-photos", arguments, every, made)) is not None:
        return done  # an interrupted run of this command had written every image
    retire = _check_root(root, manifest, names, overwrite)
    previous = generated.read_manifest(root / "manifest.json")
    # None on a non-empty root: the same suite again, and _check_root refused any edited file
    if retire is None and generated.complete(root, previous):
        return previous  # every file there as written: nothing to do

    def write(folder: Path) -> dict:
        from tqdm.auto import tqdm

        for spec in tqdm(chosen, desc="photo sets", disable=not progress):
            manifest["sets"][spec.name] = _make_set(
                folder, spec, int(seed), counts, size or spec.size
            )
        return manifest

    return generated.write_staged(root, "make-photos", arguments, write, names, retire)


def counts_said(manifest: dict) -> dict:
    """A suite's counts as `make-photos` says them: its manifest's "counts" are per set, and
    "defect" per defect kind ({"train": 80, "good": 25, "defect": 7} read as 7 defects)."""
    counts, sets = manifest.get("counts") or {}, manifest.get("sets") or {}
    kinds = sorted({len(s.get("defect_kinds") or ()) for s in sets.values()})
    return {
        "sets": len(sets),
        "each set: train/good": counts.get("train"),
        "test/good": counts.get("good"),
        "test/<defect kind>": counts.get("defect"),
        "defect kinds": kinds[0] if len(kinds) == 1 else kinds,
    }


def _check_root(root: Path, manifest: dict, names: list[str], overwrite: bool):
    """Refuse to write into a folder the generator did not make; return the folders and files
    of the suite it made there that this one replaces, or None."""
    if not root.exists() or not any(root.iterdir()):
        return None
    old = root / "manifest.json"
    previous = generated.read_manifest(old)
    if not isinstance(previous, dict) or previous.get("generator") != GENERATOR:
        who = (
            "its manifest.json is another tool's (make-cookies'?)"
            if isinstance(previous, dict)
            else "it holds no manifest.json"
        )
        raise ValueError(
            f"{root} is not empty and was not written by make-photos ({who}); choose an "
            "empty or new folder for the photo suite, or move the files away"
        )
    settings = {k: v for k, v in manifest.items() if k != "sets"}
    same = {k: previous.get(k) for k in settings} == settings
    if same and sorted(previous.get("sets", {})) == sorted(names):
        generated.check_unedited(root, previous, "make-photos", "making it again")
        return None  # the same suite again: files are rewritten byte for byte
    if not overwrite:
        changed = generated.settings_changed(previous, settings) or _sets_changed(previous, names)
        raise ValueError(
            f"{root} holds a photo suite made with other settings ({changed}); pass "
            "--overwrite (overwrite=True) to replace it, or choose another folder"
        )
    made, sets = _made(root, previous) or set(), previous.get("sets") or {}
    theirs = [name for name in names if name not in sets and (root / name).exists()]
    if theirs:
        raise ValueError(
            f"{root / theirs[0]} is not a set of the suite there (its manifest.json does not "
            "list it), so it will not be replaced; move it away, or choose another folder"
        )
    folders = [name for name in sets if (root / name).exists()]
    generated.check_made(root, folders, made)
    generated.check_unedited(root, previous, "make-photos", "--overwrite")
    return folders, made


def _made(root: Path, previous: dict | None) -> set[str] | None:
    """The files the suite's manifest `previous` (read from `root`) lists; None when it is none
    of ours."""
    if not isinstance(previous, dict) or previous.get("generator") != GENERATOR:
        return None
    made, sets = set(), previous.get("sets")
    for name, info in (sets if isinstance(sets, dict) else {}).items():
        if name not in {spec.name for spec in SETS}:  # never "..", "/x"
            raise ValueError(
                f"{root / 'manifest.json'} names a set {name!r} this generator never makes; "
                "nothing was deleted"
            )
        images = info.get("images") if isinstance(info, dict) else None
        made |= manifest_files(images if isinstance(images, dict) else {}, prefix=f"{name}/")
    return made


def _sets_changed(previous: dict, names) -> str:
    """'sets moon -> moon, page': the sets of a suite made before against those asked for."""
    before = previous.get("sets") if isinstance(previous.get("sets"), dict) else {}
    return f"sets {', '.join(sorted(map(str, before))) or 'none'} -> {', '.join(sorted(names))}"
