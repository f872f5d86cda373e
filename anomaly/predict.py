"""`predict`: a trained run's verdicts on new image files (files or folders of them), with an
overlay per image; the files are decoded in batches as `score` decodes a test set.

Split from `anomaly.pipeline` (which trains, scores and sets thresholds); `predict --onnx`
(`anomaly.export`) lists and names files the same way.
"""

from __future__ import annotations

import errno
import itertools
import os
import warnings
from pathlib import Path

import torch

from anomaly.config import Config
from anomaly.data.files import (
    IMAGE_EXTENSIONS,
    DataError,
    _is_image,
    broken_link,
    check_not_in_data,
    named,
    scan_images,
    skipped,
)
from anomaly.data.image_kind import draft_size
from anomaly.data.image_unlike import DAMAGED, unlike_each, unlike_lines
from anomaly.onnx_checks import score_text
from anomaly.overlays import png_bytes, verdict
from anomaly.pipeline import decoding_loader, load_run, trained_images
from anomaly.prefetch import in_threads
from anomaly.runs import RunDir, RunError
from anomaly.safe_files import FULL_DISK, fitting_name, save_png_new, writable_folder
from anomaly.terminal import printable

# how PNG, JPEG, GIF, TIFF, WebP and BMP files start: bytes that do are an image, not a path
_IMAGE_STARTS = (b"\x89PNG", b"\xff\xd8", b"GIF8", b"II*\x00", b"MM\x00*", b"RIFF", b"BM")
SUBFOLDERS = "not searched; add --recursive, or pass each itself, e.g. {name}"


def expand_images(images: list[str | Path] | str | Path) -> list[Path]:
    """Paths as given (one path: that one), with each folder replaced by the images in it and its
    broken links (sorted; `predict` names a broken link's file and why, and scores the rest), or
    kept when it holds none (`predict` then says so); each file once. A warning names every
    other entry of a folder (sub-folders, files of other types): none is skipped without a word."""
    if isinstance(images, (str, os.PathLike)):  # one path, not its letters
        images = [images]
    elif isinstance(images, bytes) or not hasattr(images, "__iter__"):  # bytes: their numbers
        images = [images]  # (a PIL image, a number: named below)
    out: list[Path] = []
    for item in images:
        if isinstance(item, bytes) and (len(item) > 4096 or item.startswith(_IMAGE_STARTS)):
            raise TypeError(
                f"an image's content ({len(item):,} bytes) was given: wrap it, io.BytesIO(data)"
            )
        if isinstance(item, bytes):
            raise TypeError(f"the path {item!r} is given as bytes: give it as a str or a Path")
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(
                f"images are given as paths of image files or folders, file objects or PIL "
                f"images (in a list or tuple), not as a {type(item).__name__}; or score a "
                "float tensor [B, C, H, W] in [0, 1] with anomaly.load_run(RUN).predict_batch"
            )
        if not str(item).strip():  # Path("") is ".": the working folder would be scored
            raise DataError("an empty image path was given; name image files or folders")
        p = Path(os.path.expanduser(item))  # "~/photos": home's; "~draft.png" (no such user) kept
        if p.is_dir():
            found, broken, _ = scan_images(p, SUBFOLDERS)
            out += sorted(found + broken) or [p]  # an empty folder: reading it says so
        else:
            out.append(p)
    once: dict[str, Path] = {}  # a file given twice (or with its folder) is scored once
    for p in out:
        once.setdefault(os.path.abspath(p), p)
    _warn_own_overlays(list(once.values()))
    return list(once.values())


def image_tree(images: list[str | Path]) -> list[Path]:
    """`predict --recursive`: each folder of `images` replaced by the images in it and in every
    folder below it (hidden ones left out, links to folders named), folder by folder in name order;
    a tree with none kept as the folder (reading it says so); files as given. Entries of a
    folder that are not images are named, as `expand_images` names them."""
    out: list[Path] = []
    for item in images:
        if not Path(item).is_dir():
            out.append(Path(item))
            continue
        found, linked = [], []
        for folder, dirs, _ in os.walk(item):  # links to folders are not followed: named
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            linked += [Path(folder, d) for d in dirs if Path(folder, d).is_symlink()]
            with warnings.catch_warnings():  # its sub-folders are searched: said below if not
                warnings.simplefilter("ignore")
                images_here, broken, stray = scan_images(Path(folder), SUBFOLDERS)
            if files := [p for p in stray if not p.is_dir()]:
                warnings.warn(f"{folder}: skipping {skipped(files, SUBFOLDERS)}", stacklevel=2)
            found += sorted(images_here + broken)
        if linked:
            warnings.warn(
                f"{named(map(str, linked), 3)}: {'a link' if len(linked) == 1 else 'links'} to "
                "a folder, not searched (--recursive follows no links, which may loop or reach "
                "far); give such a folder as an argument of its own to predict its images",
                stacklevel=2,
            )
        out += found or [Path(item)]
    return out


def _warn_own_overlays(paths: list[Path]) -> None:
    """Name inputs that are overlays this package wrote (`<stem>_overlay.png` in a run's
    predict/ or overlays/ folder, or an export's `<stem>_predict/`): pictures of scores, not
    photos of parts, so their scores mean nothing."""
    ours = [
        p
        for p in paths
        if p.name.endswith("_overlay.png")
        and (p.parent.name in ("predict", "overlays") or p.parent.name.endswith("_predict"))
    ]
    if ours:
        warnings.warn(
            f"{named([str(p) for p in ours], 3)}: {len(ours)} of the images given "
            f"{'is an overlay' if len(ours) == 1 else 'are overlays'} that anomaly wrote, not "
            "photos of parts; their scores mean nothing. Give the photos themselves",
            stacklevel=3,
        )


def unreadable(path: Path) -> str | None:
    """Why `path` is not scored before it is opened (a missing file, a broken link, a file of a
    type a folder's listing skips: one rule for files named and files found), or None."""
    if not path.exists():
        return f"{path}: " + (broken_link(path) if path.is_symlink() else "no such file")
    if path.is_dir():  # a folder `expand_images` found no image in
        stray = scan_images(path)[2]
        return f"{path} is a folder with no images ({', '.join(IMAGE_EXTENSIONS)}) in it" + (
            f"; it holds {skipped(stray, SUBFOLDERS)}" if stray else "; give image files"
        )
    if not path.is_file():  # a pipe would be waited on for ever, a device read without end
        return f"{path} is not a file (a pipe or a device); give image files"
    if not _is_image(path):
        return (
            f"{path}: not an image file this package reads; images must end in "
            f"{', '.join(IMAGE_EXTENSIONS)}; save it as PNG to score it"
        )
    return None


class OverlayNames(set):
    """The overlay names one call has tried (`overlay_name`), and per name the next counter to
    try: a camera that writes one file name again and again had each call count up from 2 past
    every earlier call's overlay, once per name tried (10,000 calls: 19 s a call)."""

    def __init__(self) -> None:
        super().__init__()
        self.counters: dict[str, int] = {}


def overlay_name(path: Path, used: set[str]) -> str:
    """`<stem>_overlay.png`, made unique among `used` (added to it) with the parent folder's
    name, then a counter (going on from the last one tried when `used` is `OverlayNames`);
    control characters of the names are written as "_", and a name too long for a file system
    is cut (`fitting_name`)."""
    stem, parent = printable(path.stem, "_"), printable(path.parent.name, "_")
    name = fitting_name(f"{stem}_overlay.png")
    if name in used:
        name = fitting_name(f"{parent}_{stem}_overlay.png")
    base, counters = name, getattr(used, "counters", {})
    i = counters.get(base, 2)
    while name in used:
        name, i = fitting_name(f"{parent}_{stem}_{i}_overlay.png"), i + 1
    counters[base] = i
    used.add(name)
    return name


class _ImageFiles(torch.utils.data.Dataset):
    """`predict_images`' files: each item the image at the run's size and at its own (for the
    overlay), or the error that names the file."""

    def __init__(self, paths: list[Path], config: Config, own: bool = True) -> None:
        self.paths, self.size, self.channels = paths, config.size, config.channels
        self.draft = draft_size(config.decode, config.size)  # the run's own decoding
        self.own = own  # the picture at its own size, for the overlay (12000 px: 3 s, 2 GB)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        from anomaly.data.folder import image_tensor, read_image
        from anomaly.data.reading import out_of_memory

        path = self.paths[i]
        if why := unreadable(path):
            return {"error": why}
        try:
            a = read_image(path, self.draft)  # decoded once, for the model and the overlay
        except DataError as err:
            return {"error": str(err)}
        if flat := flat_note(path, a):  # nothing to inspect: no verdict, as the reader's
            return {"error": flat}
        try:
            own = overlay_tensor(a) if self.own else None
            return {"image": image_tensor(a, self.size, self.channels), "own": own}
        except MemoryError:  # resizing it
            return {"error": str(out_of_memory(path))}

    @staticmethod
    def collate(items: list[dict]) -> dict:
        read = [item for item in items if "error" not in item]
        images = torch.stack([item["image"] for item in read]) if read else None
        errors = [item.get("error") for item in items]  # None for an image read
        return {"errors": errors, "image": images, "own": [item["own"] for item in read]}


def predict_images(
    run,
    images,
    overlay_dir: str | Path | None = None,
    workers: int | None = None,
    overlays: bool = True,
    each=None,
):
    """Score new images (files or folders of them) with a run and its saved threshold.

    `run`: a run folder, or a detector `anomaly.load_run` gave, which is not loaded again (a
    service keeps one; it is refused once the run's model.pt is another than the one it read).
    `images`: paths of files or folders, and in-memory images, file objects (an upload) or PIL
    images, decoded and checked as files are (`anomaly.uploads`; their results name them).
    The files are decoded in batches (by `workers` processes, default the run's, as in
    `score`). Returns (results, threshold): one dict per image: path, score, verdict ("REJECT"
    iff score >= threshold, else "PASS") and overlay (in `overlay_dir`, default the run's
    predict/, under a name no earlier call, nor one running beside it, took: overlays are
    evidence, never replaced; None with `overlays` False, or when it could not be written: a
    full disk stops the overlays, and "overlay_error" says why), and "unlike" saying how it
    differs from the training images when it does (also warned of); or path and error for an
    image that could not be read (the others are still scored). `each(result)`, when given, is
    called with each result as soon as it is made (`predict` prints its row then: a long run
    stopped part-way keeps the verdicts made so far).
    """
    from anomaly.data.masks import forget_said
    from anomaly.decision import warn_outside
    from anomaly.uploads import shown_result, staged

    rd, detector = _run_and_detector(run)
    threshold = rd.threshold()
    forget_said()  # warnings of a file: once this call, not once the process
    with staged(images) as (files, shown):
        results = []
        work = _predict(rd, detector, threshold, files, overlay_dir, workers, overlays, shown)
        for result in work:
            results.append(shown_result(result, shown) if shown else result)
            if each is not None:
                each(results[-1])
    warn_outside(rd, threshold, [r["score"] for r in results if "score" in r])  # a camera's change
    return results, threshold


def _run_and_detector(run):
    """(RunDir, detector) of `predict_images`' `run`: a folder, loaded; or a loaded detector,
    checked to hold the model.pt its run folder holds now."""
    if not hasattr(run, "predict_batch"):
        rd = RunDir(run).require()
        rd.refuse_stopped("predict")  # no threshold yet: `train --resume` sets it
        return rd, load_run(rd)
    if getattr(run, "run", None) is None:
        raise TypeError(
            f"predict_images got a {type(run).__name__} without its run folder: pass the run "
            "folder, or a detector anomaly.load_run gave"
        )
    from anomaly.threshold_file import model_sha256

    rd = RunDir(run.run).require()
    rd.refuse_stopped("predict")
    if model_sha256(rd.file(rd.MODEL)) != run.model_sha256:
        raise RunError(
            f"{rd}: its model.pt is another than the one this detector was loaded from (trained "
            "again, or replaced): its saved threshold belongs to the new model. Load it again: "
            f"anomaly.load_run({str(rd.path)!r})"
        )
    return rd, run


def _predict(rd, detector, threshold, paths, overlay_dir, workers, overlays, shown):
    """`predict_images`' work: each image's result, in order."""
    from anomaly.overlays import annotated_overlay, run_scale

    scale = run_scale(rd) if overlays else None  # the saved pixel threshold anchors the colours
    data = detector.config.data
    given = overlay_dir is not None
    overlay_dir = overlay_folder(overlay_dir or rd.predict_dir, data, given) if overlays else None
    paths = expand_images(paths)
    unlike = _unlike(paths, rd, detector.config, shown)
    files = _ImageFiles(paths, detector.config, own=overlays)
    done_n, used = 0, OverlayNames()

    def picture(item) -> bytes:
        path, score, amap, own_size = item
        rgb = annotated_overlay(
            own_size.numpy(), amap, scale, score, threshold.value, title=path.name
        )
        return png_bytes(rgb)

    for batch in decoding_loader(
        files, detector.config, collate_fn=_ImageFiles.collate, workers=workers
    ):
        here = paths[done_n : done_n + len(batch["errors"])]
        done_n += len(here)
        scored = []
        if batch["image"] is not None:
            with torch.no_grad():
                scores, maps = detector.predict_batch(batch["image"].to(detector.device))
            named = [p for p, error in zip(here, batch["errors"]) if error is None]
            scored = list(zip(named, scores.tolist(), maps.cpu().numpy(), batch["own"]))
        # overlays painted and encoded one per core; written below, in order (their names)
        pictures = in_threads(picture, scored) if overlay_dir else [None] * len(scored)
        done = iter(zip(scored, pictures))
        for path, error in zip(here, batch["errors"]):
            if error is not None:
                yield {"path": str(path), "error": error}
                continue
            (_, score, _, _), png = next(done)
            result = scored_result(path, score, png, overlay_dir, used, threshold)
            if "overlay_error" in result:  # a full disk: the verdicts go on
                overlay_dir = None
            if str(path) in unlike:
                result["unlike"] = unlike[str(path)]
            yield result


def _unlike(paths: list[Path], rd: RunDir, config: Config, shown: dict) -> dict[str, str]:
    """{path: how it differs} for the images unlike the run's training images, each warned of
    (`warnings.warn`: the CLI prints them as `warning:` lines, a service may log them) by the
    name its result shows (an upload's, not its staged file's)."""
    found = unlike_each(paths, trained_images(rd), config.channels, config.size)
    if found is None:
        warnings.warn(DAMAGED, stacklevel=4)
        return {}
    for words in unlike_lines({shown.get(p, p): why for p, why in found.items()}):
        warnings.warn(words, stacklevel=4)
    return found


def flat_note(path: Path, a) -> str | None:
    """Words naming a decoded image `a` [H, W, C] that is (nearly) one flat colour
    (`onnx_checks.flat_image`: an empty frame, a fully transparent picture, a float image
    clipped to one value), which gets no verdict; None for an ordinary image."""
    from anomaly.onnx_checks import flat_image

    why = flat_image(a)
    return None if why is None else f"{path}: {why}"


def overlay_tensor(a):
    """The decoded image `a` [H, W, C] as the overlay shows it: float32 RGB [3, h, w], at its
    own size or shrunk to `overlays.overlay_size` (a very large image)."""
    import torch.nn.functional as F

    from anomaly.data.folder import image_tensor
    from anomaly.overlays import overlay_size

    small = overlay_size(*a.shape[:2])
    if small == a.shape[:2]:
        return image_tensor(a, None, 3)
    x = image_tensor(a, None, a.shape[-1])[None]  # shrunk before the copy to RGB
    x = F.interpolate(x, size=small, mode="bilinear", align_corners=False, antialias=True)[0]
    return x.expand(3, -1, -1).clamp(0, 1).contiguous() if x.shape[0] == 1 else x.clamp(0, 1)


def overlay_folder(path: str | Path, data: str | None = None, given: bool = False) -> Path:
    """The folder `predict` writes its overlays in, made when missing and tried by writing: a
    run or an exported file shared read-only is named with the way out, before anything is
    scored. Never inside a data set (the run's, `data`, or any in the MVTec AD layout), where
    the overlays would be read as images by the next train or score. A link the user `given`
    (--out LINK, to a mount) is followed; one in a run folder is refused (`output_folder`)."""
    if given and Path(path).is_symlink() and Path(path).is_dir():
        path = Path(path).resolve()
    check_not_in_data(path, "--out", data)
    where = "a folder you can write in" if given else "DIR for them"
    return writable_folder(  # (from Python: overlay_dir= and overlays=False)
        path,
        f"predict writes an overlay per image there; give --out {where} (Python: overlay_dir=), "
        "or --no-overlays (overlays=False)",
    )


def scored_result(
    path: Path, score: float, png: bytes | None, folder: Path | None, used: set[str], threshold
):
    """One scored image's result (path, score, verdict, overlay) for `predict --run` and
    `predict --onnx`: its overlay (`png`, the bytes of its PNG file, `overlays.png_bytes`)
    saved in `folder` under a name that no file there has (`overlay_name`, taken by
    `save_png_new`, so that two calls writing into one folder at once never replace each
    other's); no overlay with `folder` None. An overlay that cannot be written (a full disk)
    leaves the verdict standing: the result's "overlay_error" says why (`overlays_lost`)."""
    overlay, result = None, {}
    if folder is not None:  # a name taken by an earlier call or one beside this one: the next
        names = (folder / overlay_name(path, used) for _ in itertools.count())
        try:
            overlay = save_png_new(png, names)
        except OSError as err:
            result["overlay_error"] = f"{folder}: {err.strerror or err}"
            result["overlay_disk_full"] = err.errno in (*FULL_DISK, errno.EFBIG)
    return {
        "path": str(path),
        "score": score,
        "overlay": None if overlay is None else str(overlay),
        "verdict": verdict(score, threshold.value),
        "shown": score_text(score, threshold.value),  # digits enough to read as the verdict
    } | result


def overlays_lost(results: list[dict]) -> str | None:
    """Words for the overlays a `predict` could not write (the first failure stops them; every
    image is still scored and given its verdict), or None when none failed."""
    failed = next((r for r in results if "overlay_error" in r), None)
    if failed is None:
        return None
    scored = [r for r in results if "error" not in r]
    missing = sum(r["overlay"] is None for r in scored)
    fix = "Free space" if failed.get("overlay_disk_full") else "Give --out a folder you may write"
    return (
        f"{missing} of the {len(scored)} overlays were not written ({failed['overlay_error']}); "
        f"every verdict above was made. {fix} and predict again for the overlays, or give "
        "--no-overlays"
    )
