"""What this package wrote, and only that, removed again: a command's record of the files it
wrote in a folder (`remove_written`, `read_written`), a generated data set's manifest
(`check_removable`, `remove_made`), and the mark in each overlay PNG `score` writes. A folder
may be someone else's, or hold the user's own files among ours: what a record cannot prove
ours stays.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from anomaly.safe_files import load_record, sha256_file

# A text chunk in each overlay PNG `score` writes: what proves a file in overlays/ its own when
# the record of what it wrote (`remove_written`) cannot say.
OVERLAY_MARK = ("Software", "anomaly score overlay")


def overlay_mark():
    """The PNG text chunk that marks an overlay as `score`'s (`overlays.png_bytes(..., info)`)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(*OVERLAY_MARK)
    return info


def marked_overlay(path: Path) -> bool:
    """Whether `path` is a PNG that carries `OVERLAY_MARK` (one `score` wrote) in the header
    Pillow reads on opening (Pillow writes text chunks there), without decoding its pixels
    (`im.text` would, to find chunks after them)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.format == "PNG" and im.info.get(OVERLAY_MARK[0]) == OVERLAY_MARK[1]
    except Exception:  # noqa: BLE001  (anything else is not ours)
        return False


def plain_relative(rel) -> bool:
    """Whether `rel`, a path read from a manifest or marker, is a plain relative path such as
    `train/good/000.png`: a string, not absolute, with no empty, `.` or `..` part."""
    return isinstance(rel, str) and all(p not in ("", ".", "..") for p in rel.split("/"))


def check_removable(
    root: str | Path, folders: list[str], files: set[str], listed_in: str | Path
) -> set[str]:
    """The `files` (paths relative to `root`, as `listed_in` lists them) that `remove_made`
    would delete: those found in `folders` inside `root`, walked without following a link.
    Refused when a folder is not a plain name of a real folder inside `root`, an entry is not a
    plain relative path (an absolute one, or one with `..`, from someone else's manifest), or a
    folder holds a file `files` does not list (the user's own)."""
    root, found, extra = Path(root), set(), []
    for name in folders:
        folder = root / name
        if not plain_relative(name) or "/" in name or folder.is_symlink() or not folder.is_dir():
            raise ValueError(
                f"{folder} is not a folder inside {root} that its generator made (a link, a "
                f"file, or a name from {listed_in} such as '..'); nothing was deleted"
            )
    bad = sorted(str(rel) for rel in files if not plain_relative(rel))
    if bad:
        raise ValueError(
            f"{listed_in} lists {bad[0]!r}, which is not a path inside {root}, so nothing was "
            "deleted; it is not a manifest this generator wrote: move the folder's files away "
            "yourself, or choose another folder"
        )
    for name in folders:
        for dirpath, _, names in os.walk(root / name):  # links are listed, never followed
            for n in names:
                rel = (Path(dirpath) / n).relative_to(root).as_posix()
                (found.add if rel in files else extra.append)(rel)
    if extra:
        raise ValueError(
            f"{root} holds files its generator did not make ({', '.join(sorted(extra)[:3])}"
            f"{', ...' if len(extra) > 3 else ''}), so nothing was deleted; move them away "
            "first, or choose another folder"
        )
    return found


def remove_made(
    root: str | Path, folders: list[str], files: set[str], listed_in: str | Path = "manifest.json"
) -> None:
    """Delete a generated data set's `files` (paths relative to `root`, as `listed_in` lists
    them), then its `folders` where they are left empty. Only files found inside the real
    folders are deleted, never through a link; refused, with nothing deleted, as
    `check_removable` says (a manifest from someone else could name `..`, `/x`, or the user's
    own files)."""
    root = Path(root)
    for rel in check_removable(root, folders, files, listed_in):
        (root / rel).unlink(missing_ok=True)
    for name in folders:
        for dirpath, _, _ in sorted(os.walk(root / name), key=lambda w: -len(w[0])):
            with contextlib.suppress(OSError):  # not empty: a folder of the user's
                os.rmdir(dirpath)


def read_written(folder: Path, record: str) -> dict[str, str | None] | None:
    """The record `record` in `folder` of the files a command wrote there ({file name: SHA-256,
    or None while being written}), or None when there is none. The folder may be someone
    else's: only plain file names in it are kept, never a path."""
    try:
        names = load_record(folder / record)
    except (OSError, ValueError):
        return None
    if not isinstance(names, dict):
        return None
    return {
        n: h
        for n, h in names.items()
        if plain_relative(n) and "/" not in n and n != record and (h is None or isinstance(h, str))
    }


def remove_written(
    folder: str | Path,
    record: str,
    is_ours: Callable[[Path], bool] = lambda path: False,
    keep_folder: bool = False,
) -> list[str]:
    """Delete the files a command wrote in `folder`, as its `record` there lists them, and the
    record; remove the folder when nothing else is left. A file changed since it was written
    (its SHA-256 differs), a link, and anything the record does not list stay: they are the
    user's. Where the record cannot say (it is missing, damaged, or lists a file without its
    digest, as while being written), only a file that `is_ours` proves the command's own (by
    its content) is deleted: a record lost in a copy, or edited, deletes nothing of the user's.
    Returns the names of what was kept (empty when the folder is gone, or left empty with
    `keep_folder`)."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return []
    written = read_written(folder, record)
    for path in sorted(folder.iterdir()):
        if path.is_symlink() or not path.is_file():
            continue
        name = path.name
        if name.startswith(".") and name.endswith(".tmp"):  # an interrupted write's (`_atomic`)
            name = name[1:].rsplit(".", 2)[0]
        if name != path.name and f".{name}" == record:  # the record's own, half written
            ours = True
        elif name != path.name:  # a temporary file: never the user's finished file
            ours = written is not None and name in written
        elif written is None:
            ours = is_ours(path)
        else:
            digest = written.get(name, False)
            ours = digest == sha256_file(path) if digest else digest is None and is_ours(path)
        if ours:
            path.unlink()
    (folder / record).unlink(missing_ok=True)
    kept = sorted(p.name for p in folder.iterdir())
    if not kept and not keep_folder:
        folder.rmdir()
    return kept
