"""A generated data set the user has edited since (a mask redrawn, an image retouched) is never
replaced or deleted by a rerun of its generator: the manifest's SHA-256 of each file says what
the generator wrote."""

import hashlib
import json
import os
import re

import pytest
from helpers import tree_bytes

from anomaly.data.cookies import make_cookies
from anomaly.data.generated import FINGERPRINTS, complete, edited
from anomaly.data.photos import make_photos


def _cookies(root, seed=0):
    return make_cookies(root, preset="tiny", seed=seed, size=48)


def test_the_manifest_fingerprints_every_file_written(tmp_path):
    manifest = _cookies(tmp_path / "c")
    files = {p.relative_to(tmp_path / "c").as_posix() for p in (tmp_path / "c").rglob("*.png")}
    assert set(manifest[FINGERPRINTS]) == files and len(files) > 5
    for rel, digest in manifest[FINGERPRINTS].items():
        assert hashlib.sha256((tmp_path / "c" / rel).read_bytes()).hexdigest() == digest
    saved = json.loads((tmp_path / "c/manifest.json").read_text())
    assert saved[FINGERPRINTS] == manifest[FINGERPRINTS]


def test_the_same_set_again_writes_nothing_when_every_file_is_as_written(tmp_path):
    root = tmp_path / "c"
    manifest = _cookies(root)
    mask = next((root / "ground_truth").rglob("*.png"))
    before = {p: p.stat().st_ino for p in root.rglob("*.png")}
    os.utime(mask, (1, 1))  # a rewrite would give it a new inode and time
    assert _cookies(root) == manifest
    assert {p: p.stat().st_ino for p in root.rglob("*.png")} == before
    assert mask.stat().st_mtime == 1


def test_a_deleted_file_is_made_again(tmp_path):
    root = tmp_path / "c"
    _cookies(root)
    before = tree_bytes(root)
    image = next((root / "test").rglob("*.png"))
    image.unlink()
    assert not complete(root, json.loads((root / "manifest.json").read_text()))
    _cookies(root)
    assert tree_bytes(root) == before


@pytest.mark.parametrize("how", ["same settings", "overwrite"])
def test_an_edited_file_is_neither_replaced_nor_deleted(tmp_path, how):
    root = tmp_path / "c"
    _cookies(root)
    mask = min((root / "ground_truth").rglob("*.png"))
    mask.write_bytes(mask.read_bytes() + b"redrawn")  # the user's edit
    before = tree_bytes(root)
    rel = mask.relative_to(root).as_posix()
    with pytest.raises(ValueError, match=re.escape(str(root / rel)) + ".*nothing was changed"):
        if how == "overwrite":
            make_cookies(root, preset="tiny", seed=1, size=48, overwrite=True)
        else:
            _cookies(root)
    assert tree_bytes(root) == before
    assert edited(root, json.loads((root / "manifest.json").read_text())) == [rel]
    mask.unlink()  # moved away, as the message says: the set is made again
    _cookies(root)
    assert not edited(root, json.loads((root / "manifest.json").read_text()))


def test_a_link_in_a_files_place_counts_as_an_edit(tmp_path):
    root = tmp_path / "c"
    _cookies(root)
    image = min((root / "train").rglob("*.png"))
    outside = tmp_path / "mine.png"
    outside.write_bytes(image.read_bytes())
    image.unlink()
    image.symlink_to(outside)  # the same bytes, but through a link the user made
    with pytest.raises(ValueError, match="changed after make-cookies wrote it"):
        _cookies(root)
    assert image.is_symlink() and outside.read_bytes()


def test_someone_elses_fingerprints_are_never_read_outside_the_folder(tmp_path):
    root = tmp_path / "c"
    _cookies(root)
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"not theirs to read")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest[FINGERPRINTS] |= {"../secret.png": "0" * 64, str(outside): "0" * 64, "a/./b": 1}
    assert edited(root, manifest) == []


def test_a_manifest_without_fingerprints_is_made_again_as_before(tmp_path):
    root = tmp_path / "c"
    _cookies(root)
    manifest = json.loads((root / "manifest.json").read_text())
    del manifest[FINGERPRINTS]  # written by an older version of the generator
    (root / "manifest.json").write_text(json.dumps(manifest))
    image = min((root / "train").rglob("*.png"))
    original = image.read_bytes()
    image.write_bytes(b"edited")
    assert edited(root, manifest) == [] and not complete(root, manifest)
    _cookies(root)  # cannot tell an edit: the same bytes are written again
    assert image.read_bytes() == original


def test_photo_suite_edits_are_kept_too(tmp_path):
    root = tmp_path / "suite"
    make_photos(root, seed=0, tiny=True, sets=["page"])
    mask = min((root / "page/ground_truth").rglob("*.png"))
    mask.write_bytes(b"redrawn")
    for kwargs in ({}, {"seed": 1, "overwrite": True}):
        with pytest.raises(ValueError, match=re.escape(str(mask)) + ".*changed after make-photos"):
            make_photos(root, tiny=True, sets=["page"], **{"seed": 0} | kwargs)
        assert mask.read_bytes() == b"redrawn"
    mask.unlink()
    make_photos(root, seed=1, tiny=True, sets=["page"], overwrite=True)
    manifest = json.loads((root / "manifest.json").read_text())
    assert complete(root, manifest) and not edited(root, manifest)


def test_the_command_says_when_it_wrote_nothing(tmp_path, capsys):
    from anomaly.cli import main

    args = ["make-cookies", str(tmp_path / "c"), "--preset", "tiny", "--size", "48"]
    assert main(args) == 0
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'c'}: ")
    assert main(args) == 0
    said = capsys.readouterr().out
    assert said.startswith(f"{tmp_path / 'c'}: made before with these settings, every file as")
    next((tmp_path / "c/train").rglob("*.png")).unlink()  # one file gone: it is made again
    assert main(args) == 0
    assert capsys.readouterr().out.startswith("wrote ")


def test_an_edit_made_after_an_interrupted_rerun_is_kept_when_it_finishes(tmp_path, monkeypatch):
    from anomaly.data import generated

    root = tmp_path / "c"
    _cookies(root)
    before = tree_bytes(root)
    min((root / "test").rglob("*.png")).unlink()  # the set is made again, merged over ROOT
    real, moved = os.replace, []

    def replace(source, target):  # Ctrl-C once the first file has been merged in
        if str(target).startswith(str(root / "test")) and moved:
            raise KeyboardInterrupt
        real(source, target)
        moved.append(target)

    with monkeypatch.context() as m:
        m.setattr(generated.os, "replace", replace)
        with pytest.raises(KeyboardInterrupt):
            _cookies(root)
    assert (
        json.loads((root / ".make-cookies.partial/generator.json").read_text())["phase"] == "move"
    )
    image = min((root / "train").rglob("*.png"))  # not merged yet: the move would replace it
    image.write_bytes(b"retouched")  # the user's edit, before the command is run again
    kept = tree_bytes(root)
    with pytest.raises(ValueError, match=re.escape(str(image)) + ".*finishing the interrupted"):
        _cookies(root)
    assert tree_bytes(root) == kept
    image.unlink()  # moved away, as the message says: the set is finished and it is made again
    _cookies(root)
    assert tree_bytes(root) == before
