"""Whether the images a run trained on and held out are still as it read them: split.json
records each one's SHA-256 and, since session 33, its size and modification time
(`file_stamps`); `score` on the run's own data folder says when any is missing or changed
(`warn_changed_training`), reading a file again only when its size or time moved."""

from __future__ import annotations

import os
import time
import warnings

from anomaly.data.files import on_disk
from anomaly.runs import RunDir, RunError
from anomaly.safe_files import sha256_file


def warn_changed_training(run: RunDir, data: str) -> None:
    """Warn when the run's own data folder `data` no longer holds the images the run trained on
    and held out as split.json records them (SHA-256): the data set was made again or edited
    since, so `score` scores other test images than the run's were, with a model that learned
    images no longer there, and replaces the run's earlier scores without a word otherwise."""
    try:
        split = run.split() or {}
        paths = [str(p) for p in split.get("train", []) + split.get("val", [])]
    except (RunError, ValueError, TypeError, AttributeError):
        return  # a split.json that does not read is said where the split is needed
    digests = split.get("sha256") or []
    if not paths or len(digests) != len(paths):  # an older run: nothing to compare with
        return
    roots = {os.path.abspath(data), os.path.realpath(data)}  # given through a link, or not:
    stamps = split.get(STAMPS)  # train recorded the paths its folder resolved to
    if not (isinstance(stamps, list) and len(stamps) == len(paths)):
        stamps = [None] * len(paths)  # an older run: every file hashed
    racy = split.get(STAMPED)  # a file last modified this close to when its stamp was taken
    if not isinstance(racy, int) or isinstance(racy, bool):  # may have changed again within
        racy = -1  # the same tick (git's rule)
    racy -= RACY_NS
    changed = []
    for path, digest, stamp in zip(paths, digests, stamps):
        try:  # only files named inside the data folder are read (through its links: a folder
            # or files linked in, as DVC's cache does), as `train` read them; a split.json from
            # someone else may name any path ("..", a NUL byte, /proc's files, which never end)
            given = on_disk(os.path.abspath(path))  # a Mac's copy: pièce as e + ´
            inside = any(os.path.commonpath([r, given]) == r for r in roots)
            inside = inside and os.path.isfile(given)
            if not inside:
                changed.append(path)
            elif not _unchanged(stamp, given, racy) and _sha256_of_file(given) != digest:
                changed.append(path)  # size and time as recorded: not read again (thousands
                # of camera JPEGs)
        except (OSError, ValueError):
            changed.append(path)
    if changed:
        warnings.warn(
            f"{len(changed)} of the {len(paths)} images {run} trained on or held out are "
            f"missing or changed since it was trained (first: {changed[0]}): the data set was "
            "made again or edited, so these are scores of its test images today, by a model "
            "that learned other images, and they replace the run's earlier ones. Restore the "
            "images, or train a new run on the data as it is now",
            stacklevel=3,
        )


STAMPS = "size_mtime_ns"  # split.json's (size, modification time) of each image it hashed
STAMPED = "stamped_ns"  # and when it took them


def file_stamps(paths: list[str]) -> dict:
    """split.json's [size, modification time in ns] of each file, and when they were taken:
    `score` reads a file again only when either changed since (as make and rsync tell a file
    unchanged), or when its time lies within `RACY_NS` of the taking."""
    return {STAMPED: time.time_ns(), STAMPS: [_stamp(p) for p in paths]}


def _stamp(path: str) -> list[int]:
    info = os.stat(path)
    return [info.st_size, info.st_mtime_ns]


RACY_NS = 3 * 10**9  # file systems keep times to 2 s at worst (FAT): within it, read again


def _unchanged(stamp, path: str, racy: int) -> bool:
    """Whether the file's size and modification time are `stamp`, recorded by train, and that
    time lies well before the record was written (else an edit in the same tick looks alike)."""
    return isinstance(stamp, list) and stamp == _stamp(path) and stamp[1] < racy


_EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def _sha256_of_file(path: str) -> str:
    """`sha256_file`, but a file that says it holds 0 bytes is not read (/proc's say so and
    some never end: /proc/kmsg)."""
    return _EMPTY_SHA256 if os.stat(path).st_size == 0 else sha256_file(path)
