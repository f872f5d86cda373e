"""Finding image files, and the error that names a bad one: no torch, so that commands that only
read a run folder (`threshold`) start fast. `anomaly.data.folder` reads the images."""

from __future__ import annotations

import os
import unicodedata
import warnings
from pathlib import Path

# the still images read, in folders and when named: a GIF, WebP or PNG with several frames (an
# animation) and a TIFF of several full-size pages are refused when decoded
# (`image_kind.open_image`); other files are named as skipped (`scan_images`). One list with
# the deployable onnx_checks.py, where `predict_onnx` reads the image files of a folder given
from anomaly.onnx_checks import IMAGE_SUFFIXES as IMAGE_EXTENSIONS
from anomaly.onnx_checks import skipped_silently
from anomaly.terminal import printable

NAMED = 20  # skipped entries named in one warning; the rest are counted
# SYSTEM_FILES (onnx_checks'; the copied reader skips them too): files Windows writes into
# folders of pictures (thumbnail caches, folder settings), skipped without a word, as hidden
# files are ("save others as PNG" made no sense of them)


class DataError(ValueError):
    """A problem with the data folder; the message names the file or folder and the fix."""


def manifest_files(images: dict, prefix: str = "") -> set[str]:
    """The files a generator's manifest lists: each image (`images`' keys, relative to the data
    set's folder) and its mask, with `prefix` before each (a photo suite's set folder)."""
    masks = {i["mask"] for i in images.values() if isinstance(i, dict) and i.get("mask")}
    return {prefix + rel for rel in set(images) | masks}


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS


def scan_images(
    folder: Path, folders: str = "folders inside are not read; move their images into it"
) -> tuple[list[Path], list[Path], list[Path]]:
    """What `folder` directly holds, sorted: (image files, symbolic links that lead to no file,
    everything else but hidden entries: folders such as .ipynb_checkpoints, files such as
    .DS_Store and macOS's ._NAME.png sidecars, which are no images, and `SYSTEM_FILES`). The one listing of a folder
    of images: training and test folders, `threshold --good-images` and `predict FOLDER`. When it
    found images, one warning names every entry of the third list and what to do (`skipped`;
    `folders`: what to do about a sub-folder, {name} the first one's path): nothing is left out
    without a word. With no images the caller's error says what the folder holds."""
    images, broken, stray = [], [], []
    for p in sorted(folder.iterdir()):
        if skipped_silently(p.name):
            continue  # .ipynb_checkpoints, .git, .DS_Store, ._a.png (macOS metadata), ...
        if p.is_symlink() and not p.exists():
            broken.append(p)
        else:
            (images if p.is_file() and _is_image(p) else stray).append(p)
    if stray and images:
        warnings.warn(f"{folder}: skipping {skipped(stray, folders)}", stacklevel=2)
    return images, broken, stray


# what makes a name read as other lines or act on a terminal: C0 (newline, tab, escape), DEL,
# NEL (a line break to Python's splitlines) and CSI; other C1 characters (Windows-1252 quotes
# read as Latin-1: U+0093) are only written as escapes
_FORGING = {chr(c) for c in range(32)} | {"\x7f", "\x85", "\x9b"}


def refuse_control_names(folder: Path, entries: list[Path]) -> None:
    """DataError when names of a data set (its files, or a defect kind's folder) hold control
    characters that break a line or drive a terminal: a newline or an escape sequence in a name
    makes every message that names it read as other lines, or as success (a data set from
    someone else), and no camera or tool writes one."""
    odd = [p for p in entries if _FORGING & set(p.name)]
    if odd:
        raise DataError(
            f"{printable(str(folder))}: {len(odd)} name{'s hold' if len(odd) > 1 else ' holds'}"
            f" control characters (a newline, a tab or an escape sequence; "
            f"{named([printable(p.name) for p in odd], NAMED)}), which would make the messages "
            "that name them read as other lines: rename them"
        )


def named(texts, k: int, sep: str = ", ") -> str:
    """'a, b, c and 4 more': the first `k` of `texts` named, the rest counted (one warning or
    error stays readable however many files it is about)."""
    texts = list(texts)
    return sep.join(texts[:k]) + (f" and {len(texts) - k} more" if len(texts) > k else "")


def skipped(stray: list[Path], folders: str) -> str:
    """What `scan_images` says about `stray` (entries of a folder that are not images): each one
    named, and what to do; `folders` says what to do about a sub-folder ({name}: its path)."""

    def names(entries: list[Path], tail: str = "") -> str:  # a newline in one: written \n
        return named([printable(p.name) + tail for p in entries], NAMED)

    dirs = [p for p in stray if p.is_dir()]
    special = [p for p in stray if not p.is_dir() and not p.is_file()]  # a pipe, socket, device
    files = [p for p in stray if p.is_file()]
    said = []
    if special:
        one = len(special) == 1
        said.append(
            f"{len(special)} entr{'y' if one else 'ies'} that {'is' if one else 'are'} not a "
            f"regular file ({names(special)}: a named pipe, socket or device, whatever its name "
            f"ends in), which is not read: save the image as a file there, or remove {'it' if one else 'them'}"
        )
    if files:
        said.append(
            f"{len(files)} file{'s' * (len(files) != 1)} of a type not read ({names(files)}): "
            f"images must end in {', '.join(IMAGE_EXTENSIONS)}; save others as PNG to use them"
        )
    if dirs:
        said.append(
            f"{len(dirs)} folder{'s' * (len(dirs) != 1)} ({names(dirs, '/')}): "
            + folders.format(name=dirs[0])
        )
    return "; and ".join(said)


def broken_link(p: Path) -> str:
    """Why the symbolic link `p` leads to no file (a loop, or a missing target)."""
    try:
        p.resolve(strict=True)
    except RuntimeError:
        return "a symbolic link that points back to itself (a loop); fix the link or delete it"
    except OSError as e:
        if e.errno == 40:  # ELOOP
            return "a symbolic link that points back to itself (a loop); fix the link or delete it"
    return f"a symbolic link to {os.readlink(p)}, which does not exist; fix the link or delete it"


def nfc(name: str) -> str:
    """`name` in Unicode's composed form: macOS's file systems and zip tools write ü as u and a
    combining diaeresis, other systems as one character, and names of the two forms, which read
    alike, would not match (`on_disk` finds a file by either)."""
    return unicodedata.normalize("NFC", name)


def on_disk(path: str) -> str:
    """`path`, or where only that exists, the same path in the other Unicode normalization: a
    data set copied through a Mac (or a zip made there) names pièce.png as e + a combining
    accent, and a split.json recorded before names it as one character; both read alike."""
    if os.path.lexists(path):
        return path
    for form in ("NFC", "NFD"):
        if (other := unicodedata.normalize(form, path)) != path and os.path.lexists(other):
            return other
    return path


def plain_test_count(n: int, holdout: float = 0.2) -> int:
    """How many of a plain layout's n good images go to test: `round(n * holdout)`, at least
    one when there are two or more (`AnomalyDataset`); the rest train."""
    return max(1, round(n * holdout)) if n >= 2 and holdout > 0 else 0


def check_not_in_data(path: str | Path, what: str, data: str | Path | None = None) -> None:
    """Refuse an output folder (`what`: "--out" words) inside the train/, test/ or
    ground_truth/ folder of a data set (a folder that holds train/ and test/), or anywhere
    inside `data`, the data set the command reads, when it is in the plain layout (good/ and a
    folder per defect kind, every one read): written there, a run or its scores would become
    part of the images, a defect kind of its own, and break every later train and score of
    that set. Beside train/ and test/ (runs/ in an MVTec AD root) nothing is read."""
    path = Path(os.path.abspath(path))
    root = Path(os.path.abspath(data)) if data is not None else None
    plain = root is not None and (root / "good").is_dir() and not (root / "train").is_dir()
    if plain and (root in path.parents or root == path):
        raise ValueError(
            f"{what} {path} is inside the data set {root}, whose every folder is read as "
            "images (good/ and one folder per defect kind): it would become a defect kind of "
            f"its own. Choose a folder outside {root}"
        )
    for inner, parent in zip([path, *path.parents], path.parents):
        if inner.name in ("train", "test", "ground_truth") and (
            (parent / "train").is_dir() and (parent / "test").is_dir()
        ):
            raise ValueError(
                f"{what} {path} is inside the data set {parent} ({inner.name}/), where it would "
                f"be read as images; choose a folder outside {inner}"
            )
