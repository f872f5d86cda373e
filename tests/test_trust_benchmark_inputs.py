"""`benchmark` refuses, before anything trains, what would lose or mix up a user's files: a
--notes path that is not benchmark notes, an --out inside a data set, two sets that would share
one name, a flag its mode does not read, a hand-edited curve file, a README whose markers share a
line with other text, a set manifest that names folders outside its suite."""

from __future__ import annotations

import json
import shutil

import pytest

from anomaly.cli import main

MEANDIFF = ["--methods", "meandiff", "--smoke"]


def _refused(capsys, argv, words):
    assert main(["benchmark", *map(str, argv)]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


@pytest.mark.slow  # trains through the benchmark's subprocesses (over 7 s)
def test_notes_never_replace_a_file_that_is_not_benchmark_notes(tiny_cookies, tmp_path, capsys):
    mine = tmp_path / "README.md"
    mine.write_text("my precious notes\n")
    out = tmp_path / "b"
    argv = ["--data", tiny_cookies, *MEANDIFF, "--out", out]
    _refused(capsys, [*argv, "--notes", mine], "exists and is not benchmark notes")
    assert mine.read_text() == "my precious notes\n" and not out.exists()  # nothing ran
    _refused(capsys, [*argv, "--notes", tmp_path], "is a folder")
    notes = tmp_path / "docs/notes.md"
    assert main(["benchmark", *map(str, argv), "--notes", str(notes)]) == 0
    assert notes.read_text().startswith("# Benchmark notes")
    assert main(["benchmark", *map(str, argv), "--notes", str(notes)]) == 0  # its own: replaced


def test_an_out_inside_a_data_set_is_refused_before_anything_runs(tiny_cookies, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_cookies, data)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    _refused(capsys, ["--data", data, *MEANDIFF, "--out", data / "test/bench"], "--out ")
    curve = ["--curve", "train-size", "--method", "meandiff", "--sizes", "1", "--smoke"]
    _refused(capsys, ["--data", data, *curve, "--out", data / "test/curves"], "inside the data")
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before


def test_sets_that_would_share_a_name_are_refused(tiny_cookies, tmp_path, capsys):
    for parent in ("v1", "v2"):
        shutil.copytree(tiny_cookies, tmp_path / parent / "cookies")
    sets = ["--data", tmp_path / "v1/cookies", "--data", tmp_path / "v2/cookies"]
    _refused(capsys, [*sets, *MEANDIFF, "--out", tmp_path / "b"], "would share the name")
    twice = ["--data", tiny_cookies, "--data", tiny_cookies]
    _refused(capsys, [*twice, *MEANDIFF, "--out", tmp_path / "b"], "twice")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--method", "meandiff", "--smoke"], "--method is read only with --curve"),
        (["--seeds-up-to", "4", *MEANDIFF], "--seeds-up-to is read only with --curve"),
        (["--curve", "train-size", "--methods", "ae", "--smoke"], "--methods is read only without"),
        (["--curve", "train-size", "--notes", "n.md", "--smoke"], "--notes is read only without"),
        (["--curve", "train-size", "--seeds-up-to", "-5", "--smoke"], "--seeds-up-to must be"),
    ],
)
def test_a_flag_the_mode_does_not_read_is_refused(tiny_cookies, tmp_path, capsys, flags, words):
    _refused(capsys, ["--data", tiny_cookies, "--out", tmp_path / "b", *flags], words)
    assert not (tmp_path / "b").exists()


def test_a_hand_edited_curve_file_is_never_overwritten(tiny_cookies, tmp_path, capsys):
    out = tmp_path / "curves"
    argv = ["--data", tiny_cookies, "--curve", "train-size", "--method", "meandiff"]
    argv += ["--sizes", "1", "--smoke", "--out", out]
    assert main(["benchmark", *map(str, argv)]) == 0
    table = out / "train_size_meandiff.csv"
    table.write_text(table.read_text() + "my hand edit\n")
    _refused(capsys, argv, "train_size_meandiff.csv")
    assert table.read_text().endswith("my hand edit\n")


def test_readme_markers_must_stand_on_their_own_lines(tiny_cookies, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("Intro <!-- benchmark:t --> see table <!-- /benchmark:t --> end.\n")
    argv = ["--data", tiny_cookies, *MEANDIFF, "--out", tmp_path / "b"]
    _refused(capsys, [*argv, "--readme", readme, "--readme-block", "t"], "a line of its own")
    readme.write_bytes(b"\xff\xfe<!-- benchmark:t -->\n")
    _refused(capsys, [*argv, "--readme", readme, "--readme-block", "t"], "is not UTF-8 text")


@pytest.mark.parametrize(
    "manifest", ["[1]", "{not json", json.dumps({"sets": [{"nm": 1}]}), json.dumps({"sets": 5})]
)
def test_a_data_sets_own_manifest_of_another_tool_is_no_suite(
    tiny_cookies, tmp_path, capsys, manifest
):
    from anomaly.benchmark_checks import discover_sets

    data = tmp_path / "data"
    shutil.copytree(tiny_cookies, data)
    (data / "manifest.json").write_text(manifest)
    if "nm" in manifest:
        _refused(capsys, ["--data", data, *MEANDIFF, "--out", tmp_path / "b"], "names the set")
    else:
        assert [s["path"] for s in discover_sets([str(data)])] == [str(data)]  # one plain set


def test_a_suite_manifest_naming_a_folder_outside_is_refused(tiny_cookies, tmp_path, capsys):
    suite = tmp_path / "suite"
    shutil.copytree(tiny_cookies, suite / "s1")
    (suite / "manifest.json").write_text(json.dumps({"sets": ["s1", "../elsewhere"]}))
    _refused(capsys, ["--data", suite, *MEANDIFF, "--out", tmp_path / "b"], "'../elsewhere'")
    assert not (tmp_path / "b").exists()


def test_pixel_metrics_without_some_masks_are_said_in_the_tables(tiny_cookies, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_cookies, data)
    unmasked = len(list((data / "ground_truth/crack").glob("*.png")))
    shutil.rmtree(data / "ground_truth/crack")
    out = tmp_path / "b"
    assert main(["benchmark", "--data", str(data), *MEANDIFF, "--out", str(out)]) == 0
    said = "leave out the defective test images that have no mask file"
    assert f"{said} ({unmasked})" in (out / "benchmark.md").read_text()
    assert said in capsys.readouterr().out
