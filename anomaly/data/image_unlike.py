"""How an image to score differs from the images a run was trained on (split.json's record of
them, `anomaly.data.image_kind.summarize`), said before it is scored anyway.

`score` and `predict` call `warn_unlike`, which prints a warning per file that differs (one for
many files said alike), naming it, what differs and what that means (a far smaller image, a
thumbnail, is enlarged more than the training images were: blurred). A run from before the
record (no `"images"`) is not checked. Light like `image_kind` (Pillow, no torch): the ONNX
reader imports it where the package is installed.
"""

from __future__ import annotations

import re
import sys

from anomaly.data.files import named
from anomaly.data.image_kind import (
    ASPECT_FACTOR,
    PEAK_FACTOR,
    SMALL_FACTOR,
    TURNED,
    bits_words,
    how_scaled,
    image_kind,
)
from anomaly.onnx_checks import is_images_record
from anomaly.terminal import printable


def unlike(kind: dict, trained: dict, channels: int, size: int) -> list[str]:
    """How an image of `kind` differs from the training images `trained` (a `summarize`) of a
    run that sees `channels` channels at `size` px, each with what it means; [] when alike."""
    said = []
    colours = trained.get("colour") or []
    if channels == 3 and colours == [True] and not kind["colour"]:  # a grey run: converted alike
        said.append(
            "greyscale, converted to RGB for a run trained on colour images: its scores are not "
            "comparable with theirs"
        )
    elif channels == 3 and colours == [False] and kind["colour"]:
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
            said = unlike(kind, trained, channels, size) if kind is not None else []
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
