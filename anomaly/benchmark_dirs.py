"""The benchmark's folders: it deletes only what it made, and never an earlier result it cannot
replace.

Every folder the benchmark creates holds `.made-by-benchmark` (`MARK`), listing the files it
wrote there. Before a run removes anything, `check_out` and `check_dir` look at every folder it
will use: a non-empty folder without the mark, or one holding files the mark does not list (a
user's), stops the benchmark with nothing changed. A run killed before it listed its files
(`seal_dir`) owns only the files a run writes (`RUN_FILES`); anything else in it is a user's,
and stops the benchmark too. Each method then trains into a temporary sibling, `.<method>.new`
(`run_dirs`), which replaces the method's earlier run folder only once the method finished
(`replace_dir`); a method that fails leaves its earlier run as it was. A run folder's mark also
records each file's SHA-256: a file changed since (a threshold saved from the explorer, a run
scored again) is a user's work, and stops the benchmark as a file of the user's does.

The out folder's own files (`OUT_FILES`: benchmark.md, .json and the notes) are written by
`write_out`, which records each file's SHA-256 in the out folder's mark; a rerun rewrites only
files whose hash still matches, and refuses (`check_out`, before anything runs, and again when
writing) one edited by hand since, or one the benchmark never wrote.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from anomaly.data.files import check_not_in_data, named
from anomaly.runs import RunDir
from anomaly.safe_files import sha256_file, temporary_beside

MARK = RunDir.TOOL_FILES[1]  # ".made-by-benchmark": train may write into a folder holding it
MADE_BY = "python -m anomaly benchmark"
# every file name a run folder may hold (RunDir's names, less its folders overlays/, predict/ and
# scored/, which the benchmark does not write): what a run killed before it sealed may have left
RUN_FILES = frozenset(
    name
    for key, name in vars(RunDir).items()
    if key.isupper() and isinstance(name, str) and key not in ("OVERLAYS", "PREDICT", "SCORED")
)
OUT_FILES = ("benchmark.md", "benchmark.json", "benchmark-notes.md")  # written by `write_out`


class BenchmarkError(ValueError):
    """A benchmark that cannot start: the message says why and what to do."""


def run_dirs(base: Path, method: str) -> tuple[Path, Path]:
    """(the run folder of `method` under `base`, the temporary sibling it is trained in)."""
    final = Path(base) / method.replace("+", "_")
    return final, final.with_name(f".{final.name}.new")


def _not_ours(path: Path) -> BenchmarkError:
    return BenchmarkError(
        f"{path} already exists and was not made by the benchmark, which deletes nothing it "
        "did not make. Move it away, delete it yourself, or choose another --out"
    )


def _is_run_file(name: str) -> bool:
    """A file a run writes in its folder: one of `RUN_FILES`, or the temporary file one of them is
    written through (`.<name>.<random>.tmp`, left behind when the writer was killed)."""
    if name.startswith(".") and name.endswith(".tmp"):
        name = name[1:].rsplit(".", 2)[0]
    return name in RUN_FILES


def _made_and_left(path: Path) -> tuple[list[Path], list[str], bool]:
    """(the files in `path` the benchmark wrote, the names of everything else, whether its mark
    lists its files), changing nothing.

    A sealed mark lists what the benchmark wrote. A mark without a list is a run that never
    finished (killed before `seal_dir`): of its files only those a run writes (`RUN_FILES`, at the
    top of the folder) are provably the benchmark's. A folder holding no file at all is nobody's
    provably, so it is left too (named with a trailing /)."""
    mark = path / MARK
    try:
        record = json.loads(mark.read_text() or "{}")
        listed, hashes = record.get("files"), record.get("sha256") or {}
    except (OSError, ValueError, AttributeError):
        hashes = None
    if not isinstance(hashes, dict):  # unreadable, not an object, or hashes not a mapping
        raise BenchmarkError(
            f"{mark} is damaged, so what the benchmark wrote in {path} is unknown and nothing "
            "was deleted; move the folder away or choose another --out"
        )
    found = [p for p in path.rglob("*") if p.name != MARK or p.parent != path]
    files = [p for p in found if p.is_symlink() or not p.is_dir()]
    if listed is None:
        # the benchmark writes no links: a link is never provably its own
        made = [
            p for p in files if p.parent == path and _is_run_file(p.name) and not p.is_symlink()
        ]
    else:
        listed = {path / rel for rel in listed if isinstance(rel, str)}
        made = [p for p in files if p in listed]
    changed = _changed(path, made, hashes) if listed is not None else []
    made = [p for p in made if p not in changed]
    left = [str(p.relative_to(path)) for p in files if p not in made and p not in changed]
    left += [f"{p.relative_to(path)} (changed since)" for p in changed]
    empty = [p for p in found if p not in files and not any(f.is_relative_to(p) for f in files)]
    left += [f"{p.relative_to(path)}/" for p in empty]
    return made, sorted(left), listed is not None


def _changed(path: Path, made: list[Path], hashes: dict) -> list[Path]:
    """The files of `made` whose SHA-256 is not the one the mark recorded (`hashes`) when the
    run was sealed (a threshold saved from the explorer, a run scored again): a user's work now.
    A file without a recorded hash (a mark from before hashes were recorded) counts as
    unchanged."""
    recorded = {p: hashes.get(str(p.relative_to(path))) for p in made}
    return [p for p, h in recorded.items() if h is not None and sha256_file(p) != h]


def check_dir(path: str | Path) -> None:
    """Raise BenchmarkError if `claim_dir` would refuse `path`; change nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BenchmarkError(f"{path} is a file, not a folder; choose another --out")
    if not path.is_dir() or not any(path.iterdir()):
        return
    if not _has_mark(path):
        raise _not_ours(path)
    _, left, sealed = _made_and_left(path)
    if left:
        listed = named(left, 5)
        what = (
            "files the benchmark did not make"
            + (" or changed since it wrote them" if any("(changed" in n for n in left) else "")
            if sealed
            else "a run the benchmark never finished (its mark lists no files, so only the "
            "files a run writes, such as config.json and model.pt, are its own), and files no "
            "run writes"
        )
        raise BenchmarkError(
            f"{path} holds {what} ({listed}), so nothing was removed or rerun. Move them away "
            "or choose another --out"
        )


def _empty(path: Path) -> None:
    """Remove what the benchmark wrote in `path` (checked by `check_dir`), and its mark."""
    made, _, _ = _made_and_left(path)
    for f in made:  # a link is removed, never followed
        f.unlink()
    dirs = (p for p in path.rglob("*") if p.is_dir() and not p.is_symlink())
    for d in sorted(dirs, key=lambda p: -len(p.parts)):
        if not any(d.iterdir()):
            d.rmdir()
    (path / MARK).unlink(missing_ok=True)


def _has_mark(path: Path) -> bool:
    """Whether `path` holds the benchmark's mark; a BenchmarkError when it holds something else
    under its name (a link, which writing the mark would follow into a user's file; a folder)."""
    mark = path / MARK
    if mark.is_symlink() or (mark.exists() and not mark.is_file()):
        raise BenchmarkError(
            f"{mark} is not a mark the benchmark wrote (a link or a folder), so nothing in {path} "
            "was removed or rewritten; move the folder away or choose another --out"
        )
    return mark.exists()


def _mark(path: Path, files: list[str] | None, hashes: dict | None = None) -> None:
    mark = {"made_by": MADE_BY, "files": files}
    if hashes:
        mark["sha256"] = hashes
    with temporary_beside(path / MARK) as (fd, _), os.fdopen(fd, "wb") as f:  # never via a link
        f.write(json.dumps(mark, indent=1).encode())


def _hashes(path: Path) -> tuple[list[str], dict]:
    """(the files `path`'s mark lists, the SHA-256 it records of those `write_out` wrote)."""
    try:
        mark = json.loads((path / MARK).read_text() or "{}")
        files, hashes = mark.get("files") or [], mark.get("sha256") or {}
    except (OSError, ValueError, AttributeError):
        files = hashes = None
    if not isinstance(files, list) or not isinstance(hashes, dict):
        raise BenchmarkError(
            f"{path / MARK} is damaged, so which files the benchmark wrote in {path} is "
            "unknown and nothing was rewritten; move the folder away or choose another --out"
        )
    return [f for f in files if isinstance(f, str)], hashes


def check_unedited(path: str | Path) -> None:
    """Raise BenchmarkError if `path` exists and is not a file the benchmark wrote, unchanged
    since: edited by hand (its SHA-256 is not the one `write_out` recorded), or never written by
    the benchmark. A file listed by a mark from before hashes were recorded is rewritten, as then."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    files, hashes = _hashes(path.parent) if _has_mark(path.parent) else ([], {})
    recorded = hashes.get(path.name)
    if path.is_symlink() or not path.is_file():
        why = "is not a file the benchmark wrote"
    elif recorded is not None:
        if sha256_file(path) == recorded:
            return
        why = "was edited since the benchmark wrote it"
    elif path.name in files:  # listed before the benchmark recorded hashes: as it did then
        return
    else:
        why = "was not written by the benchmark"
    raise BenchmarkError(
        f"{path} {why}, and the benchmark overwrites nothing a user made. Move it away (or "
        "delete it yourself), or choose another --out"
    )


def write_out(path: str | Path, text: str) -> Path:
    """Write `text` to `path` in an out folder the benchmark marked (`claim_out`), once
    `check_unedited` found nothing of the user's there, and record its SHA-256 in the mark."""
    path = Path(path)
    check_unedited(path)
    with temporary_beside(path) as (fd, _), os.fdopen(fd, "wb") as f:
        f.write(text.encode())
    files, hashes = _hashes(path.parent)
    _mark(path.parent, sorted({*files, path.name}), {**hashes, path.name: sha256_file(path)})
    return path


def claim_dir(path: str | Path) -> Path:
    """Make `path` an empty folder owned by the benchmark, or refuse with nothing removed.

    A missing or empty folder is created and marked. A folder the benchmark marked before is
    emptied of the files its mark lists, once `check_dir` found nothing else in it.
    """
    path = Path(path)
    check_dir(path)
    if path.is_dir():
        _empty(path)
    path.mkdir(parents=True, exist_ok=True)
    _mark(path, None)
    return path


def replace_dir(new: Path, final: Path) -> Path:
    """Put the finished run `new` in the place of `final`, the earlier run of its method."""
    check_dir(final)  # again: a file of the user's may have arrived while the method ran
    if final.is_dir():
        _empty(final)
        final.rmdir()
    new.rename(final)
    return final


def discard_dir(path: Path) -> None:
    """Remove a run folder the benchmark made that will not be kept (a method that failed)."""
    if path.is_dir() and _has_mark(path) and not _made_and_left(path)[1]:
        _empty(path)
        path.rmdir()


def seal_dir(path: str | Path, below: bool = False) -> None:
    """Record in the mark every file now in `path` (the benchmark wrote them all).

    `below=True` (a run folder) lists every file under `path` with its SHA-256: one changed
    since (`_changed`) is left with the folder. `below=False` (an out folder whose run folders
    carry their own marks) keeps of the files directly in `path` only those its mark lists
    (`write_out` records each with its hash): a file a user put there is never listed, so
    never taken for the benchmark's and overwritten by a later run."""
    path = Path(path)
    found = path.rglob("*") if below else path.iterdir()
    files = sorted(str(p.relative_to(path)) for p in found if p.is_file() and p.name != MARK)
    if below:  # a run folder: every file's hash, so a later change by a user is never deleted
        _mark(path, files, {name: sha256_file(path / name) for name in files})
        return
    try:
        listed, hashes = _hashes(path) if _has_mark(path) else ([], {})
    except BenchmarkError:  # a damaged mark is replaced, listing nothing of the folder
        listed, hashes = [], {}
    files = [name for name in files if name in hashes or name in listed]
    _mark(path, files, {name: h for name, h in hashes.items() if name in files})


def check_out(out: str | Path, writes: tuple[str, ...] = (), data: tuple = ()) -> None:
    """Raise BenchmarkError if `claim_out` would refuse `out`, if it lies inside one of the
    data sets `data`, or if `write_out` would refuse one of the files `writes` names there
    (`check_unedited`); change nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BenchmarkError(f"{out} is a file, not a folder; choose another --out")
    try:
        check_not_in_data(out, "--out")  # runs in test/ would become a defect kind
        for root in data:
            check_not_in_data(out, "--out", root)
    except ValueError as err:
        raise BenchmarkError(str(err)) from None
    if out.is_dir() and any(out.iterdir()) and not _has_mark(out):
        raise _not_ours(out)
    if writes and _has_mark(out):
        _hashes(out)  # a damaged mark is refused now, not after the benchmark ran
    for name in writes:
        check_unedited(out / name)


def claim_out(out: str | Path) -> Path:
    """The out folder: created and marked, or reused if the benchmark made it before."""
    out = Path(out)
    check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    if not _has_mark(out):
        _mark(out, [])
    return out
