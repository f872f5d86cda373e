"""In-memory images for `predict_images`: what a service holds after an upload, a file object
(anything with `.read()`: `io.BytesIO`, a web framework's uploaded file) or a PIL image.

Each is written to a private temporary folder (`staged`), so that it is decoded and checked
exactly as a file is: EXIF orientation, the run's JPEG decoding, empty frames, images unlike the
training ones. Decoding it by hand for `predict_batch` is easy to get subtly wrong (another
resize filter moved the benchmark run's scores by up to a quarter of its threshold, and flipped
a verdict in 70). Its result names it by the name it was given (a file object's `.name`, a PIL
image's `.filename`), else `upload-N`; the folder is removed when the call returns.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

# Pillow's format -> the suffix the package reads it by
SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "MPO": ".jpg", "BMP": ".bmp", "TIFF": ".tif"}
SUFFIXES |= {"WEBP": ".webp", "GIF": ".gif"}


def is_upload(x) -> bool:
    """Whether `x` is an in-memory image: a file object or a PIL image (not a path)."""
    return not isinstance(x, (str, bytes, os.PathLike)) and (
        callable(getattr(x, "read", None)) or hasattr(x, "getbands")
    )


def _given_name(x, i: int) -> str:
    """The name an upload's result shows: its own file name (printable, at most 150
    characters: a client chose it), else upload-N."""
    from anomaly.terminal import printable

    name = getattr(x, "filename", None) if hasattr(x, "getbands") else getattr(x, "name", None)
    name = os.path.basename(name.replace("\\", "/")) if isinstance(name, str) else ""
    name = printable(name.replace("\0", ""), "_")[-150:]
    return name if name.strip(" .") else f"upload-{i}"


def _file_name(name: str) -> str:
    """A name for `name`'s staged file that any file system takes."""
    from anomaly.safe_files import fitting_name

    return fitting_name("".join(c if c.isalnum() or c in "-_.()" else "_" for c in name))


def _content(x, name: str) -> bytes:
    """The bytes of the file object `x`, read from its start (a web framework's upload saved
    once is left at its end); TypeError for a text file or an asynchronous one."""
    import inspect

    if inspect.iscoroutinefunction(getattr(x, "read", None)):
        raise TypeError(
            f"{name}: an asynchronous upload (its read() must be awaited): pass its file object "
            "(FastAPI/Starlette: upload.file), or io.BytesIO(await upload.read())"
        )
    if getattr(x, "seekable", lambda: False)():
        x.seek(0)
    data = x.read()
    if isinstance(data, str):
        raise TypeError(f"{name}: a text file object was given; open the image in 'rb' mode")
    return data


def _unread_file(x) -> bytes | None:
    """The file's bytes of a PIL image opened (`Image.open`) and not decoded yet, whose pixels are
    the file's as it is: staged as they are, it is decoded as that file would be (a JPEG at the
    run's decoding, every frame of an animation seen); None for any other image (one decoded
    may have been changed in place)."""
    if getattr(x, "fp", None) is None or getattr(x, "_im", True) is not None:
        return None
    if getattr(x, "tell", lambda: 0)() != 0:  # a frame chosen with seek(): that frame alone
        return None
    return _file_bytes(x)


def _refused_file(x, name: str) -> bytes | None:
    """The file's bytes of a decoded PIL image of several frames, at its first, whose file is
    refused (an animation, a TIFF stack): staged as they are, it is refused as that file is.
    Told from the file opened anew: seeking the caller's image would throw its decoded (maybe
    edited) pixels away, and move it under another thread. None otherwise: its frame is
    staged as it is."""
    from PIL import Image

    from anomaly.data.image_kind import refused_frames

    # (not even n_frames of the caller's image: counting them seeks a TIFF or a GIF)
    if x.format not in ("GIF", "WEBP", "PNG", "TIFF") or getattr(x, "tell", lambda: 0)() != 0:
        return None
    if (data := _file_bytes(x)) is None:
        return None
    try:
        with Image.open(io.BytesIO(data)) as fresh:
            return (
                data if getattr(fresh, "n_frames", 1) > 1 and refused_frames(fresh, name) else None
            )
    except (OSError, SyntaxError, ValueError):
        return None


def _file_bytes(x) -> bytes | None:
    """The bytes of the file a PIL image was opened from: its open file (`fp`; once decoded,
    Pillow 13 keeps it as `_fp`: an upload opened from memory has no file name), else its file
    name; None when neither reads."""
    for fp in (getattr(x, "fp", None), getattr(x, "_fp", None)):
        try:  # (a closed image's is Pillow's DeferredError, which raises on any attribute)
            with _READING:  # one image given to calls in several threads: one position
                where = fp.tell()
                fp.seek(0)
                data = fp.read()
                fp.seek(where)
        except (OSError, ValueError, AttributeError):  # none, closed, or not seekable
            continue
        if isinstance(data, bytes) and data:
            return data
    name = getattr(x, "filename", "")
    try:
        return Path(name).read_bytes() if isinstance(name, str) and name else None
    except OSError:  # gone
        return None


_READING = threading.Lock()


def _write(x, path: Path, name: str) -> Path:
    """Write upload `x` at `path` (its suffix set by what it holds) and return where it went."""
    from PIL import Image, ImageOps

    from anomaly.data.image_kind import named_warnings

    pil = hasattr(x, "getbands")
    if pil and (data := _unread_file(x) or _refused_file(x, name)) is None:
        # a PIL image decoded (or made) already: its frame as it is (edited, maybe), lossless,
        # turned as its EXIF says (as a file is)
        x = ImageOps.exif_transpose(x)
        alpha = {"La": "LA", "RGBa": "RGBA"}.get(x.mode, "RGBA" if "A" in x.getbands() else "RGB")
        for mode in (x.mode, alpha):
            y = x if mode == x.mode else x.convert(mode)  # HSV, La, RGBa: neither format's
            for suffix, kind in ((".png", "PNG"), (".tif", "TIFF")):  # TIFF: float, CMYK
                try:
                    fast = {"compress_level": 1} if kind == "PNG" else {}  # a temporary file:
                    y.save(path := path.with_suffix(suffix), format=kind, **fast)  # 4x faster
                    return path
                except (OSError, ValueError, KeyError):
                    path.unlink(missing_ok=True)
        raise ValueError(f"{name}: a PIL image of mode {x.mode}, which cannot be scored")
    data = data if pil else _content(x, name)
    try:  # a decompression bomb: said when it is read (this thread's warnings only: a
        # service's other threads keep theirs, and the process its filters)
        with named_warnings(None), Image.open(io.BytesIO(data)) as im:
            suffix = SUFFIXES.get(im.format or "", ".png")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        suffix = path.suffix if path.suffix.lower() in SUFFIXES.values() else ".png"
    path = path.with_suffix(suffix)  # unreadable: reading it says why, under its own name
    path.write_bytes(data)
    return path


@contextlib.contextmanager
def staged(images) -> Iterator[tuple[object, dict[str, str]]]:
    """(`images` with each upload replaced by the path of its temporary file, {that path: the
    name its result shows}); `images` as given when it holds no upload. Each upload gets a
    folder of its own (two of one name), all under one temporary folder removed on exit."""
    if is_upload(images):
        items = [images]
    elif isinstance(images, (list, tuple)):
        items = list(images)
    else:
        yield images, {}
        return
    if not any(map(is_upload, items)):
        yield images, {}
        return
    from anomaly.data.image_kind import SHOWN_AS

    folder, shown = Path(tempfile.mkdtemp(prefix="anomaly-uploads-")), {}
    try:
        for i, x in enumerate(items):
            if is_upload(x):
                name = _given_name(x, i)
                (folder / str(i)).mkdir()
                items[i] = _write(x, folder / str(i) / _file_name(name), name)
                shown[str(items[i])] = name
        SHOWN_AS.update(shown)  # Pillow's warnings of a staged file name the upload
        yield items, shown
    finally:
        for temp in shown:
            SHOWN_AS.pop(temp, None)
        shutil.rmtree(folder, ignore_errors=True)


def shown_result(result: dict, shown: dict[str, str]) -> dict:
    """`result` of a staged upload with its temporary path replaced by its name."""
    temp = result.get("path")
    if temp not in shown:
        return result
    out = dict(result, path=shown[temp])
    if isinstance(out.get("error"), str):
        out["error"] = out["error"].replace(temp, shown[temp])
    return out
