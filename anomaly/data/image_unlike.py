"""How an image to score differs from the images a run was trained on (split.json's record of
them, `anomaly.data.image_kind.summarize`), said before it is scored anyway.

`score` and `predict` call `warn_unlike`, which prints a warning per file that differs (one for
many files said alike), naming it, what differs and what that means (a far smaller image, a
thumbnail, is enlarged more than the training images were: blurred). A run from before the
record (no `"images"`) is not checked. Light like `image_kind` (Pillow, no torch): the ONNX
reader imports it where the package is installed.
"""

from __future__ import annotations

import os
import re
import sys
import warnings

from anomaly.data.files import named
from anomaly.data.image_kind import (
    ASPECT_FACTOR,
    NAMED,
    PEAK_FACTOR,
    SMALL_FACTOR,
    TURNED,
    bits_words,
    grey_mode,
    how_scaled,
    image_kind,
    open_image,
    read_kinds,
)
from anomaly.onnx_checks import flat_image, is_images_record
from anomaly.terminal import printable


def grey_pixels(path) -> bool:
    """Whether the image file at `path`, stored in colour (RGB, a palette), holds only grey
    pixels (red = green = blue everywhere: a greyscale picture saved as colour, which a model
    reads exactly as the greyscale file). Decoded, so asked only where a grey-versus-colour
    difference would be said; False when there is no file or it cannot be read."""
    import numpy as np

    if path is None:
        return False
    try:  # a JPEG drafted (an eighth of a camera's frame: colour shows there too, and R = G
        with open_image(path, draft=64) as im:  # = B stays exact, its chroma planes flat)
            if grey_mode(im.mode):
                return True
            a = np.asarray(im.convert("RGB"))
    except (OSError, ValueError):  # a DataError too: whoever scores it says why
        return False
    return bool((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all())


def unlike(kind: dict, trained: dict, channels: int, size: int, path=None) -> list[str]:
    """How an image of `kind` differs from the training images `trained` (a `summarize`) of a
    run that sees `channels` channels at `size` px, each with what it means; [] when alike.
    `path`: its file, decoded to see whether a colour file's pixels are grey (`grey_pixels`)."""
    said = []
    colours = trained.get("colour") or []
    if channels == 3 and colours == [True] and not kind["colour"]:  # a grey run: converted alike
        said.append(
            "greyscale, converted to RGB for a run trained on colour images: its scores are not "
            "comparable with theirs"
        )
    elif channels == 3 and colours == [False] and kind["colour"] and not grey_pixels(path):
        said.append(
            "colour, for a run trained on greyscale images: the model never saw colour, so its "
            "scores are not comparable with theirs"
        )
    bits = trained.get("bits") or []
    if bits and kind["bits"] not in bits:
        said.append(
            f"{kind['bits']}-bit, the run was trained on {bits_words(bits)} images: its values "
            f"{how_scaled(kind['bits'])}, so its scores may not be comparable"
        )
    low, high = trained.get("peak") or (0, 65535)  # the 16-bit training images' largest values
    if "peak" in kind and not low / PEAK_FACTOR <= kind["peak"] <= high * PEAK_FACTOR:
        said.append(
            f"values up to {kind['peak']} of 65535, the training images' up to "
            f"{low if low == high else f'{low}-{high}'}: "
            "saved at another bit depth (a camera's 12-bit data in a 16-bit file reads 16 times "
            "darker than full-range data)? Its scores are not comparable; save it as they were"
        )
    lo, hi = (float(x) for x in trained.get("aspect") or (0.0, float("inf")))
    if not lo / ASPECT_FACTOR <= kind["aspect"] <= hi * ASPECT_FACTOR:
        seen = f"{lo:.2f}" if lo == hi else f"{lo:.2f}-{hi:.2f}"
        said.append(
            f"aspect ratio {kind['aspect']:.2f} (width / height), the training images' is "
            f"{seen}: it is stretched to {size}x{size} px, so shapes are distorted and its scores "
            "are not comparable"
        )
    elif (lo > TURNED and kind["aspect"] < 1 / TURNED) or (
        hi < 1 / TURNED and kind["aspect"] > TURNED
    ):
        was, now = ("landscape", "portrait") if lo > 1 else ("portrait", "landscape")
        said.append(
            f"{now} (aspect ratio {kind['aspect']:.2f}), the training images are all {was}: a "
            "photo turned by 90 degrees (a camera that did not record which way up it was "
            "held?) has its content lying across and stretched, so it scores as a defect; turn "
            "it as the training images are"
        )
    if kind.get("transparent") and True not in (trained.get("transparent") or []):
        had = "had none" if "transparent" in trained else "are not recorded as having any"
        said.append(
            f"partly transparent: its transparent pixels are put on white before scoring, and "
            f"the training images {had}, so white where the part should be can score as a "
            "defect; save it without transparency (on the background the parts are shot on)"
        )
    sides = trained.get("side")  # runs from before the record: no check
    if isinstance(sides, list) and len(sides) == 2:
        lo, hi = (int(x) for x in sides)
        if kind["side"] * SMALL_FACTOR < lo and kind["side"] < size:
            seen = f"{lo}" if lo == hi else f"{lo}-{hi}"
            said.append(
                f"shorter side {kind['side']} px, the training images' {seen} px: it is "
                f"enlarged to {size}x{size} px far more than they were, so its detail is blurred "
                "and its scores are not comparable; use images taken at the training images' "
                "resolution"
            )
    return said


ALIKE_NAMED = 3  # files unlike the training images in one way: up to this many, a line each
_NUMBER = re.compile(r"\d+(\.\d+)?")  # what files unlike in one way differ by in their words


DAMAGED = (  # said once as a note, and then nothing else
    "split.json's record of the training images does not read, so images unlike them are not named"
)


def unlike_each(paths, trained: dict | None, channels: int, size: int) -> dict[str, str] | None:
    """{path: how it is unlike the training images `trained` (split.json's "images")} for each
    of `paths` that is; {} for a run from before the record (None or {}: nothing is checked);
    None when the record is damaged (someone else's split.json)."""
    if not trained:
        return {}
    if not is_images_record(trained):
        return None
    found = {}
    for path in paths:
        kind = image_kind(path, peak="peak" in trained)  # decoded only to compare with it
        try:
            said = unlike(kind, trained, channels, size, path) if kind is not None else []
        except (TypeError, ValueError, KeyError):  # a damaged record in split.json: no check
            return None
        if said:
            found[str(path)] = "; ".join(said)
    return found


def unlike_lines(found: dict[str, str]) -> list[str]:
    """`unlike_each`'s {name: why} as warnings' words: one a file, or one per way they are unlike
    when more than `ALIKE_NAMED` files are unlike in the same way (the first named, the rest
    counted): a folder of 30 alike gets one line, not 30 (a walkthrough)."""
    groups: dict[str, list] = {}  # grouped by the way they differ, whatever their own numbers
    for name, why in found.items():
        groups.setdefault(_NUMBER.sub("#", why), []).append((printable(name), why))
    lines = []
    for said in groups.values():
        files, whys = [f for f, _ in said], {why for _, why in said}
        if len(files) <= ALIKE_NAMED:
            lines += [f"{f}: {why}" for f, why in said]
        elif len(whys) == 1:
            lines.append(f"{len(files)} images ({named(files, ALIKE_NAMED)}), each: {said[0][1]}")
        else:
            lines.append(
                f"{len(files)} images ({named(files, ALIKE_NAMED)}) are each unlike the "
                f"training images in this way, with numbers of their own; the first: {said[0][1]}"
            )
    return lines


def warn_unlike(paths, trained: dict | None, channels: int, size: int, stream=None) -> list[str]:
    """Print to stderr (or `stream`) the warnings of `unlike_lines` for the files of `paths`
    unlike the training images `trained` (split.json's "images"; None or {}: a run from before
    the record, nothing is checked). Returns the warnings. A damaged record (someone else's
    split.json) is said once, and then nothing else."""
    found = unlike_each(paths, trained, channels, size)
    if found is None:
        print(f"note: {DAMAGED}", file=stream or sys.stderr)
        return []
    lines = [f"warning: {words}" for words in unlike_lines(found)]
    for line in lines:
        print(line, file=stream or sys.stderr)
    return lines


def _few(paths: list[str], n: int, verb: str = "are") -> str:
    """'K of the N training images (a, b, c and K-3 more) are' ('is'/'has' for one image)."""
    verb = {"are": "is", "have": "has"}[verb] if len(paths) == 1 else verb
    return f"{len(paths)} of the {n} training images ({named(paths, NAMED)}) {verb}"


def warn_mixed(paths, channels: int, size: int, read: list | None = None) -> list[str]:
    """Warn, naming a few of them and counting the rest, when the training images `paths` of a
    run that sees `channels` channels at `size` px are not alike, as `warn_unlike` does for an
    image to score: some greyscale (LA too) and some colour (a colour run), of several bit
    depths, or some (not all: a size chosen to enlarge small images is the user's, or auto's)
    with a shorter side under `size` / `SMALL_FACTOR` (a 1x1 file, a crop).
    Every image is still read as before; the model learns each difference as normal. Returns
    the warnings' texts."""
    read = read_kinds(paths) if read is None else read  # (`read_kinds`, given by `train`)
    n, said = len(read), []
    grey = [p for p, k in read if not k["colour"]]
    if channels == 3 and 0 < len(grey) < n:  # a colour file of grey pixels is grey (decoded)
        colour = [p for p, k in read if k["colour"] and not grey_pixels(p)]
        grey = [p for p, _ in read if p not in frozenset(colour)]
    if channels == 3 and 0 < len(grey) < n:
        odd, kind, other = (grey, "greyscale", "colour")
        if len(colour) < len(grey):
            odd, kind, other = (colour, "colour", "greyscale")
        said.append(
            f"{_few(odd, n)} {kind}, the others {other}: all are read as RGB, so the model "
            "learns both kinds as normal and scores of one kind are not comparable with the "
            "other's; train on one kind (convert the odd ones, or leave them out)"
        )
    depths = sorted({k["bits"] for _, k in read})
    if len(depths) > 1:
        common = max(depths, key=lambda b: sum(k["bits"] == b for _, k in read))
        for bits in (b for b in depths if b != common):
            odd = [p for p, k in read if k["bits"] == bits]
            said.append(
                f"{_few(odd, n)} {bits}-bit, the others {bits_words([common])}: their "
                f"values {how_scaled(bits)}, so the model learns two scales of brightness as "
                "normal; save them all at one bit depth"
            )
    peaks = [(p, k["peak"]) for p, k in read if "peak" in k]
    if peaks and max(v for _, v in peaks) > PEAK_FACTOR * min(v for _, v in peaks):
        top = max(v for _, v in peaks)
        odd, low = zip(*[(p, v) for p, v in peaks if v * PEAK_FACTOR < top])
        said.append(
            f"{_few(odd, n, 'have')} values only up to {max(v for v in low)} "
            f"of 65535, others up to {top} (12-bit camera data saved in 16-bit files beside "
            "full-range ones?): each is divided by 65535, so theirs read far darker and the "
            "model learns both as normal; save them alike (12-bit values times 16)"
        )
    small = [p for p, k in read if k["side"] * SMALL_FACTOR < size]
    if 0 < len(small) < n:  # all of them small: a size chosen to enlarge them (auto's 448 px)
        said.append(
            f"{_few(small, n, 'have')} a shorter side under {size / SMALL_FACTOR:g} px, the "
            f"others not, so each is stretched up to --size {size} far more than the others: "
            "the model learns their blur as normal; leave them out, or crop them from larger "
            "images"
        )
    for text in said:
        warnings.warn(text, stacklevel=2)
    return said


def warn_blank(paths, read: list | None = None) -> list[str]:
    """Warn, naming them, about the training images `paths` that are all one flat colour
    (`onnx_checks.flat_image`: a camera's blank shot, which predict gives no verdict): the
    model learns a blank as normal, and a part missing on a blank background then passes.
    Only a file small for its pixels is decoded (a flat picture compresses to almost nothing);
    `read`: their `read_kinds`, when the caller has them. Returns the names."""
    kinds, blank = dict(read_kinds(paths) if read is None else read), []
    for path in map(str, paths):
        if (k := kinds.get(path)) is None:
            continue
        pixels = k["side"] ** 2 * max(k["aspect"], 1 / max(k["aspect"], 1e-9))
        try:
            if os.path.getsize(path) < max(pixels / 16, 4096) and flat_image(_pixels(path)):
                blank.append(path)
        except (OSError, ValueError):  # unreadable: training says why
            continue
    if blank:
        warnings.warn(
            f"{_few(blank, len(paths))} all one flat colour: empty frames (a camera's blank "
            "shot), which predict gives no verdict; the model learns them as normal, so a part "
            "missing on a blank background would pass. Take them out of the good images and "
            "train again",
            stacklevel=2,
        )
    return blank


def _pixels(path):
    """The image at `path` as float [H, W, C] in 0-1 for `flat_image` (16-bit and float values
    as the model reads them, not clipped to white as an RGB conversion would)."""
    import numpy as np

    with open_image(path, 256) as im:  # a JPEG at 1/2-1/8 of its size: flat_image samples
        if im.mode[0] in "IF":
            top = 1.0 if im.mode == "F" else 65535.0
            return (np.asarray(im, dtype=np.float32) / top)[..., None]
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
