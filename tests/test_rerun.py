"""`train --like RUN`: a run trained again from its folder alone (session 29's walkthrough found
no way to, and a retrain on changed data gave another model without a word)."""

from __future__ import annotations

import json
import shutil

from helpers import tiny_flags

from anomaly.cli import main
from anomaly.rerun import same_model_words


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_like_reproduces_the_run_and_says_so(tiny_cookies, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_cookies, data)
    a, b = tmp_path / "a", tmp_path / "b"
    assert _cli(capsys, "train", *tiny_flags(data, **{"--epochs": 1}), "--out", a)[0] == 0
    code, out, _ = _cli(capsys, "train", "--like", a, "--out", b)
    assert code == 0 and f"{b / 'model.pt'} is byte for byte {a / 'model.pt'}" in out
    splits = [json.loads((run / "split.json").read_text()) for run in (a, b)]
    for split in splits:  # the same images, digests and stamps; only when they were taken
        split.pop("stamped_ns")
    assert splits[0] == splits[1]
    # the data set moved: the same images, the same learned state
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    code, out, _ = _cli(capsys, "train", "--like", a, "--out", tmp_path / "c", "--data", moved)
    assert code == 0 and "holds the same learned state" in out and "data" in out


def test_like_refuses_changed_images_and_other_settings(tiny_cookies, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_cookies, data)
    a = tmp_path / "a"
    assert _cli(capsys, "train", *tiny_flags(data, **{"--epochs": 1}), "--out", a)[0] == 0
    code, _, err = _cli(capsys, "train", "--like", a, "--out", tmp_path / "b", "--seed", "4")
    assert code == 2 and "leave out --seed" in err
    learned = json.loads((a / "split.json").read_text())["train"][0]
    shutil.copy(next((data / "test" / "good").iterdir()), learned)  # another image, same name
    code, _, err = _cli(capsys, "train", "--like", a, "--out", tmp_path / "b")
    assert code == 2 and "1 of the run's" in err and "changed since it was trained" in err
    assert not (tmp_path / "b").exists()


def test_another_model_names_what_made_them_differ(tiny_cookies, tmp_path, capsys):
    for name, seed in (("a", 1), ("b", 2)):
        flags = tiny_flags(tiny_cookies, **{"--epochs": 1, "--seed": seed})
        assert _cli(capsys, "train", *flags, "--out", tmp_path / name)[0] == 0
    record = json.loads((tmp_path / "b" / "versions.json").read_text())
    (tmp_path / "b" / "versions.json").write_text(json.dumps({**record, "torch": "9.9"}))
    words = same_model_words(tmp_path / "a", tmp_path / "b")
    assert "differs from" in words and "torch" in words and "-> '9.9'" in words


def test_like_of_an_empty_path_and_a_kmeans_whose_source_changed(tiny_cookies, tmp_path, capsys):
    """--like "" trained a fresh run; a kmeans run whose --from run was trained again since was
    trained again on the new encoder, then said "nothing versions.json records differs"."""
    try:
        code = main(
            ["train", "--like", "", "--data", str(tiny_cookies), "--out", str(tmp_path / "x")]
        )
    except SystemExit as stop:
        code = stop.code
    assert code == 2 and not (tmp_path / "x").exists()
    capsys.readouterr()
    data = tmp_path / "data"
    shutil.copytree(tiny_cookies, data)
    ae, km = tmp_path / "ae", tmp_path / "km"
    assert _cli(capsys, "train", *tiny_flags(data, **{"--epochs": 1}), "--out", ae)[0] == 0
    assert _cli(capsys, "train", "--method", "kmeans", "--from", ae, "--out", km)[0] == 0
    assert _cli(capsys, "train", "--like", km, "--out", tmp_path / "km1")[0] == 0  # unchanged
    shutil.rmtree(ae)  # trained again, with another seed
    flags = tiny_flags(data, **{"--epochs": 1, "--seed": 9})
    assert _cli(capsys, "train", *flags, "--out", ae)[0] == 0
    code, _, err = _cli(capsys, "train", "--like", km, "--out", tmp_path / "km2")
    assert code == 2 and "another model now" in err and not (tmp_path / "km2").exists()


def test_an_older_files_layout_is_not_called_another_config(tiny_cookies, tmp_path, capsys):
    """model.pt files written before their bytes were made canonical hold the same contents in
    another layout: it said "the files differ in the config they record: its fields"."""
    import torch

    a = tmp_path / "a"
    assert _cli(capsys, "train", *tiny_flags(tiny_cookies, **{"--epochs": 1}), "--out", a)[0] == 0
    shutil.copytree(a, tmp_path / "b")
    payload = torch.load(a / "model.pt", weights_only=True)
    assert payload["method"] is payload["config"]["method"]  # one object: written once
    payload["method"] = "".join(["a", "e"])  # noqa: FLY002  (an equal string apart, as before)
    torch.save(payload, tmp_path / "b" / "model.pt")
    assert (a / "model.pt").read_bytes() != (tmp_path / "b" / "model.pt").read_bytes()
    words = same_model_words(a, tmp_path / "b")
    assert "holds what" in words and "config and learned state alike" in words
