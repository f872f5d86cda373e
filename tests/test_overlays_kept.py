"""`score` replaces the overlays it wrote before, and only those: `overlays/.written.json` lists
them with their SHA-256; a file of the user's in overlays/ (notes, an overlay annotated by hand)
is never deleted, neither by a new `score` nor when `train --resume` retires the earlier
model's outputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import copy_run
from PIL import Image

from anomaly.cli import main
from anomaly.overlays import WRITTEN
from anomaly.pipeline import score_run
from anomaly.safe_files import sha256_file
from anomaly.written_files import marked_overlay, overlay_mark, remove_written


def _pngs(folder):
    return sorted(p.name for p in folder.glob("*.png"))


def test_the_record_lists_every_overlay_written(scored_ae_run, tmp_path):
    run = copy_run(scored_ae_run, tmp_path / "run")
    score_run(run)
    record = json.loads((run / "overlays" / WRITTEN).read_text())
    assert sorted(record) == _pngs(run / "overlays") and len(record) > 5
    assert all(sha256_file(run / "overlays" / n) == h for n, h in record.items())


def test_a_new_score_removes_the_earlier_overlays_but_not_the_users_files(
    scored_ae_run, tiny_cookies, tmp_path
):
    run = copy_run(scored_ae_run, tmp_path / "run")
    out = tmp_path / "out"
    score_run(run, data=tiny_cookies, out=out)
    earlier = _pngs(out / "overlays")
    (out / "overlays/notes.txt").write_text("mine")
    annotated = out / "overlays" / earlier[0]
    annotated.write_bytes(annotated.read_bytes() + b"circled by hand")  # changed since: mine
    other = tmp_path / "other"
    shutil.copytree(tiny_cookies, other)
    for image in (other / "test/good").glob("*.png"):  # other images: other overlay names
        image.rename(image.with_name("new_" + image.name))
    score_run(run, data=other, out=out)
    now = _pngs(out / "overlays")
    stale = [n for n in earlier if n.startswith("good_") and n != annotated.name]
    assert stale and not set(stale) & set(now)  # no overlay of an image not scored now
    assert (out / "overlays/notes.txt").read_text() == "mine"
    assert annotated.read_bytes().endswith(b"circled by hand")
    assert any(n.startswith("good_new_") for n in now)
    record = json.loads((out / "overlays" / WRITTEN).read_text())
    assert annotated.name not in record and "notes.txt" not in record


def test_an_overlay_of_a_users_file_name_gets_another_name(scored_ae_run, tmp_path):
    run = copy_run(scored_ae_run, tmp_path / "run")
    score_run(run)
    name = _pngs(run / "overlays")[0]
    record = json.loads((run / "overlays" / WRITTEN).read_text())
    del record[name]  # as if the user had put a file of that name there
    (run / "overlays" / WRITTEN).write_text(json.dumps(record))
    (run / "overlays" / name).write_bytes(b"the user's own picture")
    score_run(run)
    assert (run / "overlays" / name).read_bytes() == b"the user's own picture"
    record = json.loads((run / "overlays" / WRITTEN).read_text())
    assert name not in record and len(record) == len(_pngs(run / "overlays")) - 1


def test_a_new_model_keeps_the_users_files_in_overlays(scored_ae_run, tmp_path, capsys):
    run = copy_run(scored_ae_run, tmp_path / "run")
    score_run(run)
    (run / "overlays/MY_NOTES.txt").write_text("keep me")
    assert main(["train", "--out", str(run), "--resume", "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert "overlays/ (but not MY_NOTES.txt)" in out
    assert [p.name for p in (run / "overlays").iterdir()] == ["MY_NOTES.txt"]
    score_run(run)  # and the folder is filled again
    assert len(_pngs(run / "overlays")) > 5


def _marked_png(path, marked=True):
    info = overlay_mark() if marked else None
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path, pnginfo=info)


@pytest.mark.parametrize("record", [None, "{not json", "[]"])
def test_without_a_record_only_overlays_that_prove_score_wrote_them_go(tmp_path, record):
    """A missing (a copy that left hidden files out), damaged or edited record deleted every
    PNG in overlays/, the user's pictures too."""
    folder = tmp_path / "overlays"
    folder.mkdir()
    _marked_png(folder / "good_000.png")  # score's own, with its mark
    _marked_png(folder / "mine.png", marked=False)  # the user's picture
    (folder / "notes.txt").write_text("mine")
    if record is not None:
        (folder / WRITTEN).write_text(record)
    assert remove_written(folder, WRITTEN, marked_overlay) == ["mine.png", "notes.txt"]


def test_a_listed_name_without_its_digest_deletes_only_a_marked_overlay(tmp_path):
    folder = tmp_path / "overlays"
    folder.mkdir()
    _marked_png(folder / "good_000.png")
    _marked_png(folder / "notes.png", marked=False)
    (folder / WRITTEN).write_text(json.dumps({"good_000.png": None, "notes.png": None}))
    assert remove_written(folder, WRITTEN, marked_overlay) == ["notes.png"]


def test_score_marks_its_overlays_and_replaces_them_without_a_record(scored_ae_run, tmp_path):
    run = copy_run(scored_ae_run, tmp_path / "run")
    score_run(run)
    names = _pngs(run / "overlays")
    assert names and all(marked_overlay(run / "overlays" / n) for n in names)
    (run / "overlays" / WRITTEN).unlink()  # lost, as in a copy without hidden files
    _marked_png(run / "overlays" / "mine.png", marked=False)
    score_run(run)
    assert sorted(_pngs(run / "overlays")) == sorted([*names, "mine.png"])  # none twice


def test_someone_elses_record_deletes_nothing_outside_or_unlisted(tmp_path):
    folder, outside = tmp_path / "overlays", tmp_path / "secret.png"
    folder.mkdir()
    outside.write_bytes(b"theirs")
    (folder / "mine.png").write_bytes(b"the user's")
    (folder / "link.png").symlink_to(outside)
    record = {"../secret.png": None, str(outside): None, "link.png": None, "mine.png": "0" * 64}
    (folder / WRITTEN).write_text(json.dumps(record))
    assert remove_written(folder, WRITTEN) == ["link.png", "mine.png"]
    assert outside.read_bytes() == b"theirs" and (folder / "mine.png").read_bytes() == b"the user's"


def test_scores_of_other_data_replaced_in_out_are_named(
    scored_ae_run, tiny_cookies, tmp_path, capsys
):
    run = copy_run(scored_ae_run, tmp_path / "run")
    other = tmp_path / "other"
    shutil.copytree(tiny_cookies, other)
    out = tmp_path / "out"
    argv = ["score", "--run", str(run), "--out", str(out), "--no-overlays"]
    assert main([*argv, "--data", str(tiny_cookies)]) == 0
    assert "replace the scores" not in capsys.readouterr().out
    assert main([*argv, "--data", str(other)]) == 0
    said = capsys.readouterr().out
    assert f"note: these replace the scores of {tiny_cookies} that {out} held" in said
    assert main([*argv, "--data", str(other)]) == 0  # the same data again: nothing to say
    assert "replace the scores" not in capsys.readouterr().out


def test_the_temporary_files_of_an_interrupted_score_are_removed_too(tmp_path):
    folder = tmp_path / "overlays"
    folder.mkdir()
    (folder / WRITTEN).write_text(json.dumps({"good_000.png": None}))
    for name in (".good_000.png.k2j4x_.tmp", f"{WRITTEN}.a8b_c1.tmp", ".mine.png.x1.tmp"):
        (folder / name).write_bytes(b"half")
    assert remove_written(folder, WRITTEN) == [".mine.png.x1.tmp"]  # not a listed file's
