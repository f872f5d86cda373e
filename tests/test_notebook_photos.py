"""Notebook 07's helpers (`anomaly.notebook_photos`): the loader's checks it shows, its settings,
the folder of new photos, and the notebook's definition in scripts/build_notebooks.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import numpy as np
import pytest

from anomaly import notebook as nb
from anomaly import notebook_photos as own
from anomaly.data import AnomalyDataset
from anomaly.data.photos_defects import KINDS
from anomaly.metrics import conformal_n_needed
from anomaly.notebook_checks import PROBLEMS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Smoke settings under a fresh home, and the stand-in set they make."""
    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.setenv(nb.HOME_ENV, str(home))
    p = own.photo_settings(nb.settings(smoke=True))
    data = own.stand_in(p)
    yield home, p, data
    mp.undo()


def test_everything_goes_under_the_home(smoke):
    home, p, data = smoke
    for path in (p.suite, p.new, p.run, data):
        assert home.resolve() in path.resolve().parents
    assert data == p.suite / own.SET
    counts = AnomalyDataset(data, "train", size=32).counts()
    assert counts == {"good": own.SMOKE_COUNTS["train"]}


@pytest.mark.parametrize("smoke_mode", [True, False])
def test_the_held_out_photos_allow_the_conformal_alpha(smoke_mode, tmp_path, monkeypatch):
    """The run holds out enough good photos for the notebook's alpha: the threshold cell would
    otherwise fail (80 photos in the full suite, the smoke count otherwise)."""
    monkeypatch.setenv(nb.HOME_ENV, str(tmp_path))
    p = own.photo_settings(nb.settings(smoke=smoke_mode))
    n_train = own.SMOKE_COUNTS["train"] if smoke_mode else 80
    held_out = round(n_train * p.val_fraction)
    assert held_out >= conformal_n_needed(p.alpha)


def test_every_problem_is_caught_with_the_file_named(smoke):
    _, _, data = smoke
    found = dict(own.loader_checks(data))
    assert set(found) == set(PROBLEMS)
    assert "not caught" not in found.values()
    assert "my-photos/train/good/IMG_0042.png" in found["a file that is not an image"]
    assert "my-photos/test/dent" in found["an empty defect folder"]
    assert "999_mask.png" in found["a mask that matches no image"]
    for message in found.values():
        assert "/tmp" not in message and "anomaly-checks-" not in message  # paths shortened
    text = own.checks_text(own.loader_checks(data))
    assert text.count("error: ") == len(PROBLEMS)


def test_the_checks_leave_the_data_alone(smoke):
    _, _, data = smoke
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    own.loader_checks(data)
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before


def test_new_photos_are_one_flat_folder_of_each_kind(smoke):
    _, p, _ = smoke
    folder = own.new_photos(p)
    names = sorted(f.name for f in folder.iterdir())
    assert all(f.is_file() for f in folder.iterdir())
    kinds = [n.split("_", 1)[1].removesuffix(".png") for n in names]
    assert kinds.count("good") == 2
    assert sorted(k for k in kinds if k != "good") == sorted(KINDS)
    assert own.new_photos(p) == folder  # made once, then reused
    assert sorted(f.name for f in folder.iterdir()) == names


def test_folder_tree_counts_images_and_masks(smoke):
    _, _, data = smoke
    tree = own.folder_tree(data)
    assert f"train/good/{'':<13} {own.SMOKE_COUNTS['train']:>4} images" in tree
    assert "masks" in tree and "ground_truth/" in tree


def test_auto_limits_is_read_from_the_docstring():
    text = own.auto_limits(width=60)
    assert "synthetic" in text and "limits" in text
    assert max(len(line) for line in text.splitlines()) <= 60


def _build_script():
    spec = importlib.util.spec_from_file_location(
        "build_notebooks", ROOT / "scripts/build_notebooks.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_builder_writes_only_the_notebooks_named(tmp_path):
    build = _build_script()
    build.build(tmp_path, names=["07"])
    assert [p.name for p in tmp_path.iterdir()] == ["07_bring_your_own_photos.ipynb"]
    book = nbformat.read(tmp_path / "07_bring_your_own_photos.ipynb", 4)
    code = [c.source for c in book.cells if c.cell_type == "code"]
    assert 8 <= len(book.cells) <= 16
    assert any("NBVAL_CHECK_OUTPUT" in c for c in code)
    assert all(len(c.splitlines()) <= 6 for c in code)


def test_the_stored_notebook_matches_its_definition():
    build = _build_script()
    stored = nbformat.read(ROOT / "notebooks/07_bring_your_own_photos.ipynb", 4)
    cells = build.NOTEBOOKS["07_bring_your_own_photos"]
    assert [c.source for c in stored.cells] == cells
    assert all(c.outputs for c in stored.cells if c.cell_type == "code" and c.source != cells[1])


@pytest.mark.parametrize("smoke_mode", [True, False])
def test_the_good_photos_from_the_line_allow_the_conformal_alpha(smoke_mode, tmp_path, monkeypatch):
    """The folder the notebook sets its threshold on is large enough for its alpha."""
    monkeypatch.setenv(nb.HOME_ENV, str(tmp_path))
    p = own.photo_settings(nb.settings(smoke=smoke_mode))
    assert p.n_good >= conformal_n_needed(p.alpha)
    assert tmp_path.resolve() in p.good.resolve().parents


def test_good_photos_are_fresh_good_crops_not_the_test_photos(smoke):
    _, p, data = smoke
    folder = own.good_photos(p)
    files = sorted(folder.iterdir())
    assert [f.name for f in files] == [f"good{i:02d}.png" for i in range(1, p.n_good + 1)]
    test_good = {f.read_bytes() for f in (data / "test" / "good").iterdir()}
    train = {f.read_bytes() for f in (data / "train" / "good").iterdir()}
    checked = {f.read_bytes() for f in own.new_photos(p).iterdir()}
    assert not {f.read_bytes() for f in files} & (test_good | train | checked)
    assert AnomalyDataset(data, "test", size=32).counts()["good"] == own.SMOKE_COUNTS["good"]
    assert own.good_photos(p) == folder and sorted(folder.iterdir()) == files  # reused


def test_before_after_counts_each_threshold_on_the_labelled_photos(scored_ae_run):
    from anomaly.metrics import Threshold
    from anomaly.runs import RunDir

    pred = RunDir(scored_ae_run).predictions()
    n_good, n_bad = int((pred.labels == 0).sum()), int((pred.labels == 1).sum())
    middle = float(np.median(pred.scores))
    table = own.before_after(
        scored_ae_run,
        {"everything": Threshold(-1e9), "nothing": Threshold(1e9), "median": Threshold(middle)},
    )
    lines = table.splitlines()
    assert "good rejected" in lines[0] and "defects caught" in lines[0]
    assert lines[1].split()[-2:] == [f"{n_good}/{n_good}", f"{n_bad}/{n_bad}"]
    assert lines[2].split()[-2:] == [f"0/{n_good}", f"0/{n_bad}"]
    flagged = pred.scores >= middle
    rejected = int((flagged & (pred.labels == 0)).sum())
    assert lines[3].split()[-2] == f"{rejected}/{n_good}"


def test_train_says_when_its_threshold_rests_on_a_handful_of_photos(
    smoke, tmp_path, monkeypatch, capsys
):
    """The smoke run holds out 3 photos: the notebook says what `train` says of it (it said
    nothing; a cheap method stands in for auto)."""
    from dataclasses import replace

    from anomaly import pipeline
    from anomaly.runs import RunDir

    _, p, data = smoke
    trained = pipeline.train_run

    def cheap(config, run, **kwargs):
        return trained(config.replace(method="meandiff"), run, **kwargs)

    monkeypatch.setattr(pipeline, "train_run", cheap)
    p = replace(p, run=tmp_path / "run")
    run = own.train(p, data)
    assert run == tmp_path / data.name  # named after the data, beside p.run
    n = RunDir(run).threshold().params["n_normal"]
    err = capsys.readouterr().err
    assert n < 10 and f"the 0.99 quantile of only {n} held-out good image" in err
