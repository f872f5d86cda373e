"""The run folder's lock (`anomaly.run_lock`): one writer at a time, a stale lock taken over by
one process only, links and pipes planted under its name never followed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from anomaly.run_lock import folder_lock
from anomaly.safe_files import RunError

HOLD = textwrap.dedent(
    """
    import fcntl, json, os, sys, time
    fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, json.dumps({"pid": int(sys.argv[2]), "command": "train"}).encode())
    print("held", flush=True)
    time.sleep(60)
    """
)


def _dead_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_a_lock_held_by_a_live_process_is_refused_whatever_pid_it_records(tmp_path):
    """A process that took over a stale lock holds it from the instant it locks the file, before
    it writes its own PID there: a second one taking over the same stale lock must not get it
    too (by the dead PID it still reads, it would)."""
    lock = tmp_path / ".lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock), str(_dead_pid())], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError, match="is in use: another process holds its lock"):
            folder_lock(tmp_path, ".lock", "train").__enter__()
        assert lock.exists()  # left to its holder
    finally:
        holder.kill()
        holder.wait()
    with folder_lock(tmp_path, ".lock", "train"):  # its holder gone: taken over
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_a_stale_lock_is_taken_over_and_removed_after(tmp_path):
    lock = tmp_path / ".lock"
    lock.write_text(json.dumps({"pid": _dead_pid(), "command": "train --out x" * 40}))
    with folder_lock(tmp_path, ".lock", "score"):
        assert json.loads(lock.read_text())["command"] == "score"
    assert not lock.exists()


def test_taking_the_lock_again_in_one_process_keeps_it_until_the_first_lets_go(tmp_path):
    lock = tmp_path / ".lock"
    with folder_lock(tmp_path, ".lock", "train"):
        with folder_lock(tmp_path, ".lock", "score"):
            pass
        assert json.loads(lock.read_text())["command"] == "train"  # still held
    assert not lock.exists()
    with folder_lock(tmp_path, ".lock", "threshold"):  # and free again
        assert lock.exists()


def test_a_link_planted_as_the_lock_is_never_followed(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("the user's")
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".lock").symlink_to(target)
    with folder_lock(folder, ".lock", "train"):
        assert not (folder / ".lock").is_symlink()
    assert target.read_text() == "the user's" and not (folder / ".lock").exists()


def test_taking_the_lock_removes_what_killed_writers_left_and_nothing_else(tmp_path):
    from anomaly.run_lock import DEAD_WRITER_AGE_S

    run, dead, alive = tmp_path / "run", _dead_pid(), os.getppid()
    (run / "overlays" / "deeper" / "deepest").mkdir(parents=True)
    old = time.time() - DEAD_WRITER_AGE_S - 60
    files = {
        f".model.pt.{dead}-ab_c1.tmp": "gone",  # a killed writer's, an hour old
        f"overlays/.x.png.{dead}-zz9.tmp": "gone",
        f"overlays/deeper/.y.png.{dead}-q1.tmp": "gone",
        f"overlays/deeper/deepest/.z.png.{dead}-q1.tmp": "kept",  # deeper than it looks
        f".last.pt.{dead}-new.tmp": "kept (recent)",  # still being written, maybe elsewhere
        f".last.pt.{alive}-abc.tmp": "kept",  # its writer runs
        ".model.pt.abc123.tmp": "kept",  # an older version's name: no PID to judge by
        f"notes.{dead}-a.tmp": "kept",  # not a hidden temporary name
        "model.pt": "kept",
    }
    for name, fate in files.items():
        (run / name).write_text(name)
        if "recent" not in fate:
            os.utime(run / name, (old, old))
    target = tmp_path / "precious.txt"
    target.write_text("the user's")
    os.utime(target, (old, old))
    (run / f".linked.{dead}-l.tmp").symlink_to(target)  # a link is never followed or removed
    with folder_lock(run, ".lock", "train"):
        pass
    for name, fate in files.items():
        assert (run / name).exists() == (fate != "gone"), name
    assert (run / f".linked.{dead}-l.tmp").is_symlink() and target.read_text() == "the user's"


def test_a_temporary_file_names_its_writer(tmp_path):
    from anomaly.safe_files import TEMPORARY_NAME, temporary_beside

    with temporary_beside(tmp_path / "model.pt") as (fd, tmp):
        os.close(fd)
        match = TEMPORARY_NAME.fullmatch(tmp.name)
        assert match and match["name"] == "model.pt" and int(match["pid"]) == os.getpid()
