"""Text from a run folder someone else made goes into HTML escaped, into matplotlib as plain text,
and never onto a terminal as control characters; a NaN or infinite score in its predictions.npz
is refused when it is read, naming the file and the fix."""

from __future__ import annotations

import json
import math
import socket
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from helpers import copy_run

from anomaly.cli import main
from anomaly.config import Config
from anomaly.detectors.base import Predictions
from anomaly.explorer import ThresholdExplorer, server
from anomaly.runs import RunDir, RunError

# markup a run folder could carry in each place it names something
FOLDER = "<img src=x onerror=alert(1)>"  # threshold.json: the folder a rule was set on
RUN = "<svg onload=alert(2)>"  # the run folder's own name
IMAGE = "<script>alert(3)<"  # an image file's name in predictions.npz
KIND = "<iframe src=k>"  # a defect kind in predictions.npz
METHOD = "<b onclick=alert(4)>"  # the method in predictions.npz
RAW = ("<img src=x", "<svg onload", "<script>", "<iframe", "<b onclick")


def html_values(widget) -> list[str]:
    """The value of every HTML widget under `widget` (the page as a browser gets it)."""
    import ipywidgets as w

    found, todo = [], [widget]
    while todo:
        x = todo.pop()
        if isinstance(x, w.HTML):
            found.append(x.value)
        todo += list(getattr(x, "children", ()))
    return found


def assert_escaped(texts) -> None:
    for text in texts:
        for raw in RAW:
            assert raw not in text, f"{raw!r} unescaped in {text[:300]!r}"


def tamper_predictions(run: Path, **changes) -> None:
    """Rewrite RUN/predictions.npz with some of its arrays changed (as someone else could)."""
    path = RunDir(run).file(RunDir.PREDICTIONS)
    pred = Predictions.load(path)
    for name, value in changes.items():
        setattr(pred, name, value)
    pred.save(path)


def conformal_on_folder(run: Path, folder: str) -> None:
    """A conformal threshold.json set on good images in `folder` (its numbers consistent)."""
    path = RunDir(run).file(RunDir.THRESHOLD)
    d = json.loads(path.read_text())
    d.update(
        value=math.nextafter(2.0, math.inf),
        rule="conformal",
        params={
            "alpha": 0.5,
            "n": 3,
            "rank": 2,
            "calibration": {
                "source": "folder",
                "folder": folder,
                "folder_resolved": "/x",
                "n": 3,
                "images_sha256": "ab",
                "scores": [1.0, 2.0, 3.0],
            },
        },
    )
    path.write_text(json.dumps(d))


# --- 1. HTML ------------------------------------------------------------------------------------


def test_the_folder_a_threshold_was_set_on_is_escaped(scored_ae_run, tmp_path):
    """threshold.json's calibration folder went into the rule's words and the report raw: a
    run folder from someone else ran script in the page and in report.html."""
    run = copy_run(scored_ae_run, tmp_path / "run")
    conformal_on_folder(run, FOLDER)
    ex = ThresholdExplorer([run])
    assert "guarantees a false-reject rate" in ex.rule.value  # the branch that named it
    assert "&lt;img src=x onerror=alert(1)&gt;" in ex.rule.value  # shown, once escaped
    assert "&amp;lt;" not in ex.rule.value
    report = ex.report_html()
    assert "&lt;img src=x onerror=alert(1)&gt;" in report
    assert_escaped([*html_values(ex.widget), report])


def test_run_image_kind_and_method_names_are_escaped_everywhere(scored_ae_run, tmp_path):
    """Every HTML the explorer makes (the page's widgets, the large view, a second run's
    verdicts, the download link and the report) with markup in the run folder's name and in
    the image names, defect kinds and method its predictions.npz names."""
    first = copy_run(scored_ae_run, tmp_path / RUN)
    pred = Predictions.load(RunDir(first).file(RunDir.PREDICTIONS))
    paths = [str(Path(p).with_name(f"{IMAGE}{i}.png")) for i, p in enumerate(pred.paths)]
    defects = [KIND if d != "good" else d for d in pred.defects]
    tamper_predictions(first, paths=paths, defects=defects, method=METHOD)
    conformal_on_folder(first, FOLDER)
    second = copy_run(first, tmp_path / f"{RUN}2")
    ex = ThresholdExplorer([first, second], gallery_size=64)
    g = ex.gallery
    g.show.value = "all"
    g.compare.value = ex.runs[list(ex.runs)[1]].name
    g.kind.value = KIND
    g.zoom_slot(0)
    ex._on_report(None)  # the download link names the run
    ex.slider.value = ex.runs[ex.run.name].saved.value  # the saved rule's words
    texts = [*html_values(ex.widget), ex.report_html()]
    assert any("&lt;script&gt;alert(3)&lt;" in t for t in texts)  # the image names shown
    assert any(RUN.replace("<", "&lt;").replace(">", "&gt;") in t for t in texts)
    assert_escaped(texts)


def test_dollar_signs_in_a_run_name_are_drawn_as_they_are(scored_ae_run, tmp_path):
    """A run folder named "$...$" (or such a defect kind) was parsed as mathtext: the explorer
    failed with matplotlib's ParseFatalException on "\\foo"."""
    run = copy_run(scored_ae_run, tmp_path / "r$\\foo{$")
    pred = Predictions.load(RunDir(run).file(RunDir.PREDICTIONS))
    tamper_predictions(run, defects=["$\\bar$" if d != "good" else d for d in pred.defects])
    ex = ThresholdExplorer([run])
    assert "r$\\foo{$" in ex.report_html()
    ex.snapshot().canvas.draw()


# --- 2. NaN and infinite scores --------------------------------------------------------------


@pytest.mark.parametrize("what", ["score", "map"])
def test_a_nan_or_infinite_value_in_predictions_npz_is_refused_when_read(
    scored_ae_run, tmp_path, what, capsys
):
    """The explorer took it, then failed in matplotlib ("Axis limits cannot be NaN or Inf") or
    said "scores contain NaN" naming no file; `explore` printed a URL to a page that failed."""
    run = copy_run(scored_ae_run, tmp_path / "run")
    pred = Predictions.load(RunDir(run).file(RunDir.PREDICTIONS))
    if what == "score":
        scores = pred.scores.copy()
        scores[0] = np.inf
        tamper_predictions(run, scores=scores)
    else:
        maps = pred.maps.copy()
        maps[1, 2, 3] = np.nan
        tamper_predictions(run, maps=maps)
    npz = RunDir(run).file(RunDir.PREDICTIONS)
    fix = f"python -m anomaly score --run {run}"
    with pytest.raises(RunError, match="NaN or infinite") as err:
        ThresholdExplorer([run])
    assert str(npz) in str(err.value) and fix in str(err.value)
    with pytest.raises(ValueError, match=f"{npz} is not a readable predictions.npz"):
        ThresholdExplorer([npz])
    with socket.socket() as probe:
        probe.bind((server.LOCAL, 0))
        port = probe.getsockname()[1]
    capsys.readouterr()
    assert main(["explore", "--run", str(run), "--port", str(port)]) == 2
    out, err_text = capsys.readouterr()
    assert "http" not in out  # refused before the URL is printed
    assert str(npz) in err_text and fix in err_text and "NaN or infinite" in err_text


def test_nan_scores_given_as_predictions_name_the_run(scored_ae_run):
    pred = RunDir(scored_ae_run).predictions()
    pred.scores = pred.scores.copy()
    pred.scores[0] = np.nan
    with pytest.raises(ValueError, match="run 'mine': 1 of its .* scores is NaN or infinite"):
        ThresholdExplorer({"mine": pred})


# --- 3. control characters in config.json ---------------------------------------------------

ESCAPE = "/nowhere\x1b[2K\r\x1b[32mALL GOOD\x1b[0m"
TEXT_FIELDS = [f.name for f in fields(Config) if f.type == "str" and "choices" not in f.metadata]


@pytest.mark.parametrize("name", TEXT_FIELDS)
def test_control_characters_in_a_text_field_are_refused_and_shown(name):
    flag = "--from" if name == "source_run" else "--" + name.replace("_", "-")
    with pytest.raises(ValueError) as err:
        Config().replace(**{name: ESCAPE}).validate()
    message = str(err.value)
    assert message.startswith(f"{flag} ") and "control characters" in message
    assert "\x1b" not in message and "\r" not in message and "\\x1b" in message


def test_paths_with_spaces_and_letters_beyond_ascii_are_fine():
    Config.for_method(
        "meandiff", data="Prüfteile/Charge 7", source_run="Läufe/ä ö", device="cpu"
    ).validate()


def test_a_config_json_with_terminal_escapes_is_refused_naming_the_file(
    scored_ae_run, tmp_path, capsys
):
    """`score` printed config.json's data as it was: "\\x1b[2K\\r" erased the line on the
    terminal and wrote "ALL GOOD" in its place."""
    run = copy_run(scored_ae_run, tmp_path / "run")
    path = RunDir(run).file(RunDir.CONFIG)
    config = json.loads(path.read_text())
    config["data"] = ESCAPE
    path.write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["score", "--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: --data " in err and "control characters" in err and "\\x1b" in err
    assert "\x1b" not in err and "\r" not in err


def test_train_data_flag_with_a_control_character_is_named(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", "--method", "meandiff", "--data", "/x\x1b[31mRED", "--out", str(out)])
    err = capsys.readouterr().err
    assert "--data " in err and "control characters" in err and "\x1b" not in err
    assert not out.exists()
