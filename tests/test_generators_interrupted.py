"""make-cookies and make-photos stopped partway (Ctrl-C, a kill): ROOT never looks like a
finished data set, and the same command run again completes it, byte for byte."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
from helpers import tree_bytes

from anomaly.cli import main
from anomaly.data import cookies, generated, make_cookies, make_photos, photos

TINY = {"preset": "tiny", "seed": 0, "size": 64}  # the `tiny_cookies` fixture's settings


def _stop_after(monkeypatch, module, name, calls, stop=KeyboardInterrupt):
    """Make `module.name` raise `stop` (Ctrl-C) on its call number `calls + 1`."""
    real, done = getattr(module, name), []

    def wrapper(*args, **kwargs):
        if len(done) == calls:
            raise stop
        done.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


def _train_refuses(root, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--data", root, "--method", "meandiff", "--size", "64", "--out", out]
    assert main([str(a) for a in argv]) == 2
    assert "error:" in capsys.readouterr().err and not out.exists()


def test_ctrl_c_while_drawing_cookies_leaves_nothing_and_a_rerun_completes(
    tiny_cookies, tmp_path, monkeypatch, capsys
):
    root = tmp_path / "c"
    with monkeypatch.context() as m:
        _stop_after(m, cookies, "render_cookie", 5)
        assert main(["make-cookies", str(root), "--preset", "tiny", "--size", "64"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not root.exists()  # made by the run, and removed again with its staging folder
    existing = tmp_path / "mine"
    existing.mkdir()
    with monkeypatch.context() as m:
        _stop_after(m, cookies, "render_cookie", 5)
        with pytest.raises(KeyboardInterrupt):
            make_cookies(existing, **TINY)
    assert existing.is_dir() and not any(existing.iterdir())  # the user's folder stays
    assert main(["make-cookies", str(root), "--preset", "tiny", "--size", "64"]) == 0
    assert tree_bytes(root) == tree_bytes(tiny_cookies)


def test_a_killed_run_leaves_no_data_set_and_the_same_command_completes_it(
    tiny_cookies, tmp_path, capsys
):
    root = tmp_path / "c"
    kill_partway = (  # the process kills itself after 5 images: no cleanup can run
        "import os, signal, sys\n"
        "from anomaly.cli import main\n"
        "from anomaly.data import cookies\n"
        "real, done = cookies.render_cookie, []\n"
        "def render(*args, **kwargs):\n"
        "    if len(done) == 5:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    done.append(1)\n"
        "    return real(*args, **kwargs)\n"
        "cookies.render_cookie = render\n"
        "main(sys.argv[1:])\n"
    )
    argv = ["make-cookies", str(root), "--preset", "tiny", "--size", "64"]
    env = {**os.environ, "ANOMALY_CACHE": "off"}
    killed = subprocess.run([sys.executable, "-c", kill_partway, *argv], env=env, check=False)
    assert killed.returncode == -signal.SIGKILL
    assert [p.name for p in root.iterdir()] == [".make-cookies.partial"]
    assert len(list(root.rglob("*.png"))) >= 5  # images were written, out of sight
    _train_refuses(root, tmp_path, capsys)
    assert main(argv) == 0  # not "files this generator did not make"
    assert tree_bytes(root) == tree_bytes(tiny_cookies)


def _stop_moving_to(monkeypatch, suffix):
    """Ctrl-C when a file or folder is about to be moved to a path ending in `suffix`."""
    real = os.replace

    def replace(source, target):
        if str(target).endswith(suffix):
            raise KeyboardInterrupt
        real(source, target)

    monkeypatch.setattr(generated.os, "replace", replace)


@pytest.mark.parametrize(
    "stop, left",
    [  # where --overwrite was stopped, and what ROOT held then (besides notes.txt)
        (".old/test", ["ground_truth", "manifest.json", "test"]),  # the old set going out
        ("c/test", ["ground_truth"]),  # the new one coming in
        ("c/train", ["ground_truth", "test"]),
        ("c/manifest.json", ["ground_truth", "test", "train"]),
    ],
)
def test_stopped_while_moving_into_place_a_rerun_finishes_the_move(
    tiny_cookies, tmp_path, monkeypatch, stop, left
):
    root = tmp_path / "c"
    make_cookies(root, preset="tiny", seed=5, size=64)
    (root / "notes.txt").write_text("mine")
    with monkeypatch.context() as m:
        _stop_moving_to(m, stop)
        with pytest.raises(KeyboardInterrupt):
            make_cookies(root, **TINY, overwrite=True)
    shown = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    assert shown == sorted([*left, "notes.txt"])  # `train` but no manifest, or no `train`
    manifest = json.loads((tiny_cookies / "manifest.json").read_text())
    assert make_cookies(root, **TINY) == manifest  # no --overwrite: that run had it
    assert tree_bytes(root) == tree_bytes(tiny_cookies) | {"notes.txt": b"mine"}


def test_overwrite_still_never_deletes_a_users_files(tmp_path, monkeypatch):
    root = tmp_path / "c"
    make_cookies(root, **TINY)
    with monkeypatch.context() as m:  # a killed run: its staging folder stays
        m.setattr(shutil, "rmtree", lambda *args, **kwargs: None)
        _stop_after(m, cookies, "render_cookie", 3)
        with pytest.raises(KeyboardInterrupt):
            make_cookies(root, preset="tiny", seed=1, size=64, overwrite=True)
    assert (root / ".make-cookies.partial").is_dir()
    mine = root / "train" / "good" / "mine.png"
    shutil.copy(root / "train" / "good" / "000.png", mine)
    before = tree_bytes(root)
    with pytest.raises(ValueError, match=r"did not make \(train/good/mine.png\)"):
        make_cookies(root, preset="tiny", seed=1, size=64, overwrite=True)
    assert mine.is_file() and json.loads((root / "manifest.json").read_text())["seed"] == 0
    assert (
        tree_bytes(root).keys() <= before.keys() and (root / "train" / "good" / "007.png").is_file()
    )
    mine.unlink()
    before = tree_bytes(root)
    render = cookies.render_cookie

    def render_and_add_a_file(*args, **kwargs):  # a file of the user's, while images are drawn
        shutil.copy(root / "train" / "good" / "000.png", mine)
        return render(*args, **kwargs)

    monkeypatch.setattr(cookies, "render_cookie", render_and_add_a_file)
    with pytest.raises(ValueError, match=r"did not make \(train/good/mine.png\)"):
        make_cookies(root, preset="tiny", seed=1, size=64, overwrite=True)
    assert tree_bytes(root) == before | {"train/good/mine.png": before["train/good/000.png"]}
    # a folder of that name holding anything the generator does not write is never deleted
    stage = generated.staging(root, "make-cookies")
    stage.mkdir(exist_ok=True)
    (stage / generated.MARKER).write_text(json.dumps({"generator": "make-cookies"}))
    (stage / "thesis.txt").write_text("important")
    with pytest.raises(ValueError, match="thesis.txt"):
        make_cookies(root, **TINY)
    assert (stage / "thesis.txt").read_text() == "important"


def test_a_run_in_progress_is_not_disturbed(tmp_path):
    root = tmp_path / "c"
    stage = generated.staging(root, "make-cookies")
    stage.mkdir(parents=True)
    marker = {"generator": "make-cookies", "pid": os.getppid(), "phase": "write"}
    (stage / generated.MARKER).write_text(json.dumps(marker))
    with pytest.raises(ValueError, match=f"in use: process {os.getppid()}"):
        make_cookies(root, **TINY)
    assert stage.is_dir()


def test_an_interrupted_photo_suite_shows_no_set_until_all_are_written(tmp_path, monkeypatch):
    root, few = tmp_path / "suite", ["page", "coins"]
    make_photos(tmp_path / "whole", seed=1, tiny=True, sets=few)
    with monkeypatch.context() as m:
        m.setattr(shutil, "rmtree", lambda *args, **kwargs: None)  # as if killed
        _stop_after(m, photos, "_make_set", 1)
        with pytest.raises(KeyboardInterrupt):
            make_photos(root, seed=1, tiny=True, sets=few)
    assert [p.name for p in root.iterdir()] == [".make-photos.partial"]  # no ROOT/<set>
    make_photos(root, seed=1, tiny=True, sets=few)
    assert tree_bytes(root) == tree_bytes(tmp_path / "whole")
    # --overwrite stopped while the old sets go out and the new one comes in: every set in
    # ROOT is a whole one
    for stop, left in [
        (".old/coins", ["coins", "manifest.json"]),
        ("suite/page", []),
        ("suite/manifest.json", ["page"]),
    ]:
        with monkeypatch.context() as m:
            _stop_moving_to(m, stop)
            with pytest.raises(KeyboardInterrupt):
                make_photos(root, seed=2, tiny=True, sets=["page"], overwrite=True)
        assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == left
        make_photos(root, seed=2, tiny=True, sets=["page"])
        assert json.loads((root / "manifest.json").read_text())["seed"] == 2
        assert sorted(p.name for p in root.iterdir()) == ["manifest.json", "page"]
        make_photos(root, seed=1, tiny=True, sets=few, overwrite=True)
    assert tree_bytes(root) == tree_bytes(tmp_path / "whole")
