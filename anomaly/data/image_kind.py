"""What kind of image a file is (greyscale or colour, bits per channel, aspect ratio), read from
its header, and how a file to score differs from the images a run was trained on.

Every file is decoded the same way whatever it is (`folder.image_to_array`): greyscale is
repeated into RGB, 16-bit values are divided by 65535 (32-bit integer TIFFs too, clipped to
0-1), and any shape is stretched to the run's square size. That always gives the model an input,
so an image unlike the training images is scored without complaint, and its score means little.
`train` records `summarize` of its training images in split.json (`"images"`); `score` and
`predict` name the files that differ from it (`anomaly.data.image_unlike`). `summarize` warns
when the training images' own aspect ratios differ more than `ASPECT_FACTOR` times, and
`image_unlike.warn_mixed` (called by `train`) when they differ otherwise: greyscale among
colour, several bit depths, a few files far smaller than --size.

Sizes and pixels are as viewers show them: `upright` applies a photo's EXIF orientation (a phone
stores a portrait JPEG sideways with a tag that says to turn it) where a file is decoded, and
`displayed_size` reads the same from a header. `open_image` is the package's one decoder of image
and mask files; it refuses a file of several images (an animation, a TIFF stack of pages), naming
it, rather than read one of them silently.
"""

from __future__ import annotations

import contextlib
import io
import sys
import threading
import warnings
from pathlib import Path

from PIL import Image, ImageOps

from anomaly.data.files import IMAGE_EXTENSIONS, DataError
from anomaly.onnx_checks import scrambled_planes, unfinished

ASPECT_FACTOR = 2.0  # an aspect ratio this many times off the training images' range is named
# a photo whose orientation (portrait, landscape) is the other way from every training image's,
# each this much off square, is named: turned by 90 degrees
TURNED = 1.1
# a training image whose shorter side is this many times under --size is named, and an image to
# score this many times under the training images' shortest side (and under --size)
SMALL_FACTOR = 2.0
# 16-bit images whose largest values are this many times apart (3 bits: a camera's 12-bit data
# in a 16-bit file, 0-4095, beside full-range data) are named: read alike, one set is far darker
PEAK_FACTOR = 8
NAMED = 3  # files named in one warning about the training images; the rest are counted
_PNG = b"\x89PNG\r\n\x1a\n"


def _png_bits(path: Path) -> int | None:
    """A PNG's bits per channel from its IHDR chunk (Pillow opens 16-bit RGB as 8-bit RGB)."""
    with open(path, "rb") as f:
        head = f.read(25)
    return head[24] if len(head) == 25 and head[:8] == _PNG and head[12:16] == b"IHDR" else None


def upright(im: Image.Image) -> Image.Image:
    """`im` decoded and turned in place as viewers show it: its EXIF orientation applied
    (`PIL.ImageOps.exif_transpose`). Every decoder of the package calls it after `Image.open`
    and goes on with what it returns: `im`, or for a TIFF turned a quarter by its orientation
    tag the same file decoded again from memory (`_tiff_from_memory`)."""
    if im.format == "TIFF" and _quarter_turned(im) and getattr(im, "filename", ""):
        return _tiff_from_memory(im)
    im.load()
    with contextlib.suppress(Exception):  # EXIF that Pillow cannot parse: shown as stored
        ImageOps.exif_transpose(im, in_place=True)
    return im


def _quarter_turned(im: Image.Image) -> bool:
    try:
        return im.getexif().get(0x0112) in (5, 6, 7, 8)
    except Exception:  # noqa: BLE001  (unreadable EXIF: shown as stored)
        return False


def _tiff_from_memory(im: Image.Image) -> Image.Image:
    """A TIFF turned a quarter by its orientation tag, decoded from its bytes in memory: Pillow
    13 decodes an uncompressed one read from its file at its stored size with its pixels
    scrambled (a mono camera on its side: trained and scored so, without a word), where the
    same bytes from memory are turned right (each orientation, mode and compression checked)."""
    with open(im.filename, "rb") as f:
        data = f.read()
    shown = im.size  # as its tag turns it (Pillow reads the tag at open)
    im.close()
    again = Image.open(io.BytesIO(data))
    again.load()
    if again.size != shown:
        raise ValueError(
            "a TIFF turned by its orientation tag that this Pillow decodes wrongly; save it "
            "again upright, or compressed (LZW or Deflate), and use that file"
        )
    return again


def read_rgb(path: str | Path | None, draft: int | None = None):
    """An image file as viewers show it (`upright`), as uint8 RGB [H, W, 3], for pictures of it;
    None when there is no file or it does not decode (whoever scores it says why). `draft`:
    `open_image`'s, so that a JPEG is drawn at the scale its run decoded it at."""
    import numpy as np

    if path is None or not Path(path).is_file():  # none, or a pipe that would never end
        return None
    try:
        with named_warnings(path), Image.open(path) as im:
            if draft and im.format in DRAFTED:
                im.draft(im.mode, (draft, draft))
            im = upright(im)
            if im.mode[0] in "IF":  # 16/32-bit: scaled as the model reads them (convert("RGB")
                top = 1.0 if im.mode == "F" else 65535.0  # clipped them to white)
                a = np.clip(np.asarray(im, dtype=np.float32) / top, 0.0, 1.0)
                return np.repeat(np.round(a * 255).astype(np.uint8)[..., None], 3, axis=-1)
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def unreadable_fix(error: Exception, path=None) -> str:
    """What to do with a file (`path`) Pillow could not read, in words, after `error`."""
    if path is not None and Path(path).name.startswith("._"):  # named by hand or by a glob
        return (
            f"It is a Mac's record of {Path(path).name[2:]} (an AppleDouble file its copies "
            "leave beside each file), not an image: leave ._ files out (a folder given whole "
            "skips them)"
        )
    if isinstance(error, PermissionError):  # the file may be whole: its mode, not its bytes
        return "This process may not read it: check its permissions (ls -l), not the file."
    if isinstance(error, Image.DecompressionBombError):
        return (
            f"It is too large to decode safely (over {2 * Image.MAX_IMAGE_PIXELS:,} pixels); "
            "shrink it, for example to 4000 pixels on its longer side"
        )
    if any(w in str(error).lower() for w in ("truncated", "broken data")):
        return (
            "It is cut short or damaged (a copy, a download or a camera's write that had not "
            "finished?): read it again once it is complete, or copy it again from where it "
            "came from."
        )
    return "Re-save it as PNG, or delete it."


_CAPTURE = threading.local()  # .caught: the warnings of the file this thread reads, or None
_INSTALL = threading.Lock()


def _per_thread(previous):
    """A `warnings.showwarning` that keeps a warning for `named_warnings` where this thread is
    inside one, and hands every other to `previous`."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        caught = getattr(_CAPTURE, "caught", None)
        if caught is not None:
            caught.append((message, category))
        else:
            previous(message, category, filename, lineno, file, line)

    show.per_thread = True
    return show


@contextlib.contextmanager
def named_warnings(path):
    """Pillow's warnings while `path` is read (a very large image, EXIF it cannot parse),
    given again as one line naming the file instead of Pillow's source line.

    Caught per thread: `warnings.catch_warnings` swaps process-wide state in and out, so with
    files decoded in threads (`prefetch`) one thread's exit put back another's recorder, and
    every later warning of the command went into a list nobody read (the main thread's too),
    or a warning of the main thread was named as a file's. The filters stay the process's: a
    warning another thread's filter ignores meanwhile is not seen here either. `path` None:
    they are dropped (a file only sniffed for its format is named when it is read)."""
    if not getattr(warnings.showwarning, "per_thread", False):
        with _INSTALL:
            if not getattr(warnings.showwarning, "per_thread", False):
                warnings.showwarning = _per_thread(warnings.showwarning)
                # each file's, not once per line of Pillow; appended: a user's own filters win
                warnings.filterwarnings("always", module="PIL", append=True)
    outer, _CAPTURE.caught = getattr(_CAPTURE, "caught", None), []
    try:
        yield
    finally:
        caught, _CAPTURE.caught = _CAPTURE.caught, outer
    for message, category in caught if path is not None else ():
        words = str(message)
        if issubclass(category, Image.DecompressionBombWarning):
            words += "; decoding it takes much memory and time: shrink it"
        warn_once(path, words, stacklevel=4)


def warn_once(path, words: str, stacklevel: int = 3) -> None:
    """Warn "`path`: `words`" the first time only: a file is opened for its header, its pixels
    and its overlay, and each would say it again. An upload's staged file is named as given."""
    if (str(path), words) not in _SAID:  # (each staged file once: its own temporary path)
        _SAID.add((str(path), words))
        shown = SHOWN_AS.get(str(path), path)
        warn_fresh(f"{shown}: {words}", stacklevel=stacklevel)


def warn_fresh(message: str, stacklevel: int = 2) -> None:
    """`warnings.warn(message, stacklevel=...)` that is said again at its next call: Python's
    default filter keeps each message of a line of code in its module's registry, and hid a
    file's warning in a service's later requests (the callers say it once a call: `_SAID`)."""
    try:
        frame = sys._getframe(stacklevel)  # as warnings.warn's stacklevel from the caller
    except ValueError:  # not that deep
        warnings.warn(message, UserWarning, stacklevel=2)
        return
    where = frame.f_code.co_filename, frame.f_lineno
    name, env = frame.f_globals.get("__name__"), frame.f_globals
    warnings.warn_explicit(message, UserWarning, *where, name, {}, module_globals=env)


_SAID: set[tuple[str, str]] = set()  # (cleared at each call's start: `masks.forget_said`)
SHOWN_AS: dict[str, str] = {}  # an upload's staged file: the name it is given (`uploads.staged`)


DRAFTED = ("JPEG", "MPO")  # formats with a draft mode: JPEG, and JPEGs of several pictures


def draft_size(decode: str, size: int | None) -> int | None:
    """The smallest side a JPEG may be decoded at for a model of `size` (`Config.decode`):
    twice it for "draft" (the resize after it still averages several pixels into one), None
    (every pixel) for "full" or no size."""
    return 2 * size if decode == "draft" and size else None


def empty_file(path: str | Path) -> str | None:
    """Words for a file of 0 bytes (to follow its name), or None: Pillow would only say it
    "cannot identify" it."""
    try:
        empty = Path(path).is_file() and Path(path).stat().st_size == 0
    except OSError:  # gone since it was listed (a hot folder's archiver): reading it says so
        return None
    if empty:
        return (
            "is empty (0 bytes): no image was written to it (a copy or a save that failed?); "
            "copy the image again, or delete the file"
        )
    return None


def open_image(path: str | Path, draft: int | None = None) -> Image.Image:
    """Open and decode an image (use it in a `with` block), turned as viewers show it
    (`upright`), or raise a DataError naming it. The one decoder of images and masks. With
    `draft`, a JPEG is decoded at 1/2, 1/4 or 1/8 of its size where both sides stay at least
    `draft` pixels (Pillow's draft mode: the DCT scaled while decoding); other formats whole."""
    if Path(path).is_dir():  # `predict FOLDER` passes on a folder it found no images in
        raise DataError(
            f"{path} is a folder with no images ({', '.join(IMAGE_EXTENSIONS)}) in it; give "
            "image files, or the folder that holds them"
        )
    if Path(path).exists() and not Path(path).is_file():  # a pipe would wait for ever
        raise DataError(f"{path} is not a file (a pipe or a device); give image files")
    if why := empty_file(path):
        raise DataError(f"{path} {why}")
    try:
        with named_warnings(path):
            im = Image.open(path)
            refused = refused_frames(im, path) or scrambled_planes(im)
            if refused is None:
                refused = unfinished(path, im.format)  # a zero tail: decoded without a word
            if refused is None:
                if draft and im.format in DRAFTED:
                    im.draft(im.mode, (draft, draft))
                im = upright(im)  # decoded, and turned as viewers show it (EXIF orientation)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(
            f"{path}: cannot read this image ({e}). {unreadable_fix(e, path)}"
        ) from None
    if refused is not None:
        im.close()
        raise DataError(f"{path}: {refused}")
    return im


def refused_frames(im: Image.Image, path) -> str | None:
    """Why the opened `im`, a file of several frames, is refused (None: read as its first frame).

    An animation (GIF, WebP, PNG) and a TIFF of several pages the first page's size or larger (a
    stack: which page is the image?) are refused; a TIFF whose other pages are smaller (a
    thumbnail, a pyramid of reduced resolutions) and an MPO (a camera JPEG whose first frame is
    the photo) are read as their first frame, as viewers show them. Any other file of several
    frames is read as its first, with a warning naming it."""
    n = getattr(im, "n_frames", 1)
    if not isinstance(n, int) or n <= 1 or im.format == "MPO":
        return None
    if im.format in ("GIF", "WEBP", "PNG"):
        return (
            f"cannot read this image (an animation of {n} frames, not a still image). Save the "
            "frame you mean as a PNG, or delete it."
        )
    if im.format == "TIFF":
        first = im.size
        try:
            for page in range(1, n):
                im.seek(page)
                if im.size[0] >= first[0] or im.size[1] >= first[1]:
                    return (
                        f"a TIFF of {n} pages (page {page + 1} is {im.size[0]}x{im.size[1]}, "
                        f"the first {first[0]}x{first[1]}), not one image: only one would be "
                        "read. Save the page you mean as its own PNG or TIFF file (e.g. "
                        "PIL: im.seek(page); im.save(...)), or delete it."
                    )
        finally:
            im.seek(0)
        return None
    warnings.warn(
        f"{path}: a {im.format} file of {n} frames; only its first frame is read. Save the "
        "frame you mean as a PNG to be sure which one is used",
        stacklevel=3,
    )
    return None


def orientation(im: Image.Image) -> int:
    """The EXIF orientation `upright` applies to an opened image, from its header: 1 (as
    stored) to 8; 1 for TIFF (Pillow applies the tag itself) and unreadable EXIF."""
    if im.format == "TIFF" or (im.format == "PNG" and "exif" not in im.info):
        return 1  # PNG without an eXIf chunk: getexif() would decode it
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001  (as `upright`: unreadable EXIF, shown as stored)
        return 1


def displayed_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened image as viewers show it, from its header (no decode):
    EXIF orientations 5-8 (turned a quarter) swap the stored sides."""
    return im.size[::-1] if orientation(im) in (5, 6, 7, 8) else im.size


def image_kind(path: str | Path, peak: bool = False) -> dict | None:
    """{"colour": bool, "bits": 8, 16 or 32, "aspect": width / height, "side": the shorter
    side in px, "transparent": bool} from the file's header (the alpha channel decoded where
    there is one), and with `peak` for a 16-bit image "peak", its largest value (its pixels
    decoded); None when it cannot be read (whoever decodes it says why)."""
    if not Path(path).is_file():  # a pipe: opening it would wait for ever
        return None
    try:
        with named_warnings(path), Image.open(path) as im:
            mode, (width, height), fmt = im.mode, displayed_size(im), im.format
            see_through = _transparent(im)
            bits = 16 if mode.startswith("I;16") else 32 if mode in ("I", "F") else 8
            if fmt == "PNG":  # its own header: 1-16 (older Pillow opens 16-bit PNGs as "I")
                bits = max(8, _png_bits(Path(path)) or bits)
            elif fmt == "TIFF" and bits == 8:  # Pillow 13 opens 16-bit RGB as 8-bit RGB too
                bits = max(8, _tiff_bits(im))
            # a 16-bit file's largest value (its pixels decoded, so only where asked): a
            # camera's 12-bit data fills 0-4095 of 0-65535
            peak = _peak(im) if peak and bits == 16 and mode[0] == "I" else None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    return {
        "colour": not grey_mode(mode),
        "bits": bits,
        "aspect": width / max(height, 1),
        "side": min(width, height),
        "transparent": see_through,
        **({"peak": peak} if peak is not None else {}),
    }


def grey_mode(mode: str) -> bool:
    """Whether a Pillow image mode holds one grey channel (with alpha, LA, or without)."""
    return mode in ("1", "L", "LA", "La", "I", "F") or mode.startswith("I;16")


def _tiff_bits(im: Image.Image) -> int:
    """A TIFF's bits per sample from its tag (258), the largest of its channels'; 8 unread."""
    try:
        bits = im.tag_v2.get(258, 8)
        return max(bits) if isinstance(bits, tuple) else int(bits)
    except (AttributeError, TypeError, ValueError):
        return 8


def _peak(im: Image.Image) -> int | None:
    """The largest value of a 16-bit image (any byte order: getextrema refuses I;16B)."""
    import numpy as np

    try:
        return int(np.asarray(im).max())
    except (OSError, ValueError, TypeError):  # damaged past its header: whoever decodes it says
        return None


def _transparent(im: Image.Image) -> bool:
    """Whether any pixel of `im` is (partly) transparent: decoded only for a file with an
    alpha channel or a transparent colour, whose pixels `folder.image_to_array` puts on white."""
    if im.mode not in ("RGBA", "LA", "PA", "La", "RGBa") and "transparency" not in im.info:
        return False
    alpha = im.convert("RGBA").getchannel("A") if im.mode != "LA" else im.getchannel("A")
    return alpha.getextrema()[0] < 255


def read_kinds(paths) -> list[tuple[str, dict]]:
    """(path, `image_kind` with its peak) of each of `paths` that can be read, sorted by path:
    what `summarize` records and `warn_mixed` compares (`train` reads them once for both)."""
    return [(str(p), k) for p in sorted(map(str, paths)) if (k := image_kind(p, True)) is not None]


def summarize(paths, read: list | None = None) -> dict:
    """What the training images are, for split.json: {"colour": [False and/or True],
    "bits": [...], "aspect": [lowest, highest], "side": [shortest, longest] of their shorter
    sides in px, "transparent": [False and/or True], and for 16-bit images "peak": [lowest,
    highest] of their largest values} over the files that can be read (`read`: their
    `read_kinds`, when the caller has them). Warns, naming the extremes, when their aspect
    ratios differ more than `ASPECT_FACTOR` times: each is stretched to the same square, so one
    object is distorted differently from image to image."""
    read = read_kinds(paths) if read is None else read  # (`read_kinds`, given by `train`)
    if not read:
        return {}
    kinds = [k for _, k in read]
    aspects = [k["aspect"] for k in kinds]
    (narrow, lo), (wide, hi) = min(read, key=_aspect), max(read, key=_aspect)
    if hi["aspect"] > lo["aspect"] * ASPECT_FACTOR:
        warnings.warn(
            f"the training images' aspect ratios (width / height) range from "
            f"{lo['aspect']:.2f} ({narrow}) to {hi['aspect']:.2f} ({wide}): each is stretched "
            "to the same square, so shapes are distorted differently from image to image and "
            "the model learns the distortions as normal; crop or pad the images to one aspect "
            "ratio",
            stacklevel=2,
        )
    return {
        "colour": sorted({k["colour"] for k in kinds}),
        "bits": sorted({k["bits"] for k in kinds}),
        "aspect": [round(min(aspects), 4), round(max(aspects), 4)],
        "side": [min(k["side"] for k in kinds), max(k["side"] for k in kinds)],
        "transparent": sorted({k["transparent"] for k in kinds}),
        **({"peak": [min(peaks), max(peaks)]} if (peaks := _peaks(kinds)) else {}),
    }


def _peaks(kinds) -> list[int]:
    return [k["peak"] for k in kinds if "peak" in k]


def _aspect(read: tuple) -> float:
    return read[1]["aspect"]


def bits_words(bits) -> str:
    return " and ".join(f"{b}-bit" for b in bits)


def how_scaled(bits: int) -> str:
    """How values of `bits` per channel are read, as `folder.image_to_array` does."""
    if bits == 32:
        return (
            "are read as 16-bit (integers divided by 65535, floats as they are) and clipped to 0-1"
        )
    return "are scaled to 0-1 by their full range" + (
        " (data that fills only part of it, e.g. 12-bit camera data in a 16-bit file, reads "
        "dark)" * (bits == 16)
    )
