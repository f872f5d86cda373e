"""A generator's staging folder and an earlier manifest are untrusted input (someone else's
folder, a copied tree): a forged marker or manifest deletes or replaces nothing outside what the
generator made, and a damaged one gives one clear error. Two runs starting at once never take
each other's staging folder for a stale one; an interrupted run and a read-only folder say what
to do."""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest
from helpers import tree_bytes

from anomaly.cli import main
from anomaly.data import generated, make_cookies, make_photos
from anomaly.written_files import remove_made

TINY = {"preset": "tiny", "seed": 0, "size": 64}
ARGV = ["--preset", "tiny", "--seed", "0", "--size", "64"]


def _forge(root, marker, generator="make-cookies"):
    """A staging folder with `marker` as its generator.json, as someone else's tree holds it."""
    stage = generated.staging(root, generator)
    stage.mkdir(parents=True)
    (stage / generated.MARKER).write_text(json.dumps({"generator": generator, **marker}))
    return stage


def _refused(root, capsys, *words):
    """make-cookies into `root` exits 2 with one error line holding `words`, changing nothing."""
    before = tree_bytes(root.parent)
    assert main(["make-cookies", str(root), *ARGV]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and all(w in err for w in words), err
    assert tree_bytes(root.parent) == before
    return err


def test_a_forged_marker_deletes_no_file_outside_root(tmp_path, capsys):
    victim = tmp_path / "victim" / "thesis.txt"
    victim.parent.mkdir()
    victim.write_text("years of work")
    root = tmp_path / "root"
    for files in (["../../../victim/thesis.txt"], [str(victim)], ["train/../../victim"]):
        stage = _forge(
            root, {"phase": "retire", "replace": False, "folders": ["train"]} | {"files": files}
        )
        _refused(root, capsys, f"{stage / 'generator.json'} is damaged", "move the folder away")
        shutil.rmtree(stage)
    assert victim.read_text() == "years of work"


@pytest.mark.parametrize(
    "marker",
    [
        {"phase": "move"},  # no folders, files, replace
        {"phase": "move", "order": 5, "replace": False, "folders": 5, "files": []},
        {"phase": "retire", "replace": "yes", "folders": [], "files": []},
        {"phase": "move", "replace": False, "folders": ["../x"], "files": []},
        {"phase": "move", "replace": False, "folders": [], "files": {"a": 1}},
        {"phase": 3},
        {"phase": "write", "pid": "12"},
    ],
)
def test_a_damaged_marker_gives_one_clear_error(tmp_path, capsys, marker):
    root = tmp_path / "root"
    stage = _forge(root, marker)
    _refused(root, capsys, f"error: {stage / 'generator.json'} is damaged", "run again")


def test_a_forged_marker_never_retires_a_users_own_data_set(tiny_cookies, tmp_path, capsys):
    root = tmp_path / "mine"  # the user's MVTec-style set: no manifest of the generator
    shutil.copytree(tiny_cookies, root)
    (root / "manifest.json").unlink()
    folders = ["train", "test", "ground_truth"]
    files = sorted(p for p in tree_bytes(root))
    stage = _forge(root, {"phase": "retire", "replace": True, "folders": folders, "files": files})
    _refused(root, capsys, f"{stage} is left from an interrupted", f"delete {root / 'train'}")
    # `replace` alone: a manifest.json that is not the generator's stays
    (root / "manifest.json").write_text('{"notmine": 1}')
    shutil.rmtree(stage)
    stage = _forge(root, {"phase": "retire", "replace": True, "folders": [], "files": []})
    _refused(root, capsys, f"delete {root / 'manifest.json'}", "move it out of")
    # nor the manifest of a set whose folders stay
    shutil.copy(tiny_cookies / "manifest.json", root / "manifest.json")
    _refused(root, capsys, f"delete {root / 'manifest.json'}")


def test_a_forged_move_replaces_no_users_file_and_writes_nothing_outside_root(
    tiny_cookies, tmp_path, capsys
):
    outside = tmp_path / "sibling" / "train" / "good" / "000.png"
    outside.parent.mkdir(parents=True)
    outside.write_bytes(b"the user's")
    root = tmp_path / "root"
    (root / "sibling" / "train" / "good").mkdir(parents=True)
    (root / "sibling" / "train" / "good" / "000.png").write_bytes(b"also the user's")
    (root / "manifest.json").write_text('{"notmine": 1}')
    marker = {"phase": "move", "order": ["../sibling"], "replace": False, "folders": []}
    stage = _forge(root, marker | {"files": []})
    assert main(["make-cookies", str(root), *ARGV]) == 2  # the marker's `order` is not read
    assert outside.read_bytes() == b"the user's" and not stage.exists()
    assert (root / "sibling" / "train" / "good" / "000.png").read_bytes() == b"also the user's"
    # staged images that would replace a user's own (ROOT has no generator manifest)
    mine = tmp_path / "mine"
    shutil.copytree(tiny_cookies, mine)
    (mine / "manifest.json").unlink()
    stage = _forge(mine, {"phase": "move", "replace": False, "folders": [], "files": []})
    shutil.copytree(tiny_cookies / "train", stage / "train")
    (stage / "train" / "good" / "000.png").write_bytes(b"\x89PNG forged")
    _refused(mine, capsys, f"replace {mine / 'train' / 'good' / '000.png'}")


@pytest.mark.parametrize("entry", ["../victim.txt", "/ABS", "train/../../victim.txt"])
def test_overwrite_deletes_nothing_a_manifest_lists_outside_root(tmp_path, capsys, entry):
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    root = tmp_path / "c"
    make_cookies(root, **TINY)
    manifest = json.loads((root / "manifest.json").read_text())
    entry = entry.replace("/ABS", str(victim))
    manifest["images"][entry] = {"split": "train", "kind": "good", "mask": None}
    (root / "manifest.json").write_text(json.dumps(manifest))
    before = tree_bytes(tmp_path)
    argv = ["make-cookies", str(root), "--preset", "tiny", "--seed", "1", "--size", "64"]
    assert main([*argv, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert f"{root / 'manifest.json'} lists {entry!r}" in err and "nothing was deleted" in err
    assert tree_bytes(tmp_path) == before


def test_a_photo_manifest_cannot_reach_outside_its_set(tmp_path):
    victim = tmp_path / "x"
    victim.write_text("mine")
    root = tmp_path / "suite"
    make_photos(root, seed=1, tiny=True, sets=["moon"])
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["sets"]["moon"]["images"]["../../x"] = {"mask": None}
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"lists 'moon/\.\./\.\./x'.*nothing was deleted"):
        make_photos(root, seed=2, tiny=True, sets=["moon"], overwrite=True)
    assert victim.read_text() == "mine" and len(list((root / "moon").rglob("*.png"))) > 0


def test_remove_made_never_follows_a_link(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "000.png").write_bytes(b"mine")
    root = tmp_path / "root"
    (root / "train").mkdir(parents=True)
    (root / "train" / "good").symlink_to(outside, target_is_directory=True)
    remove_made(root, ["train"], {"train/good/000.png"})
    assert (outside / "000.png").read_bytes() == b"mine"
    with pytest.raises(ValueError, match="not a folder inside"):
        remove_made(tmp_path, ["root/train"], {"root/train/good/000.png"})


def test_a_second_run_never_sees_a_staging_folder_without_its_marker(tmp_path, monkeypatch):
    root = tmp_path / "c"
    stage = generated.staging(root, "make-cookies")
    seen, write_json = [], generated.write_json

    def write_marker(path, obj):
        seen.append(stage.exists())  # the marker is written before the folder has its name
        return write_json(path, obj)

    with monkeypatch.context() as m:
        m.setattr(generated, "write_json", write_marker)
        make_cookies(root, **TINY)
    assert seen[0] is False and min(p.name for p in root.iterdir()) == "ground_truth"

    other = {"generator": "make-cookies", "pid": os.getppid(), "phase": "write"}

    def another_run_starts(path, obj):  # in the moment between the check and the rename
        if not stage.exists():
            stage.mkdir()
            (stage / generated.MARKER).write_text(json.dumps(other))
        return write_json(path, obj)

    shutil.rmtree(root)
    # a run killed before its staging folder got its name left a temporary one: removed
    # unless its process (named in it) still runs
    for pid, kept in [(os.getppid(), True), (2**22 + 7, False)]:
        left = root / f"{stage.name}.{pid}.tmp"
        left.mkdir(parents=True)
        (left / generated.MARKER).write_text(json.dumps(other | {"pid": pid}))
        if kept:  # another run's, that has just begun
            with pytest.raises(ValueError, match="already holds files"):
                make_cookies(root, **TINY)
        else:
            make_cookies(root, **TINY)
        assert left.exists() is kept
        shutil.rmtree(root)
    monkeypatch.setattr(generated, "write_json", another_run_starts)
    with pytest.raises(ValueError, match="in use: another make-cookies has just started"):
        make_cookies(root, **TINY)
    assert [p.name for p in root.iterdir()] == [stage.name]  # its folder, untouched
    assert json.loads((stage / generated.MARKER).read_text()) == other


def test_an_interrupted_run_and_a_read_only_folder_say_what_to_do(
    tiny_cookies, tmp_path, monkeypatch, capsys
):
    root = tmp_path / "c"
    stage = generated.staging(root, "make-cookies")
    shutil.copytree(tiny_cookies / "train", stage / "train")
    (stage / generated.MARKER).write_text(
        json.dumps({"generator": "make-cookies", "phase": "write", "pid": 2**22 + 7})
    )
    argv = ["train", "--data", str(root), "--method", "meandiff", "--size", "64"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "interrupted make-cookies run: run the same make-cookies command again" in err
    shutil.rmtree(root)

    root.mkdir()
    mkdir = generated.Path.mkdir

    def read_only(path, *args, **kwargs):
        if path.name.endswith(".tmp"):  # the staging folder, in a folder mounted read-only
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return mkdir(path, *args, **kwargs)

    monkeypatch.setattr(generated.Path, "mkdir", read_only)
    assert main(["make-cookies", str(root), *ARGV]) == 2
    err = capsys.readouterr().err
    assert f"cannot write the make-cookies data set in {root} (Read-only file system)" in err
    assert "choose a writable folder" in err and "Errno" not in err


def test_root_that_is_a_broken_link_is_named(tmp_path):
    """make-cookies into a ROOT that is a link to nowhere said '[Errno 17] File exists'."""
    root = tmp_path / "data"
    root.symlink_to(tmp_path / "moved-away")
    with pytest.raises(ValueError, match=r"data is a symbolic link to .*moved-away, which does"):
        make_cookies(root, preset="tiny", seed=1, size=64)
    assert root.is_symlink() and not (tmp_path / "moved-away").exists()
