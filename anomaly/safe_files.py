"""Files written atomically and checkpoints read without unpickling anything.

Every write goes to a temporary file in the same folder that then replaces the old one, so a
killed process never leaves a half-written file; `safe_torch_load` refuses a file that holds
Python objects (loading them could run code). The run folder (`anomaly.runs.RunDir`) writes and
reads all its files through these (and holds its lock with `anomaly.run_lock`). A checkpoint's
bytes depend on its contents alone (`canonical`).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import io
import json
import math
import os
import pickle
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


class RunError(ValueError):
    """A run folder is missing, incomplete, unsafe, or does not match what is asked of it."""


class InUse(RunError):
    """A run folder or data set that another live process is writing: the command may work
    once it is done (the CLI exits with 75, sysexits' EX_TEMPFAIL, for a scheduler to retry)."""


def _atomic(path: Path, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write `path` through a temporary file in its folder (`temporary_beside`), then rename it
    into place; a full disk is a RunError naming the file (the old one, if any, is intact), and
    Ctrl-C stays a KeyboardInterrupt (torch.save's writer turns one into a RuntimeError on its
    way out: "unexpected pos"), so a training stopped while saving says how to resume."""
    try:
        with disk_full_named(path), temporary_beside(path) as (fd, _):
            _write_all(fd, write)
    except Exception as err:  # only to find a Ctrl-C it hides
        if (stop := _interruption(err)) is not None:
            raise stop from None
        raise
    return path


def _interruption(err: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt among the exceptions `err` was raised while handling, if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return err
        seen.add(id(err))
        err = err.__context__
    return None


def _write_all(fd: int, write: Callable[[io.BufferedWriter], None]) -> None:
    with os.fdopen(fd, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def disk_full_named(path: Path) -> Iterator[None]:
    """A full disk or a file-size limit met while `path` is written, said as a RunError naming
    it (the earlier file intact) and the fix, instead of a bare errno."""
    try:
        yield
    except (OSError, RuntimeError) as err:  # torch.save says ENOSPC as a RuntimeError
        cause = err if isinstance(err, OSError) else err.__context__  # torch's: the OSError
        if isinstance(cause, OSError) and cause.errno == errno.EFBIG:
            raise RunError(
                f"{path}: larger than this process may write (a file-size limit: ulimit -f; an "
                f"earlier {path.name}, if any, is as it was). Raise the limit, then run the "
                "command again"
            ) from None
        if not _disk_full(err, path.parent):
            raise
        trained = path.suffix == ".pt"  # a training's checkpoint: it may go on from the last
        raise RunError(
            f"{path}: the disk is full (no space left to write it; an earlier {path.name}, if "
            "any, is as it was). Free space, then run the command again"
            + " (a training cut short: add --resume where that command says it can)"
            * trained
        ) from None


@contextlib.contextmanager
def atomic_meanwhile(path: Path, write: Callable[[io.BufferedWriter], None]) -> Iterator[None]:
    """`_atomic(path, write)` done by a thread while the block runs (compressing with zlib and
    numpy's conversions let go of Python's lock, so on two cores the two overlap). The file
    replaces `path` when both have ended without error; if either fails, its temporary file is
    removed and `path` is as it was (the block's error is the one raised)."""
    from concurrent.futures import ThreadPoolExecutor

    with (
        ThreadPoolExecutor(1, thread_name_prefix="anomaly-write") as pool,
        disk_full_named(path),
        temporary_beside(path) as (fd, _),
    ):
        writing = pool.submit(_write_all, fd, write)
        try:
            yield
        finally:
            error = writing.exception()  # waits: the file is closed before it is renamed or removed
        if error is not None:
            raise error


FULL_DISK = (errno.ENOSPC, errno.EDQUOT)  # an OSError's errno of a full disk or a quota met


def _disk_full(err: Exception, folder: Path) -> bool:
    if isinstance(err, OSError):
        return err.errno in FULL_DISK
    try:  # torch's words for it vary: ask the file system (os.statvfs: not on Windows)
        return shutil.disk_usage(folder).free < 64 * 2**20
    except OSError:
        return False


@contextlib.contextmanager
def temporary_beside(path: Path) -> Iterator[tuple[int, Path]]:
    """(open descriptor, name) of a fresh temporary file in `path`'s folder, created exclusively
    with a random name (`tempfile.mkstemp`), so a link planted in a shared folder under a name
    it could take is never followed; written (close the descriptor, or write by name), it
    replaces `path` with the usual mode when the block ends, and is removed if the block fails."""
    fd, tmp = _new_temporary(path)
    try:
        yield fd, tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it 0600; the file is no secret
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# `.NAME.PID-RANDOM.tmp`: a temporary file's name says what it becomes and which process writes
# it (`anomaly.run_lock.remove_dead_writers` removes those of writers that were killed)
TEMPORARY_NAME = re.compile(r"\.(?P<name>.+)\.(?P<pid>[0-9]+)-[a-z0-9_]+\.tmp", re.DOTALL)


def cannot_write(err: OSError) -> bool:
    """Whether `err` says a folder may not be written: permission denied, or a read-only disk."""
    return err.errno in (errno.EACCES, errno.EPERM, errno.EROFS)


NAME_ROOM = 200  # a name this package makes: 255 bytes less a temporary file's additions


def fitting_name(name: str, room: int = NAME_ROOM) -> str:
    """`name`, or when its bytes exceed `room` (file systems allow 255 a name) its stem's middle
    replaced by a hash of the whole name: distinct names stay distinct, and both ends (a defect
    folder's name, an image's stem) stay readable."""
    raw = os.fsencode(name)
    if len(raw) <= room:
        return name
    stem, suffix = os.path.splitext(name)
    tag = "~" + hashlib.sha256(raw).hexdigest()[:10] + "~"
    head, tail = stem[: len(stem) // 2], stem[len(stem) // 2 :]  # both ends kept: a long
    while len(os.fsencode(head + tag + tail + suffix)) > room:  # defect folder, then the stem
        head, tail = (head[:-1], tail) if len(head) >= len(tail) else (head, tail[1:])
    return head + tag + tail + suffix


def _new_temporary(path: Path) -> tuple[int, Path]:
    """(open descriptor, name) of a new temporary file beside `path`, named `TEMPORARY_NAME`
    (the name cut to fit, `fitting_name`: a long file name is not refused for its temporary)."""
    prefix = f".{fitting_name(path.name)}.{os.getpid()}-"
    try:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    except OSError as err:
        if not cannot_write(err):
            raise
        raise PermissionError(  # someone else's folder, or a read-only disk; an OSError still,
            f"{path.parent} cannot be written ({err.strerror}), so {path.name} was not; give "
            "a folder of yours (--out), or copy what you need to one"  # so a cache works on
        ) from None
    return fd, Path(name)


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; once, at import, before any thread writes
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def finite(x) -> bool:
    """A number read from an untrusted file (JSON, a checkpoint) that is finite: an int or
    float, not a boolean (JSON's true is no count), not NaN or inf."""
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


MAX_RECORD_BYTES = 256 * 2**20  # no record a run writes comes near it (split.json: ~150 B an image)


def read_record(path: str | Path, limit: int = MAX_RECORD_BYTES) -> str:
    """The text of a small file a run or a command keeps (JSON records, the lock), from a
    folder that may be someone else's: RunError naming it when it is no regular file (a pipe
    would wait for ever, a device never end) or larger than `limit` (a link to a huge file);
    OSError when it cannot be read, UnicodeDecodeError when it is not UTF-8 (a byte-order mark
    before it, as Notepad and PowerShell 5 save a hand-edited threshold.json, is dropped)."""
    path = Path(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise RunError(
                f"{path} is not a regular file (a pipe or a device), where a record of the run "
                "goes; delete it"
            )
        if info.st_size > limit:
            raise RunError(
                f"{path} is {info.st_size:,} bytes, far more than any record of a run holds; it "
                "is not one this package wrote: delete it, or restore it from a copy"
            )
        data = f.read(info.st_size + 1)  # not read(limit): a read reserves what it may return
        while info.st_size < len(data) <= limit and (more := f.read(1 << 20)):  # grown since
            data += more
        return data[: limit + 1].decode("utf-8-sig")  # a BOM: Windows editors save one


def parse_record(text: str, where) -> object:
    """The value of a record's JSON `text` (from the file `where`, named in the error): RunError
    for invalid JSON, nesting too deep for Python's decoder (a 4 KB `[[[...]]]` from someone else
    raised RecursionError past every handler) or a number of over 4,300 digits."""
    try:
        return json.loads(text)
    except (RecursionError, ValueError) as err:  # JSONDecodeError too
        why = "nested too deeply" if isinstance(err, RecursionError) else err
        raise _not_json(where, why) from None


def _not_json(where, why) -> RunError:
    return RunError(
        f"{where} is not valid JSON ({why}); it is not a record this package wrote: restore it "
        "from a copy, or delete it and make it again"
    )


def load_record(path: str | Path, limit: int = MAX_RECORD_BYTES) -> object:
    """A JSON record of a run or a command (`read_record`, `parse_record`): RunError naming it
    for anything that is not one (not UTF-8 either); OSError when it cannot be read."""
    try:
        text = read_record(path, limit)
    except UnicodeDecodeError as err:
        raise _not_json(path, err) from None
    return parse_record(text, path)


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, in hex, read in blocks (a model.pt of gigabytes, or a
    link to one, is never held in memory whole)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def output_folder(path: str | Path) -> Path:
    """A folder to write outputs into (made when missing), refused when it is a symbolic link: a
    run folder from someone else could point one anywhere, and writing through it would replace
    files outside the run."""
    path = Path(path)
    if path.is_symlink():
        raise RunError(
            f"{path} is a symbolic link, and outputs are written only into real folders; remove "
            "the link (what it points to is not touched) and run the command again"
        )
    if path.exists() and not path.is_dir():
        raise RunError(
            f"{path} is a file where the outputs' folder goes; move or rename it (nothing of it "
            "is replaced) and run the command again"
        )
    check_path_above(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_above(path: str | Path) -> Path | None:
    """The nearest folder above `path` that exists, when it is a file (or a broken link): a
    folder cannot be made there. None when it is a folder."""
    for above in Path(path).absolute().parents:
        if above.is_dir():
            return None
        if above.exists() or above.is_symlink():
            return above
    return None


def check_path_above(path: str | Path) -> None:
    """RunError naming the file where a folder above `path` goes ("Not a directory" before)."""
    if (above := file_above(path)) is not None:
        raise RunError(
            f"{above} is {'a broken link' if above.is_symlink() else 'a file'}, not a folder, "
            f"so {path} cannot be made under it; choose another path"
        )


def claim_new(path: Path) -> bool:
    """Create `path` as an empty file if no file (or link) has its name, atomically: True when
    this call made it, False when the name was taken, by an earlier file or by another process
    claiming it at the same moment (two `predict` calls writing overlays into one folder)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except FileExistsError:
        return False
    return True


def save_png_new(png: bytes, names: Iterator[Path]) -> Path:
    """Save a PNG file's bytes under the first of `names` (all in one folder) that no file has:
    written whole to a temporary file first, then linked under that name, which fails for a
    taken one (an earlier file, or another process's at the same moment): a kill leaves no
    empty or half-written file under it. Without hard links there, `claim_new` then a rename."""
    name = next(names)
    fd, tmp = _new_temporary(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(png)
        os.chmod(tmp, 0o666 & ~_UMASK)
        while True:
            try:
                os.link(tmp, name)
                return name
            except FileExistsError:
                name = next(names)
            except OSError:  # no hard links on this file system
                while not claim_new(name):
                    name = next(names)
                os.replace(tmp, name)
                return name
    finally:
        tmp.unlink(missing_ok=True)


def writable_folder(path: str | Path, fix: str, make: bool = True) -> Path:
    """`output_folder(path)`, tried by writing a temporary file in it: a folder this process
    may not write in (a model shared read-only) is named with `fix`, before any work is done.
    `make` False: a missing folder is not made (a command that may still fail), but tried in
    the nearest folder above it that exists."""
    try:
        folder = output_folder(path) if make else Path(path)
        tried = folder
        while not make and not tried.is_dir() and tried != tried.parent:
            tried = tried.parent
        fd, name = tempfile.mkstemp(prefix=".write-check.", dir=tried)
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        if not cannot_write(err):
            raise
        raise RunError(f"cannot write in {path} ({err.strerror}): {fix}") from None
    return folder


def atomic_save(obj, path: str | Path) -> Path:
    """torch.save to a temporary file, then rename: an interrupted write never leaves a broken file."""
    import torch

    return _atomic(Path(path), lambda f: torch.save(canonical(obj), f))


def torch_bytes(obj) -> bytes:
    """The bytes torch.save writes for `obj` (to know their SHA-256 before writing them)."""
    import torch

    buffer = io.BytesIO()
    torch.save(canonical(obj), buffer)
    return buffer.getvalue()


def canonical(obj):
    """`obj` with each string interned and each dict, list and tuple made anew (a module state's
    `_metadata` kept), so that what torch.save writes depends on its contents alone: pickle
    refers back to a string object that recurs, so defaults sharing one "auto" and a config
    read from config.json gave model.pt files of other bytes (a threshold refused)."""
    if type(obj) is str:
        return sys.intern(obj)
    if type(obj) in (list, tuple):
        return type(obj)(canonical(v) for v in obj)
    if type(obj) in (dict, collections.OrderedDict):
        out = type(obj)((canonical(k), canonical(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):
            out._metadata = canonical(obj._metadata)
        return out
    return obj


def atomic_bytes(data: bytes, path: str | Path) -> Path:
    """Write `data` to `path` as `atomic_save` does."""
    return _atomic(Path(path), lambda f: f.write(data))


def write_json(path: str | Path, obj) -> Path:
    text = json.dumps(obj, indent=2, default=str) + "\n"
    return _atomic(Path(path), lambda f: f.write(text.encode()))


def safe_torch_load(path: Path) -> dict:
    """torch.load with weights_only=True: tensors and plain values only, never arbitrary code.
    Only a regular file is opened: a pipe or a device (/dev/zero, a FIFO put in a run folder
    from someone else) would never end."""
    import torch

    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        regular = True  # missing or unreadable: torch.load names it below
    if not regular:
        raise RunError(
            f"{path} is not a file (a pipe, a device or a folder), so it was not read; restore "
            "it from a copy of the run, or train the run again"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = [line.strip() for line in str(err).splitlines() if "GLOBAL" in line]
        if found:  # a Python object, not data: loading it would run its code
            raise RunError(
                f"{path} was refused: it holds Python objects, not only tensors and plain values, "
                f"and loading it could run code its author put there ({found[0][:160]}). This "
                "version of anomaly never writes such objects (an older one did, in last.pt: "
                "such a run cannot be resumed); use run folders only from people you trust, and "
                "train the run again yourself."
            ) from None
        raise RunError(
            f"{path} is not a readable anomaly checkpoint (not a torch file); train the run again"
        ) from None
    except PermissionError as err:  # its mode, not its bytes: nothing to train again
        raise RunError(f"{path} cannot be read ({err.strerror}): check its permissions") from None
    except Exception as err:  # noqa: BLE001  (a truncated or foreign file)
        raise RunError(
            f"{path} is not a readable anomaly checkpoint ({type(err).__name__}: "
            f"{str(err)[:200]}); train the run again"
        ) from None


def memory_words(n_bytes: int) -> str:
    """An amount of memory as people read it: "1.5 GiB", or "300 MiB" under one GiB."""
    return f"{n_bytes / 2**30:.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.0f} MiB"


def is_out_of_memory(err: Exception) -> bool:
    """Whether `err` is a failed allocation: a MemoryError, or torch's RuntimeError saying so
    ("can't allocate memory", CUDA's "Tried to allocate")."""
    return isinstance(err, MemoryError) or "allocate" in str(err)


def available_memory() -> int | None:
    """The bytes of memory Linux says a new allocation can have (MemAvailable), else None."""
    try:
        with open("/proc/meminfo") as f:
            line = next(x for x in f if x.startswith("MemAvailable:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def file_stamp(path: Path) -> tuple | None:
    """What tells one saved record from the next: inode, time, size and, for a regular file of
    a few MB at most, its SHA-256 (a file system of coarse times and made-up inode numbers
    would miss a rewrite of the same length); None when there is none."""
    try:
        st = Path(path).stat()
        small = stat.S_ISREG(st.st_mode) and st.st_size <= 2**22
        return st.st_ino, st.st_mtime_ns, st.st_size, sha256_file(path) if small else None
    except OSError:
        return None
