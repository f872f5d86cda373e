"""Generated data sets appear whole or not at all: what `make_cookies` and `make_photos` share.

A generator writes into a hidden staging folder inside ROOT (`ROOT/.make-cookies.partial/`, the
loaders skip hidden entries) that holds a marker naming the generator, its arguments, its process
and how far it got. Only when every image is written does it move the folders into ROOT, each in
one rename, the training images last and the `manifest.json` (the sign of a finished set) after
them. An interruption while images are written (Ctrl-C, a kill) leaves ROOT without a `train/`
folder, so nothing trains on half a data set; the next run of the same generator into ROOT, with
any arguments, deletes that staging folder (after checking that it holds nothing but what the
generator writes) and starts again. One interrupted while moving the folders into place
finishes the move first.

Staging inside ROOT rather than beside it: the rename never crosses file systems (ROOT may be a
mount point), ROOT's parent need not be writable, and nothing appears next to ROOT.

`--overwrite` replaces only what the earlier manifest lists (`anomaly.safe_files.remove_made`):
its folders are moved into the staging folder, each in one rename, and deleted there, so ROOT
never holds part of the old set.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from anomaly.safe_files import pid_alive, remove_made, write_json

MARKER = "generator.json"
_OLD = ".old"  # inside the staging folder: the earlier set's folders, being deleted


def check_place(root: Path, what: str) -> None:
    """Refuse a `root` that is a file, lies under a file, or lies inside a data set (a folder
    that holds train/ and test/): `what` written into `ROOT/test/new` would add a defect kind
    `new` to that set."""
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} is a file; choose a folder to write the {what} in")
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
    try:
        manifest = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    return manifest if isinstance(manifest, dict) else None


def write_png(array: np.ndarray, path: Path) -> None:
    """Save an image array as PNG, with no time or other metadata (the same array, the same
    bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def staging(root: Path, generator: str) -> Path:
    """The staging folder of `generator` (its command name, e.g. `make-cookies`) in `root`."""
    return root / f".{generator}.partial"


def check_made(root: Path, folders: list[str], files: set[str]) -> None:
    """Refuse, before anything is written, an overwrite that `remove_made` would refuse: a
    folder that is a link, or one holding files its generator did not make (`files`)."""
    extra = []
    for name in folders:
        folder = root / name
        if folder.is_symlink():
            raise ValueError(f"{folder} is a symbolic link, not a folder this generator made")
        for dirpath, _, names in os.walk(folder):
            rels = ((Path(dirpath) / n).relative_to(root).as_posix() for n in names)
            extra += [rel for rel in rels if rel not in files]
    if extra:
        raise ValueError(
            f"{root} holds files its generator did not make ({', '.join(sorted(extra)[:3])}"
            f"{', ...' if len(extra) > 3 else ''}), so nothing was deleted; move them away "
            "first, or choose another folder"
        )


def recover(root: Path, generator: str, arguments: dict) -> dict | None:
    """Deal with a staging folder an interrupted run of `generator` left in `root`.

    One interrupted while writing images is deleted; one interrupted while moving a finished
    set into place finishes the move. Returns the manifest when that finished set is the one
    `arguments` ask for (nothing is left to do), else None. Refused: a staging folder of a
    process still running, or one holding anything but generated files.
    """
    folder = staging(root, generator)
    if not folder.exists() and not folder.is_symlink():
        return None
    marker = _read_marker(folder, generator)
    pid = marker.get("pid")
    if isinstance(pid, int) and pid != os.getpid() and pid_alive(pid):
        raise ValueError(
            f"{root} is in use: process {pid} is running {generator} into it. Wait for it to "
            f"finish, or stop it. (If no such process runs, delete {folder}.)"
        )
    if marker.get("phase") not in ("retire", "move"):
        shutil.rmtree(folder)
        return None
    _install(root, folder, marker)
    if marker.get("arguments") == arguments:
        return json.loads((root / "manifest.json").read_text())
    return None


def _read_marker(folder: Path, generator: str) -> dict:
    """The staging folder's marker, after checking that the folder is one `generator` made
    and holds only what it writes: images, manifests, the marker (or a temporary file of it).
    One killed before its marker was written holds no file at all."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
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
        marker = {"generator": generator}  # killed as it began: nothing written yet
    ours = isinstance(marker, dict) and marker.get("generator") == generator
    if not ours or folder.is_symlink() or stray:
        why = f"it holds {stray[0]}" if stray else f"it has no {MARKER} of {generator}"
        raise ValueError(
            f"{folder} is not a staging folder {generator} left ({why}), so it will not "
            "delete it; move it away and run the command again"
        )
    return marker


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
    root.mkdir(parents=True, exist_ok=True)
    folder = staging(root, generator)
    try:
        folder.mkdir()
    except FileExistsError:
        raise ValueError(
            f"{root} is in use: another {generator} has just started writing into it "
            f"({folder}); wait for it to finish"
        ) from None
    marker = {"generator": generator, "arguments": arguments, "pid": os.getpid()}
    try:
        write_json(folder / MARKER, {**marker, "phase": "write"})
        manifest = write(folder)
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    except BaseException:  # Ctrl-C too: nothing of this run is left behind
        shutil.rmtree(folder, ignore_errors=True)
        if made_root and not any(root.iterdir()):
            root.rmdir()
        raise
    folders, files = retire or ([], set())
    marker |= {"phase": "retire", "order": order, "replace": retire is not None}
    marker |= {"folders": folders, "files": sorted(files)}
    write_json(folder / MARKER, marker)
    _install(root, folder, marker)
    return manifest


def _install(root: Path, folder: Path, marker: dict) -> None:
    """Move a finished set from its staging folder into `root` (resumable: each step checks
    what is left to do): delete the earlier set's folders, move the new ones in, the manifest
    last, then remove the staging folder."""
    if marker["phase"] == "retire":
        old = folder / _OLD
        old.mkdir(exist_ok=True)
        folders = [n for n in marker["folders"] if "/" not in n and n not in ("", ".", "..")]
        for name in folders:  # `train` first: from the first rename on, nothing trains on it
            if (root / name).is_dir() and not (root / name).is_symlink():
                os.replace(root / name, old / name)
        try:
            remove_made(old, [n for n in folders if (old / n).exists()], set(marker["files"]))
        except ValueError:  # a file the user added since the check: the old set goes back
            for name in folders:
                if (old / name).exists() and not (root / name).exists():
                    os.replace(old / name, root / name)
            shutil.rmtree(folder)
            raise
        if marker.get("replace"):
            (root / "manifest.json").unlink(missing_ok=True)  # the earlier set's
        old.rmdir()
        marker["phase"] = "move"
        write_json(folder / MARKER, marker)
    for name in marker["order"]:
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
