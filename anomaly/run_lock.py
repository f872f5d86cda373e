"""The lock file of a folder being written (a run folder's `.lock`): two processes never write
one folder at a time, and readers refuse a folder still being written.

The file holds the PID and the command of its holder, for the message a second process gets;
where there is `fcntl` (Linux, macOS) the holder also keeps it locked with `flock`, so two
processes taking over one stale lock (its process killed) at the same instant cannot both get
it. Taking the lock removes what writers killed in the folder left: their temporary files
(`remove_dead_writers`). `pid_alive` is also what the data generators' markers use.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from anomaly.safe_files import TEMPORARY_NAME, InUse, RunError, cannot_write, load_record

try:
    import fcntl
except ImportError:  # Windows: a lock is held by its PID alone
    fcntl = None


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` runs on this machine (one of another user's counts)."""
    if os.name == "nt":  # os.kill(pid, 0) there sends Ctrl-C to a process group
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:  # a number no process can have
        return False
    return True


def _windows_pid_alive(pid: int) -> bool:
    import ctypes

    kernel = ctypes.WinDLL("kernel32", use_last_error=True)  # (get_last_error reads it then)
    handle = kernel.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.get_last_error() == 5  # access denied: it runs, as another user's
    try:
        code = ctypes.c_ulong()
        return bool(kernel.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == 259
    finally:
        kernel.CloseHandle(handle)


def identity() -> dict:
    """What tells this process from a later one of the same number, for a lock or marker it
    writes: the machine's boot id and the process's start time in clock ticks after boot
    (/proc; {} where there is none). Compared exactly by `holder_alive`: no wall clock."""
    boot, start = _boot_id(), _start_ticks(os.getpid())
    return {} if boot is None or start is None else {"boot": boot, "start": start}


def holder_alive(record: dict, written: float) -> bool:
    """Whether the process a lock or marker `record` names (its "pid") still runs: not when the
    machine restarted since (another boot id), nor when its number is another process's now
    (another start time); a record without them (an older version's) by `alive_since`."""
    pid = record.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 2**31:
        return False
    boot, start = record.get("boot"), record.get("start")
    if isinstance(boot, str) and isinstance(start, int) and (now := _boot_id()) is not None:
        return boot == now and pid_alive(pid) and _start_ticks(pid) in (start, None)
    return alive_since(pid, written)


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """The process's start time, in clock ticks after boot (/proc/PID/stat's field 22)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def alive_since(pid: int, written: float) -> bool:
    """Whether a process `pid` runs that can be the one that wrote a file last modified at
    `written` (seconds since the epoch): a process started after it is another program that got
    the number since (the writer killed, the machine restarted), where /proc says when it
    started; elsewhere any live process of that number counts."""
    if not pid_alive(pid):
        return False
    started = _started_at(pid)
    return started is None or started <= written + 2  # /proc's boot time is in whole seconds


def _started_at(pid: int) -> float | None:
    """When the process `pid` started, in seconds since the epoch; None where /proc cannot say."""
    if (ticks := _start_ticks(pid)) is None:
        return None
    try:
        with open("/proc/stat") as lines:
            boot = next(int(line.split()[1]) for line in lines if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration):
        return None


def _live_holder(path: Path, flock_free: bool = False) -> tuple[int, str] | None:
    """(PID, command) of the live process holding the lock file `path`, else None (no lock, a
    damaged one, or one left by a process that no longer runs). `flock_free`: this process has
    just taken the file's flock, so a holder that flocks its lock (this version) is gone."""
    try:
        written = path.stat().st_mtime
        holder = load_record(path)
        pid = holder["pid"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(pid, int) or isinstance(pid, bool):  # a lock this package wrote: an int
        return None
    if flock_free and holder.get("flock") is True:
        return None
    if pid > 0 and pid != os.getpid() and holder_alive(holder, written):
        command = str(holder.get("command", "?"))[:200]
        return pid, "".join(c if c.isprintable() else "?" for c in command)
    return None


def _in_use(folder: Path, path: Path, holder: tuple[int, str] | None, command: str) -> InUse:
    other = ", or choose another --out" if command in ("train", "score") else ""
    who = f"process {holder[0]} is running `{holder[1]}` on it" if holder else "another process"
    return InUse(
        f"{folder} is in use: {who}{' holds its lock' * (not holder)}. Wait for it to finish"
        f"{other}. (If no such process runs, delete {path}.)"
    )


def check_not_in_use(folder: Path, name: str, command: str) -> None:
    """Refuse to read a folder that a live process holds the lock file `folder/name` of (a run
    still training): what it holds now is half-written, not interrupted. A lock whose holder
    flocks it (this version's) counts only while its flock is held."""
    path = folder / name
    if _held_here(path.absolute(), folder):  # (a command run inside another)
        return
    try:
        flocked = fcntl is not None and load_record(path).get("flock") is True
    except (OSError, ValueError, AttributeError):
        flocked = False
    if flocked:  # its holder flocks it: the flock decides (another boot id or PID namespace,
        if not _flock_free(path):  # a container's, says nothing of a process there)
            raise _in_use(folder, path, _live_holder(path), command)
    elif holder := _live_holder(path):
        raise _in_use(folder, path, holder, command)


def _flock_free(path: Path) -> bool:
    """Whether nobody holds the file `path`'s flock (tried shared, let go at once); False where
    it cannot be told (no fcntl, a file that will not open)."""
    if fcntl is None:
        return False
    try:
        fd = os.open(
            path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        )
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True  # (closing the file lets it go)
    except OSError:
        return False
    finally:
        os.close(fd)


_HELD: dict[Path, int] = {}  # the lock files this process holds, and the thread holding each


def _held_here(key: Path, folder: Path) -> bool:
    """Whether this thread holds the lock file `key` (taking it again is free: a command run
    inside another); InUse where another thread of this process does (a service's threads
    trained two data sets into one folder, each let through by the other's lock)."""
    holder = _HELD.get(key)
    if holder is not None and holder != threading.get_ident():
        try:
            theirs = f" ({load_record(key).get('command')})"
        except (OSError, ValueError, AttributeError):
            theirs = ""
        raise InUse(
            f"{folder} is in use: another thread of this process holds its lock{theirs}. Wait "
            "for it to finish, or choose another --out"
        )
    return holder is not None


@contextlib.contextmanager
def folder_lock(folder: Path, name: str, command: str) -> Iterator[Path]:
    """Hold the lock file `folder/name` (with this PID and `command`) while writing in `folder`;
    refuse if a live process holds it. A lock left by a process that no longer runs (killed,
    machine restarted) is taken over. The file is held by `fcntl.flock` where there is one, so
    two processes taking over one stale lock at the same instant cannot both get it (the PID
    alone could not tell them apart). A lock whose file says its holder flocks it is stale once
    its flock is free, whatever process has its PID now; an older version's (no such word) still
    counts while a process of its PID runs that started before it was written."""
    if folder.exists() and not folder.is_dir():
        raise RunError(f"{folder} is a file, not a run folder; choose a folder name")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if path.is_dir() and not path.is_symlink():
        raise RunError(
            f"{path} is a folder, where {command} keeps its lock file; move it out of {folder} "
            "and run the command again"
        )
    key = path.absolute()
    if _held_here(key, folder):  # this thread holds it already
        yield folder
        return
    fd = _take_lock(folder, path, command)
    _HELD[key] = threading.get_ident()
    remove_dead_writers(folder)
    try:
        yield folder
    finally:
        _HELD.pop(key, None)
        path.unlink(missing_ok=True)  # before the lock goes: a waiter then finds no file
        os.close(fd)


def not_writable(folder: Path, err: OSError, command: str) -> RunError:
    """The error for a folder `command` cannot write in: someone else's run, or a read-only
    disk (it said "could not take the lock ...; delete it", of a lock that was not there)."""
    return RunError(
        f"{folder} cannot be written ({err.strerror}), and {command} writes in it: a run of "
        "someone else's, or on a read-only disk. Copy the run to a folder of yours (cp -r) and "
        "run it there; predict --out DIR, score --out DIR and export --out FILE need no write "
        "to the run"
    )


def _take_lock(folder: Path, path: Path, command: str) -> int:
    """An open descriptor of the lock file `path`, held, with this PID and `command` in it."""
    for _ in range(3):
        if path.is_symlink() or (path.exists() and not path.is_file()):
            path.unlink()  # a link or a pipe planted under its name: never a lock of ours
        try:
            fd = os.open(path, os.O_CREAT | os.O_RDWR | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except OSError as err:
            if cannot_write(err) and not os.access(folder, os.W_OK):  # (a folder it may write:
                # another user's lock file in it, as before)
                raise not_writable(folder, err, command) from None
            continue  # one planted again since: try again
        held = _flock(fd)
        holder = _live_holder(path, flock_free=held and fcntl is not None)
        try:
            if held and holder is None and _still_at(fd, path):
                os.ftruncate(fd, 0)
                record = {"pid": os.getpid(), "command": command} | identity()
                record |= {"flock": True} if fcntl is not None else {}  # else by its PID alone
                os.write(fd, json.dumps(record).encode())
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        if not held or holder is not None:  # a live process holds it
            raise _in_use(folder, path, holder, command)
        # else its holder removed it after we opened it, and another may have made a new one
    raise RunError(f"could not take the lock {path}; delete it if no process uses the run")


def _still_at(fd: int, path: Path) -> bool:
    """Whether the open file `fd` is still the file at `path` (a holder removes its lock file
    before letting it go: one opened before that is no lock any more)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
    except FileNotFoundError:
        return False


def _flock(fd: int) -> bool:
    """Whether this process now holds the file `fd` (always, where there is no fcntl)."""
    if fcntl is None:
        return True
    for wait in (0.0, 0.02, 0.05, 0.1):  # a reader checking it (`_flock_free`) holds it briefly
        time.sleep(wait)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            continue
    return False


DEAD_WRITER_AGE_S = 3600  # a writer on another machine sharing the folder is never hurried


def remove_dead_writers(folder: Path, depth: int = 2) -> list[Path]:
    """Remove the temporary files that writers killed mid-write left in `folder` and its
    subfolders (`depth` levels; links never followed): plain files named as this package names
    them (`safe_files.TEMPORARY_NAME`), whose process no longer runs on this machine, last
    written an hour ago or more. Every other file stays. Returns what was removed."""
    removed, now = [], time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISDIR(info.st_mode) and depth > 0:
            removed += remove_dead_writers(Path(entry.path), depth - 1)
        elif (
            stat.S_ISREG(info.st_mode)
            and (match := TEMPORARY_NAME.fullmatch(entry.name))
            and now - info.st_mtime >= DEAD_WRITER_AGE_S
            and not _alive_here(int(match["pid"]))
        ):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _alive_here(pid: int) -> bool:
    return pid == os.getpid() or (0 < pid < 2**31 and pid_alive(pid))
