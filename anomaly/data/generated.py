"""Generated data sets appear whole or not at all: what `make_cookies` and `make_photos` share.

A generator writes into a hidden staging folder inside ROOT (`ROOT/.make-cookies.partial/`, the
loaders skip hidden entries) that holds a marker naming the generator, its arguments, its process
and how far it got. Only when every image is written does it move the folders into ROOT, each in
one rename, the training images last and the `manifest.json` (the sign of a finished set) after
them. An interruption while images are written (Ctrl-C, a kill) leaves ROOT without a `train/`
folder, so nothing trains on half a data set; the next run of the same generator into ROOT, with
any arguments, deletes that staging folder (after checking that it holds nothing but what the
generator writes) and starts again. One interrupted while moving the folders into place
finishes the move first, unless that would replace a file edited since (below).

A staging folder may be someone else's (a copied tree), so its marker is untrusted: the folders
moved are the generator's own names, every file it lists must be a plain path inside them, and
a move is finished only when it deletes or replaces nothing in ROOT but what ROOT's manifest of
that generator lists; anything else is refused with nothing changed.

Staging inside ROOT rather than beside it: the rename never crosses file systems (ROOT may be a
mount point), ROOT's parent need not be writable, and nothing appears next to ROOT.

`--overwrite` replaces only what the earlier manifest lists (`anomaly.written_files.remove_made`):
its folders are moved into the staging folder, each in one rename, and deleted there, so ROOT
never holds part of the old set.

The manifest also records each file's SHA-256 (`FINGERPRINTS`). Before replacing anything, a
rerun (the same settings, or `--overwrite`) checks them: a file the user has edited since (a
mask redrawn, an image retouched) is never replaced or deleted; the run is refused with nothing
changed and names the file. The same set again, every file present and unedited, is left as it
is (nothing is written). A manifest from before the fingerprints cannot tell: its files are
replaced by the same bytes, as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from anomaly.data.files import broken_link
from anomaly.run_lock import holder_alive, identity
from anomaly.safe_files import (
    InUse,
    RunError,
    disk_full_named,
    load_record,
    sha256_file,
    write_json,
)
from anomaly.written_files import check_removable, plain_relative, remove_made

MARKER = "generator.json"
FINGERPRINTS = "sha256"  # manifest key: {file relative to ROOT: SHA-256 of the bytes written}
_OLD = ".old"  # inside the staging folder: the earlier set's folders, being deleted


def check_place(root: Path, what: str) -> None:
    """Refuse a `root` that is a file or a broken link, lies under a file, or lies inside a data
    set (a folder that holds train/ and test/): `what` written into `ROOT/test/new` would add a
    defect kind `new` to that set."""
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} is a file; choose a folder to write the {what} in")
    if root.is_symlink() and not root.exists():
        raise ValueError(f"{root} is {broken_link(root)}, or choose another folder")
    root = Path(root).absolute()
    for parent in root.parents:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"{root}: {parent} is a file; choose a folder for the {what}")
        if (parent / "train").is_dir() and (parent / "test").is_dir():
            raise ValueError(
                f"{root} is inside the data set {parent} (it holds train/ and test/): the "
                f"{what} would become part of it; choose a folder outside it"
            )


def read_manifest(path: Path) -> dict | None:
    """An earlier run's `manifest.json` as a dict; None when missing or unreadable."""
    try:  # someone else's maybe: no pipe, no file of gigabytes, no nesting past the decoder
        manifest = load_record(path) if path.is_file() else None  # 256 MB at most
    except (OSError, RunError):
        return None
    return manifest if isinstance(manifest, dict) else None


def edited(root: Path, manifest: dict | None) -> list[str]:
    """The files (relative to `root`) that `manifest`, one its generator wrote in `root`, says
    it made and that now differ from what it wrote: other bytes, or a link or folder in a
    file's place. A missing file is not edited (the set is made again with it); nor is anything
    of a manifest without fingerprints, or an entry that is no plain relative path (the
    manifest may be someone else's: those are never read)."""
    prints = manifest.get(FINGERPRINTS) if isinstance(manifest, dict) else None
    if not isinstance(prints, dict):
        return []
    changed = []
    for rel, digest in sorted(prints.items()):
        if not plain_relative(rel) or not isinstance(digest, str):
            continue
        path = root / rel
        other = path.exists() and (not path.is_file() or sha256_file(path) != digest)
        if path.is_symlink() or other:
            changed.append(rel)
    return changed


def settings_changed(previous: dict, settings: dict) -> str:
    """'seed 5 -> 7, preset toy -> benchmark': the settings of a data set made before (its
    manifest, `previous`) that differ from `settings`, for the words of a refusal."""

    def shown(value) -> str:
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        return text if len(text) <= 40 else text[:37] + "..."

    changed = [k for k in settings if previous.get(k) != settings[k]]
    return ", ".join(f"{k} {shown(previous.get(k))} -> {shown(settings[k])}" for k in changed)


def check_unedited(root: Path, manifest: dict | None, generator: str, action: str) -> None:
    """Refuse, before anything is written, a rerun that would replace or delete (`action`, in
    words) a file the user has edited since `generator` wrote it (`edited`)."""
    if changed := edited(root, manifest):
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise ValueError(
            f"{root / changed[0]}{more} changed after {generator} wrote it (its bytes differ "
            f"from the SHA-256 in {root / 'manifest.json'}), and {action} would lose that edit; "
            f"nothing was changed. Copy what you edited out of {root}, then move it away (the "
            "command makes it again) and run the command again, or choose another folder"
        )


def complete(root: Path, manifest: dict | None) -> bool:
    """Whether every file `manifest` fingerprints is in `root`. After `check_unedited` has
    passed on the same manifest (none of them differs from what its generator wrote), the same
    set again needs nothing written; the files are not read a second time here."""
    prints = manifest.get(FINGERPRINTS) if isinstance(manifest, dict) else None
    if not isinstance(prints, dict) or not prints:
        return False
    return all(plain_relative(rel) and (root / rel).is_file() for rel in prints)


def _fingerprints(folder: Path, order: list[str]) -> dict[str, str]:
    """SHA-256 of every file in the staging `folder`'s set folders (`order`), by its path
    relative to ROOT."""
    prints = {}
    for name in order:
        for dirpath, _, names in os.walk(folder / name):
            for n in names:
                path = Path(dirpath) / n
                prints[path.relative_to(folder).as_posix()] = sha256_file(path)
    return dict(sorted(prints.items()))


def write_png(array: np.ndarray, path: Path) -> None:
    """Save an image array as PNG, with no time or other metadata (the same array, the same
    bytes)."""
    with disk_full_named(path):  # named, not a bare errno (run the command again to finish)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path, format="PNG", compress_level=1)


def staging(root: Path, generator: str) -> Path:
    """The staging folder of `generator` (its command name, e.g. `make-cookies`) in `root`."""
    return root / f".{generator}.partial"


def check_made(root: Path, folders: list[str], files: set[str]) -> None:
    """Refuse, before anything is written, an overwrite that `remove_made` would refuse: a
    folder that is a link, a manifest entry outside ROOT (`/x`, `../x`), or a folder holding
    files its generator did not make (`files`)."""
    check_removable(root, folders, files, root / "manifest.json")


def interrupted(root: Path) -> str:
    """What to say about `root` (or the suite folder holding it) when it holds the staging
    folder of an interrupted generator: a hint for "no data set here" errors, else ''."""
    for place in (root, root.parent):
        for generator in ("make-cookies", "make-photos"):
            if staging(place, generator).is_dir():
                _refuse_running(staging(place, generator), place, generator)
                return (
                    f" {place} holds {staging(place, generator).name}/, left by an interrupted "
                    f"{generator} run: run the same {generator} command again to finish it."
                )
    return ""


def _refuse_running(folder: Path, root: Path, generator: str, marker=None) -> None:
    """InUse when the staging `folder` is a live generator's (its `marker`, read when not
    given): `root` is being made, not left by an interrupted run."""
    if marker is None:
        try:  # someone else's maybe: `load_record` (no pipe, no deep nesting)
            marker = load_record(folder / MARKER)
        except (OSError, RunError):
            return
    mine = not isinstance(marker, dict) or marker.get("pid") == os.getpid()
    if not mine and holder_alive(marker, _written(folder)):
        raise InUse(
            f"{root} is in use: process {marker['pid']} is running {generator} into it. Wait "
            f"for it to finish, or stop it. (If no such process runs, delete {folder}.)"
        )


def recover(
    root: Path, generator: str, arguments: dict, order: list[str], made: set[str] | None
) -> dict | None:
    """Deal with a staging folder an interrupted run of `generator` left in `root`.

    One interrupted while writing images is deleted; one interrupted while moving a finished
    set into place finishes the move. Returns the manifest when that finished set is the one
    `arguments` ask for and every file of it is there (nothing is left to do), else None.
    Refused: a staging folder of a process still running, one holding anything but generated
    files, one whose marker is damaged, one whose move would delete or replace anything in
    `root` that `made` does not list (the staging folder may be someone else's: a copied tree),
    and one whose move would replace or delete a file edited since its generator wrote it
    (`check_unedited`).

    Args:
        order: every top-level folder `generator` writes, in the order they move in: its own
            names, never the marker's.
        made: the files `root/manifest.json` lists when it is a manifest of `generator`, else
            None.
    """
    folder = staging(root, generator)
    _remove_unnamed(root, folder)
    if not folder.exists() and not folder.is_symlink():
        return None
    marker = _read_marker(folder, generator, order)
    _refuse_running(folder, root, generator, marker)
    if marker["phase"] == "write":
        shutil.rmtree(folder)
        return None
    if made is not None:  # an edit made since the interruption is not lost either
        manifest = read_manifest(root / "manifest.json")
        check_unedited(root, manifest, generator, f"finishing the interrupted run in {folder}")
    if problem := _unlisted(root, folder, marker, order, made):
        raise ValueError(
            f"{folder} is left from an interrupted {generator} run, but finishing it would "
            f"{problem}, which no manifest.json of {generator} in {root} lists; nothing was "
            f"changed. If that folder is not from your own run, move it out of {root} and run "
            "the command again"
        )
    _install(root, folder, marker, order)
    if marker.get("arguments") == arguments:
        manifest = json.loads((root / "manifest.json").read_text())
        return manifest if complete(root, manifest) else None  # else a file moved away: remade
    return None


def _written(folder: Path) -> float:
    """When `folder` or its marker was last written (a generator writes its marker after it
    starts); now, where neither can be read."""
    times = []
    for path in (folder, folder / MARKER):
        with contextlib.suppress(OSError):
            times.append(path.stat(follow_symlinks=False).st_mtime)
    return max(times, default=time.time())


def _remove_unnamed(root: Path, folder: Path) -> None:
    """Delete the temporary folders (`write_staged`) of runs killed before their staging folder
    got its name: each holds only a marker, and its name the number of a process that no longer
    runs (or this one: an earlier process of the same number)."""
    for tmp in root.glob(f"{folder.name}.*.tmp"):
        pid = tmp.name[len(folder.name) + 1 : -len(".tmp")]
        if tmp.is_symlink() or not tmp.is_dir() or not pid.isdigit():
            continue
        record = {"pid": int(pid)}  # and the start time the marker records, if it does
        with contextlib.suppress(OSError, RunError, TypeError):
            marker = load_record(tmp / MARKER)
            record |= {k: marker[k] for k in ("boot", "start") if k in marker}
        if int(pid) != os.getpid() and holder_alive(record, _written(tmp)):
            continue  # a run that has just begun
        if all(p.name == MARKER or p.name.startswith(f".{MARKER}.") for p in tmp.iterdir()):
            shutil.rmtree(tmp, ignore_errors=True)


def _unlisted(
    root: Path, folder: Path, marker: dict, order: list[str], made: set[str] | None
) -> str:
    """What finishing the install would delete or replace in `root` that `made` (the files its
    generator manifest lists) does not cover, in words; '' when nothing."""
    listed = made or set()
    if marker["phase"] == "retire":
        for name in marker["folders"]:
            if (root / name).exists() or (root / name).is_symlink():
                try:
                    check_removable(root, [name], listed, root / "manifest.json")
                except ValueError:
                    return f"delete {root / name}"
        if marker["replace"] and (root / "manifest.json").exists():
            kept = {rel.split("/")[0] for rel in listed} - set(marker["folders"])
            if made is None or any((root / name).exists() for name in kept):
                return f"delete {root / 'manifest.json'}"
    for name in order:  # a folder `root` holds already gets the staged files merged in
        if not (folder / name).exists() or not (root / name).exists():
            continue
        for dirpath, _, names in os.walk(folder / name):
            into = root / Path(dirpath).relative_to(folder)
            if into.is_symlink() or (into.exists() and not into.is_dir()):
                return f"write through {into}"
            for n in names:
                target = into / n
                rel = target.relative_to(root).as_posix()
                if (target.exists() or target.is_symlink()) and rel not in listed:
                    return f"replace {target}"
    if (folder / "manifest.json").exists() and (root / "manifest.json").exists() and made is None:
        return f"replace {root / 'manifest.json'}"
    return ""


def _read_marker(folder: Path, generator: str, order: list[str]) -> dict:
    """The staging folder's marker, after checking that the folder is one `generator` made
    and holds only what it writes (images, manifests, the marker or a temporary file of it),
    and that the marker is whole: its folders among `order`, its files plain paths inside
    them."""
    try:
        marker = load_record(folder / MARKER)
    except (OSError, RunError):
        marker = None
    found, stray = [], []
    if not folder.is_symlink():
        for dirpath, dirs, names in os.walk(folder):
            stray += [Path(dirpath) / d for d in dirs if (Path(dirpath) / d).is_symlink()]
            for n in names:
                if n.startswith(f".{MARKER}.") and n.endswith(".tmp"):
                    continue  # written by `write_json` when the process was killed
                found.append(n)
                if not (n.endswith(".png") or n in ("manifest.json", MARKER)):
                    stray.append(Path(dirpath) / n)
    if marker is None and not found:
        marker = {"generator": generator, "phase": "write"}  # from an older version
    ours = isinstance(marker, dict) and marker.get("generator") == generator
    if not ours or folder.is_symlink() or stray:
        why = f"it holds {stray[0]}" if stray else f"it has no {MARKER} of {generator}"
        raise ValueError(
            f"{folder} is not a staging folder {generator} left ({why}), so it will not "
            "delete it; move it away and run the command again"
        )
    if problem := _damage(marker, order):
        raise ValueError(
            f"{folder / MARKER} is damaged ({problem}), so {generator} will neither delete nor "
            f"finish {folder}; move the folder away and run again"
        )
    return marker


def _damage(marker: dict, order: list[str]) -> str:
    """What is wrong with a marker's content, in words; '' when nothing."""
    phase, pid = marker.get("phase"), marker.get("pid")
    if phase not in ("write", "retire", "move"):
        return f"phase {phase!r} is not 'write', 'retire' or 'move'"
    if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool)):
        return f"pid {pid!r} is no process number"
    if phase == "write":
        return ""
    folders, files = marker.get("folders"), marker.get("files")
    if not isinstance(marker.get("replace"), bool):
        return f"replace {marker.get('replace')!r} is not true or false"
    if not isinstance(folders, list) or not all(isinstance(n, str) and n in order for n in folders):
        return f"folders {folders!r} are not among {', '.join(order)}"
    if not isinstance(files, list):
        return f"files {str(files)[:80]!r} is not a list"
    for rel in files:
        if not plain_relative(rel) or rel.split("/")[0] not in folders or "/" not in rel:
            inside = f"inside {', '.join(folders)}" if folders else "in one of its folders (none)"
            return f"files lists {str(rel)[:80]!r}, which is not a path {inside}"
    return ""


def write_staged(
    root: Path,
    generator: str,
    arguments: dict,
    write: Callable[[Path], dict],
    order: list[str],
    retire: tuple[list[str], set[str]] | None = None,
) -> dict:
    """Write a data set into `root` through its staging folder; return its manifest.

    Args:
        root: the data set's folder (made if missing; removed again if the run fails while it
            holds nothing else).
        generator: the command's name; names the staging folder.
        arguments: the settings, kept in the marker: a rerun with the same ones finishes the
            move of a set whose images were all written.
        write: writes every file but `manifest.json` into the folder it is given, returns the
            manifest.
        order: the top-level folders the set writes, in the order they are moved into `root`
            (the one a trainer reads, `train`, last). A folder `root` already holds (the same
            set, made again) gets each file replaced instead, with the same bytes.
        retire: (folders, files) of an earlier set this one replaces (`overwrite`), checked
            already with `check_made`: deleted once the new set is complete, just before it
            moves in.
    """
    made_root = not root.exists()
    folder = staging(root, generator)
    marker = {"generator": generator, "arguments": arguments, "pid": os.getpid(), **identity()}
    try:
        root.mkdir(parents=True, exist_ok=True)
        # the staging folder appears with its marker in it (one rename), so a second run
        # starting at the same moment never finds it without one and takes it for stale
        new = root / f"{folder.name}.{os.getpid()}.tmp"
        new.mkdir()
    except FileExistsError:
        raise ValueError(f"{new} is in the way; move it out of {root} and run again") from None
    except OSError as err:
        raise ValueError(
            f"cannot write the {generator} data set in {root} ({err.strerror or err}); choose "
            "a writable folder"
        ) from None
    try:
        write_json(new / MARKER, {**marker, "phase": "write"})
        os.rename(new, folder)
    except OSError:
        shutil.rmtree(new, ignore_errors=True)
        if not folder.exists():
            raise
        raise InUse(
            f"{root} is in use: another {generator} has just started writing into it "
            f"({folder}); wait for it to finish"
        ) from None
    try:
        manifest = write(folder)
        manifest[FINGERPRINTS] = _fingerprints(folder, order)
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    except BaseException:  # Ctrl-C too: nothing of this run is left behind
        shutil.rmtree(folder, ignore_errors=True)
        if made_root and not any(root.iterdir()):
            root.rmdir()
        raise
    folders, files = retire or ([], set())
    marker |= {"phase": "retire", "replace": retire is not None}
    marker |= {"folders": folders, "files": sorted(files)}
    write_json(folder / MARKER, marker)
    _install(root, folder, marker, order)
    return manifest


def _install(root: Path, folder: Path, marker: dict, order: list[str]) -> None:
    """Move a finished set from its staging folder into `root` (resumable: each step checks
    what is left to do): delete the earlier set's folders, move the new ones (`order`) in, the
    manifest last, then remove the staging folder."""
    if marker["phase"] == "retire":
        old = folder / _OLD
        old.mkdir(exist_ok=True)
        folders = marker["folders"]
        for name in folders:  # `train` first: from the first rename on, nothing trains on it
            if (root / name).is_dir() and not (root / name).is_symlink():
                os.replace(root / name, old / name)
        try:
            kept = [n for n in folders if (old / n).exists()]
            remove_made(old, kept, set(marker["files"]), root / "manifest.json")
        except ValueError:  # a file the user added since the check: the old set goes back
            for name in folders:
                if (old / name).exists() and not (root / name).exists():
                    os.replace(old / name, root / name)
            shutil.rmtree(folder)
            raise
        if marker["replace"]:
            (root / "manifest.json").unlink(missing_ok=True)  # the earlier set's
        old.rmdir()
        marker["phase"] = "move"
        write_json(folder / MARKER, marker)
    for name in order:
        source, target = folder / name, root / name
        if not source.exists():
            continue  # moved before an interruption, or not part of this set
        if not target.exists():
            os.replace(source, target)
            continue
        for dirpath, _, names in os.walk(source):  # the same set again: the same bytes
            into = target / Path(dirpath).relative_to(source)
            into.mkdir(parents=True, exist_ok=True)
            for n in names:
                os.replace(Path(dirpath) / n, into / n)
    if (folder / "manifest.json").exists():
        os.replace(folder / "manifest.json", root / "manifest.json")
    shutil.rmtree(folder)
