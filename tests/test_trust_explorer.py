"""The explorer and the notebook figures with run folders from someone else: runs compared image
by image, a report that never writes through a link, images read only from the data folder,
maps never drawn on other images, and no rate or cost optimum made up for a missing class."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly.detectors.base import Predictions
from anomaly.explorer import ThresholdExplorer
from anomaly.runs import RunDir, RunError

KINDS = ["good", "good", "good", "crack", "crack", "mustard"]


def predictions(root: Path, kinds=KINDS, order=None, seed: int = 0, size: int = 8) -> Predictions:
    """Predictions of images root/test/<kind>/<n>.png (files not made), scored from `root`."""
    rng = np.random.default_rng(seed)
    paths = [str(root / "test" / k / f"{i:03d}.png") for i, k in enumerate(kinds)]
    labels = np.array([int(k != "good") for k in kinds])
    scores = rng.normal(labels * 2.0, 1.0)
    maps = rng.random((len(kinds), size, size), dtype=np.float32)
    pred = Predictions(paths, labels, list(kinds), scores, maps, method="ae", meta={})
    pred.meta["data"] = str(root)
    if order is not None:
        from anomaly.explorer.runs import reindexed

        pred = reindexed(pred, order)
        pred.meta["data"] = str(root)
    return pred


def image(path: Path, colour, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), colour, np.uint8)).save(path)
    return path


# --- 1. two runs are compared image by image ---------------------------------------------------


def test_runs_on_the_same_images_in_another_order_are_matched(tmp_path):
    a = predictions(tmp_path / "data-a")
    order = [5, 3, 0, 4, 2, 1]
    b = predictions(tmp_path / "copy-b", order=order, seed=1)
    ex = ThresholdExplorer({"a": a, "b": b})
    shown = ex.runs["b"].pred
    rel = [Path(p).relative_to(tmp_path / "copy-b").as_posix() for p in shown.paths]
    assert rel == [Path(p).relative_to(tmp_path / "data-a").as_posix() for p in a.paths]
    assert shown.defects == a.defects and (shown.labels == a.labels).all()
    original = predictions(tmp_path / "copy-b", seed=1)  # each score stays with its image
    assert np.allclose(shown.scores, original.scores) and np.allclose(shown.maps, original.maps)
    g = ex.gallery
    g.compare.value, g.show.value = "b", "disagree"
    tb = ex.threshold_of(ex.runs["b"])
    expected = (a.scores >= ex.threshold) != (original.scores >= tb)
    assert sorted(g.order().tolist()) == np.flatnonzero(expected).tolist()


def test_runs_on_other_images_are_refused_naming_them(tmp_path):
    a = predictions(tmp_path / "cookies")
    renamed = ["good", "good", "good", "zz_crack", "zz_crack", "aa_mustard"]
    b = predictions(tmp_path / "copy", kinds=renamed)
    with pytest.raises(ValueError, match="not scored on the same images") as err:
        ThresholdExplorer({"a": a, "b": b})
    assert "test/crack/003.png" in str(err.value) and "aa_mustard" in str(err.value)
    relabelled = predictions(tmp_path / "copy")
    relabelled.labels = relabelled.labels.copy()
    relabelled.labels[0] = 1  # the same files, but another label: not the same test
    with pytest.raises(ValueError, match="label"):
        ThresholdExplorer({"a": a, "b": relabelled})


# --- 2. the report never writes through a link -------------------------------------------------


def test_report_replaces_a_link_never_follows_it_and_keeps_a_users_file(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    predictions(tmp_path / "data").save(run / "predictions.npz")
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    (run / "report.html").symlink_to(victim)
    ex = ThresholdExplorer(run)
    path = ex.export_report()
    assert victim.read_text() == "mine"
    assert not path.is_symlink() and path.read_text().startswith("<!DOCTYPE html>")
    ex.export_report()  # its own report is replaced
    assert not list(run.glob(".*.tmp"))
    notes = tmp_path / "notes.html"
    notes.write_text("my notes")
    with pytest.raises(RunError, match="not a report the threshold explorer wrote"):
        ex.export_report(notes)
    assert notes.read_text() == "my notes"
    ex._on_report(None)
    assert "data:text/html;base64," in ex.report_link.value


# --- 3. images are read only from inside the data folder ---------------------------------------


def test_images_outside_the_data_folder_are_never_read(tmp_path, monkeypatch):
    root, blue, red = tmp_path / "data", (0, 0, 255), (255, 0, 0)
    pred = predictions(root)
    for p in pred.paths:
        image(Path(p), blue)
    secret = image(tmp_path / "private" / "secret.png", red)
    (root / "test" / "good" / "link.png").symlink_to(secret)
    monkeypatch.chdir(root / "test")
    pred.paths[0] = "../../private/secret.png"  # relative, from the working folder
    pred.paths[1] = str(secret)  # absolute
    pred.paths[2] = str(root / "test" / "good" / "link.png")  # a link inside, to outside
    pred.paths[4] = str(root / "test" / ".." / ".." / "private" / "secret.png")
    (root / "test" / "crack" / "005.txt").write_text("not an image")
    pred.paths[5] = str(root / "test" / "crack" / "005.txt")
    ex = ThresholdExplorer(pred)
    r, g = ex.run, ex.gallery
    assert [f is None for f in r.files] == [True, True, True, False, True, True]
    for i in range(len(pred)):
        picture = g.base_image(r, i)
        assert not (picture == red).all(axis=-1).any()  # the secret is never shown
    assert (g.base_image(r, 3) == blue).all(axis=-1).all()
    g.show.value = "all"
    assert "5 of 6 image paths" in g.title.value and "were not read" in g.title.value
    text = ex.report_html()
    assert "5 of 6 image paths" in text and "maps shown without them" in text


def test_a_data_folder_named_by_the_run_reads_only_test_images_of_it(tmp_path):
    """A run from someone else names its data folder too: with "/" (or a home folder) as the
    data, any image on the machine was inside it, shown and embedded in the report."""
    secret = image(tmp_path / "private" / "secret.png", (255, 0, 0))
    pred = predictions(tmp_path / "data")
    pred.paths = [str(secret)] * len(pred)
    for data in ("/", str(tmp_path), str(tmp_path / "private")):
        pred.meta["data"] = data
        ex = ThresholdExplorer(pred)
        assert all(f is None for f in ex.run.files)
        assert "not test images of the data set" in ex.report_html()
    shown = tmp_path / "set" / "test" / "crack" / "000.png"  # where `score` finds test images
    image(shown, (0, 0, 255))
    pred.paths, pred.meta["data"] = [str(shown)] * len(pred), str(tmp_path / "set")
    assert ThresholdExplorer(pred).run.files[0] == shown.resolve()


def test_images_missing_from_a_moved_data_folder_are_said_once(tmp_path):
    pred = predictions(tmp_path / "moved-away")
    ex = ThresholdExplorer(pred)
    note = f"images not found under {tmp_path / 'moved-away'}; maps shown without them"
    assert note in ex.gallery.title.value and note in ex.report_html()
    assert ex.gallery.title.value.count("Note:") == 1
    given = ThresholdExplorer(pred, images=np.zeros((len(pred), 8, 8), np.float32))
    assert "Note:" not in given.gallery.title.value  # images given: nothing is missing


def test_a_run_folder_without_a_recorded_data_folder_reads_no_image(tmp_path):
    pred = predictions(tmp_path / "data")
    for p in pred.paths:
        image(Path(p), (0, 0, 255))
    pred.meta = {}
    pred.save(tmp_path / "predictions.npz")
    ex = ThresholdExplorer(tmp_path)
    assert all(f is None for f in ex.run.files)
    assert "does not record its data folder" in ex.gallery.title.value
    (tmp_path / "config.json").write_text(json.dumps({"data": str(tmp_path / "data")}))
    assert all(f is not None for f in ThresholdExplorer(tmp_path).run.files)


# --- 4. the notebook draws each map on its own image -------------------------------------------


@pytest.fixture(scope="module")
def scored_meandiff(tiny_cookies, tmp_path_factory):
    from helpers import tiny_config

    from anomaly.pipeline import score_run, train_run

    root = tmp_path_factory.mktemp("nbdata")
    data = Path(shutil.copytree(tiny_cookies, root / "cookies"))
    run = root / "md"
    train_run(tiny_config(data, "meandiff", channels=3), run, progress=False)
    score_run(run, overlays=False)
    return run, data


def test_overlays_figure_draws_each_map_on_its_scored_image(scored_meandiff, monkeypatch):
    from anomaly import notebook as nb

    run, data = scored_meandiff
    pred = RunDir(run).predictions()
    crack = next(p for p in pred.paths if "/crack/" in p)
    first_good = data / "test" / "good" / "0000.png"  # lists before every scored good image
    shutil.copy(crack, first_good)
    read = []
    real = nb.load_image
    monkeypatch.setattr(nb, "load_image", lambda f, *a: read.append(f) or real(f, *a))
    try:
        fig = nb.overlays_figure(run)
        picks = nb._per_kind(pred.defects, 1)
        assert read == [Path(pred.paths[i]).resolve() for i in picks]
        assert first_good not in read and len(fig.axes) >= len(picks)
        os.rename(data / "test" / "good", data / "test" / "good-moved")
        with pytest.raises(RunError, match="images not found under"):
            nb.overlays_figure(run)
        with pytest.raises(RunError, match="cannot be drawn on their images"):
            nb.evidence_figure(run)
    finally:
        if (data / "test" / "good-moved").exists():
            os.rename(data / "test" / "good-moved", data / "test" / "good")
        first_good.unlink(missing_ok=True)


# --- 5. no rate or cost optimum without the images it needs ------------------------------------


def test_only_good_images_show_no_escape_rate_and_no_cost_optimum(tmp_path):
    pred = predictions(tmp_path / "data", kinds=["good"] * 5)
    ex = ThresholdExplorer(pred, run_dirs=tmp_path / "run")
    html = ex.confusion.value
    for key in ("escape_rate", "recall", "precision", "f1"):
        assert (
            f"class='{key}' style='padding:3px 8px;text-align:right;border:1px solid #ccc'>n/a"
            in html
        )
    assert "n/a" not in html.split("class='false_reject_rate'")[1].split("</td>")[0]
    assert "No defective image" in html
    assert ex.optimum_button.disabled and "no defective test image" in ex.optimum_button.tooltip
    with pytest.raises(ValueError, match="No cost optimum"):
        ex.go_to_optimum()
    ex._on_optimum(None)
    assert "No cost optimum" in ex.status.value
    assert (
        "No cost optimum" in ex.cost_label.value and "cross-validation" not in ex.cost_label.value
    )
    assert "the cost optimum" not in ex.rule.value
    ex.slider.value = float(ex.optimum[0])  # where the optimum would be: still not "cost-optimal"
    ex.save_button.click()
    saved = json.loads((tmp_path / "run" / "threshold.json").read_text())
    assert saved["rule"] == "explorer" and saved["params"]["false_reject_rate"] == 0.0
    assert not {"escape_rate", "recall", "precision", "f1"} & set(saved["params"])
    assert "escape rate is not known" in ex.status.value
    assert RunDir(tmp_path / "run").threshold().rule == "explorer"  # it reads back
    assert "No cost optimum" in ex.report_html()
    assert "escape rate       n/a" in ex.snapshot().axes[1].texts[0].get_text()


def test_only_defective_images_show_no_false_reject_rate(tmp_path):
    pred = predictions(tmp_path / "data", kinds=["crack"] * 4)
    ex = ThresholdExplorer(pred)
    assert "<td class='false_reject_rate'" in ex.confusion.value
    assert (
        ex.confusion.value.split("class='false_reject_rate'")[1].split("</td>")[0].endswith("n/a")
    )
    assert ex.optimum_button.disabled and "no good test image" in ex.optimum_button.tooltip
    assert "false-reject rate here n/a" in ex.rule.value


def test_other_datas_scores_save_their_threshold_to_the_run_and_a_refused_one_is_said(
    tiny_cookies, tmp_path
):
    import warnings

    from helpers import tiny_config

    from anomaly.pipeline import score_run, train_run

    run = tmp_path / "run"
    train_run(tiny_config(tiny_cookies, "meandiff"), run, progress=False)
    other = tmp_path / "batch7"
    shutil.copytree(tiny_cookies, other)
    score_run(run, other, overlays=False)
    scored = run / "scored" / "batch7"
    assert (scored / "predictions.npz").is_file()
    ex = ThresholdExplorer(scored)
    path = ex.save_threshold()  # predict reads RUN/threshold.json only: saved there
    assert path == run / "threshold.json" and not (scored / "threshold.json").exists()
    assert RunDir(run).threshold().value == pytest.approx(ex.threshold)

    score_run(run, overlays=False)  # the run's own scores
    raw = json.loads(path.read_text())
    path.write_text(json.dumps({**raw, "model_sha256": "0" * 64}))  # as if from another run
    with pytest.warns(UserWarning, match="threshold is not shown: .*another model"):
        ThresholdExplorer(run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ThresholdExplorer(run).run.saved is None
