"""Session 29's fixes, each with the check that failed before it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import copy_run

from anomaly import notebook_photos
from anomaly.calibration import set_threshold
from anomaly.data import make_cookies
from anomaly.runs import RunDir, RunError
from anomaly.threshold_file import MODEL_RECORD, model_sha256


def test_line_scores_outlive_a_threshold_set_by_hand(scored_ae_run, tmp_path):
    """calibration_scores.json recorded no model, so its scores were shown only while the
    threshold set on them was kept: after a manual (or the explorer's) threshold replaced it,
    notebook 07 hid the same model's scores of the good photos from the line."""
    run = copy_run(scored_ae_run, tmp_path / "run")
    make_cookies(tmp_path / "more", preset="tiny", seed=5, size=64)
    set_threshold(run, "normal-quantile", 0.9, good_images=tmp_path / "more" / "train" / "good")
    rd = RunDir(run)
    assert rd.calibration()[MODEL_RECORD] == model_sha256(rd.file(rd.MODEL))
    set_threshold(run, "manual", 1.0)
    scores, why = notebook_photos.line_scores(rd)
    assert why == "" and scores is not None and scores.size == len(rd.calibration()["paths"])
    assert "good photos from the line (" in notebook_photos.held_out_vs_new(run)


def test_line_scores_of_another_model_are_named(scored_ae_run, tmp_path):
    """Scores recorded for another model.pt are not shown, whatever threshold.json says."""
    run = copy_run(scored_ae_run, tmp_path / "run")
    make_cookies(tmp_path / "more", preset="tiny", seed=5, size=64)
    set_threshold(run, "normal-quantile", 0.9, good_images=tmp_path / "more" / "train" / "good")
    path = run / "calibration_scores.json"
    kept = json.loads(path.read_text())
    path.write_text(json.dumps({**kept, MODEL_RECORD: "0" * 64}))
    scores, why = notebook_photos.line_scores(RunDir(run))
    assert scores is None and "another model than this model.pt" in why


def test_threshold_on_a_run_without_its_model_is_refused(scored_ae_run, tmp_path):
    """`threshold --rule manual` on a run whose model.pt was gone saved a threshold recording
    no model, which the next model.pt in that folder then took as its own."""
    run = copy_run(scored_ae_run, tmp_path / "run")
    (run / "model.pt").unlink()
    before = (run / "threshold.json").read_bytes()
    for rule, value in (("manual", 1.0), ("normal-quantile", 0.9), ("f1", None)):
        with pytest.raises(RunError, match=r"has no model\.pt .*--resume"):
            set_threshold(run, rule, value)
    assert (run / "threshold.json").read_bytes() == before


def test_explorer_save_on_a_run_without_its_model_is_refused(scored_ae_run, tmp_path):
    """The explorer's Save wrote a threshold recording no model into such a run."""
    from anomaly.explorer import ThresholdExplorer

    run = copy_run(scored_ae_run, tmp_path / "run")
    ex = ThresholdExplorer([run])
    (run / "model.pt").unlink()
    before = (run / "threshold.json").read_bytes()
    with pytest.raises(RunError, match=r"has no model\.pt"):
        ex.save_threshold()
    ex._on_save(None)
    assert "Not saved" in ex.status.value and "model.pt" in ex.status.value
    assert (run / "threshold.json").read_bytes() == before


def test_a_rerun_from_config_json_gives_the_same_model_pt(tiny_cookies, tmp_path):
    """The defaults share one "auto" string among three fields, a config read from config.json
    has three: pickle wrote them apart, so the rerun's model.pt had other bytes (the same
    model) and the first run's threshold.json was refused as another model's."""
    from anomaly.config import Config
    from anomaly.pipeline import train_run

    config = Config.for_method("patchknn", data=str(tiny_cookies), size=64)
    assert config.device is config.runtime  # one object, as the defaults give
    train_run(config, tmp_path / "a", progress=False)
    again = Config.load(tmp_path / "a" / "config.json")
    assert again.device == again.runtime and again.device is not again.runtime
    train_run(again, tmp_path / "b", progress=False)
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()


def _cli(capsys, *argv) -> tuple[int, str]:
    from anomaly.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse's refusals
        code = stop.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, err


def test_an_empty_path_is_refused_not_read_as_the_working_folder(
    tiny_cookies, tmp_path, capsys, monkeypatch
):
    """make-cookies "" wrote into the working folder, train --out "" trained into it, score
    --data "" and benchmark --out "" took their defaults."""
    monkeypatch.chdir(tmp_path)
    for argv in (
        ["make-cookies", ""],
        ["train", "--data", tiny_cookies, "--out", ""],
        ["score", "--run", "x", "--data", " "],
        ["train", "--method", "kmeans", "--from", "", "--out", "km"],
        ["explore", "--run", "a", "--run", ""],
    ):
        code, err = _cli(capsys, *argv)
        assert code == 2 and "an empty path" in err, argv
    assert list(tmp_path.iterdir()) == []


def test_a_file_where_a_folder_of_out_goes_is_named_before_any_work(
    scored_ae_run, tiny_cookies, tmp_path, capsys
):
    """[Errno 20] Not a directory (after scoring every image), or [Errno 17] File exists."""
    from helpers import copy_run

    run = copy_run(scored_ae_run, tmp_path / "run")
    (tmp_path / "notes.txt").write_text("mine")
    under = tmp_path / "notes.txt" / "x"
    for argv in (
        ["train", "--data", tiny_cookies, "--method", "meandiff", "--out", under],
        ["score", "--run", run, "--data", tiny_cookies, "--out", under],
    ):
        code, err = _cli(capsys, *argv)
        assert code == 2 and f"{tmp_path / 'notes.txt'} is a file" in err, (argv, err)
        assert "Errno" not in err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_sizes_of_networks_have_an_upper_bound_and_layers_no_empty_stage():
    """--width 100000 asked torch for 360 GB (its traceback); --flow-steps 1e8 hung; --draem-
    depth 50 was blamed on --size; --layers ',,,' was kept as given and read as empty."""
    from anomaly.config import Config

    for field, value, said in (
        ("width", 100000, "--width 100000: must be at most 1024"),
        ("latent", 10**7, "--latent 10000000: must be at most"),
        ("flow_steps", 10**8, "--flow-steps 100000000: must be at most"),
        ("flow_hidden_ratio", 1e5, "--flow-hidden-ratio 100000.0: must be at most"),
        ("draem_disc_width", 10**6, "--draem-disc-width 1000000: must be at most"),
        ("draem_depth", 50, "--draem-depth 50: must be at most"),
        ("layers", ",,,", "an empty stage name"),
    ):
        with pytest.raises(ValueError, match=said):
            Config.for_method("ae").replace(**{field: value}).validate()


def test_resume_takes_another_workers(tiny_cookies, tmp_path, capsys):
    """--workers (how score and predict decode) was refused as changing what it learns."""
    from helpers import tiny_flags

    out = tmp_path / "run"
    assert _cli(capsys, "train", *tiny_flags(tiny_cookies, **{"--epochs": 1}), "--out", out)[0] == 0
    code, err = _cli(capsys, "train", "--resume", "--out", out, "--epochs", "2", "--workers", "1")
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["workers"] == 1


def test_kmeans_says_why_it_held_out_nothing(tiny_cookies, tmp_path):
    """With its --from run's held-out images gone it said "val_fraction=0 or one image"."""
    import shutil

    from helpers import tiny_config

    from anomaly.config import Config
    from anomaly.pipeline import train_run

    data = tmp_path / "data"
    shutil.copytree(tiny_cookies, data)
    train_run(tiny_config(data), tmp_path / "ae", progress=False)
    for path in json.loads((tmp_path / "ae" / "split.json").read_text())["val"]:
        Path(path).unlink()
    config = Config.for_method(
        "kmeans", data=str(data), source_run=str(tmp_path / "ae"), size=64, channels=1
    )
    with pytest.warns(UserWarning, match="none of its --from run's held-out images is in the"):
        train_run(config, tmp_path / "km", progress=False)


def test_benchmark_data_that_is_a_file_is_called_a_file(tmp_path):
    from anomaly.benchmark_checks import BenchmarkError, discover_sets

    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(BenchmarkError, match="a file, not a data set's folder"):
        discover_sets(tmp_path / "manifest.json")


def test_versions_say_the_code_the_cpu_features_and_how_the_data_was_made(tiny_cookies, tmp_path):
    """versions.json said anomaly 0.1.0 for every commit, "AMD EPYC" for CPUs with and without
    VNNI (which picks the 8-bit search), and cookie_generator 1.0 for any data set."""
    import re

    from anomaly.run_versions import versions

    record = versions(tiny_cookies)
    assert "cookie_generator" not in record
    assert record["data_manifest"]["preset"] == "tiny" and record["data_manifest"]["seed"] == 0
    features = record["cpu_features"]
    assert features is None or set(features) <= {
        "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"
    }  # fmt: skip
    code = record["code"]
    assert code is None or re.fullmatch(r"[0-9a-f]{40}(\+changes)?", code)
    (tmp_path / "good").mkdir()
    assert versions(tmp_path)["data_manifest"] is None


def test_one_nan_pixel_is_not_called_zero_percent(tmp_path):
    """A TIFF with 1 NaN of 65,536 pixels was refused for "0.0% of its pixels are NaN"."""
    import numpy as np
    from PIL import Image

    from anomaly.data import DataError
    from anomaly.data.folder import load_image

    a = np.full((256, 256), 0.5, np.float32)
    a[3, 4] = np.nan
    Image.fromarray(a).save(tmp_path / "one.tif")
    with pytest.raises(DataError, match="one.tif: 1 of its 65536 pixel values are NaN"):
        load_image(tmp_path / "one.tif", size=64, channels=1)


def test_make_photos_counts_have_an_upper_bound(tmp_path):
    """--good 100000000 was taken: 33,000 files in two minutes, and on."""
    from anomaly.data.photos import make_photos

    with pytest.raises(ValueError, match="good must be .* at most 5000; got 100000000"):
        make_photos(tmp_path / "p", good=10**8)
    assert not (tmp_path / "p").exists()


def test_a_typed_path_with_control_characters_is_echoed_escaped(tmp_path, capsys):
    """`score --run` echoed the path raw: "\\x1b[2K\\r" erased the error line on a terminal."""
    code, err = _cli(capsys, "score", "--run", tmp_path / "run\x1b[2K\rall good")
    assert code == 2 and "\x1b" not in err and "\\x1b[2K\\rall good" in err


def test_a_histogram_of_scores_spanning_decades_is_drawn_on_a_log_axis():
    """Notebook 04's k-means scores ran 0-700: every good score and the threshold fell in one
    bin of a linear axis."""
    import matplotlib

    matplotlib.use("agg")
    import numpy as np

    from anomaly.viz import plot_score_histogram

    good, bad = np.linspace(10, 15, 50), np.geomspace(12, 700, 40)
    labels = np.r_[np.zeros(50), np.ones(40)]
    ax = plot_score_histogram(np.r_[good, bad], labels, 17.25).axes[0]
    assert ax.get_xscale() == "log" and "log scale" in ax.get_xlabel()
    ax = plot_score_histogram(np.r_[good, good + 3], np.r_[np.zeros(50), np.ones(50)], 14.0).axes[0]
    assert ax.get_xscale() == "linear"


def test_a_threshold_set_on_good_photos_sets_where_the_overlays_turn_red(scored_ae_run, tmp_path):
    """Notebook 07: verdicts came from a threshold set on good photos from the line, while the
    overlays' red started where the held-out training photos' maps ended (biased low: PASS
    parts painted red). The folder's maps now set the pixel threshold too."""
    from anomaly.overlays import run_scale

    run = copy_run(scored_ae_run, tmp_path / "run")
    before = run_scale(run).pixel_threshold
    make_cookies(tmp_path / "more", preset="tiny", seed=5, size=64)
    t = set_threshold(run, "normal-quantile", 0.9, good_images=tmp_path / "more" / "train" / "good")
    pixel = t.params["pixel_threshold"]
    assert pixel != before and run_scale(run).pixel_threshold == pixel
    assert "pixel_threshold" not in RunDir(run).calibration()  # the threshold holds it
    t = set_threshold(run, "normal-quantile", 0.9)  # the held-out images again: their scale
    assert "pixel_threshold" not in t.params and run_scale(run).pixel_threshold == before


def test_a_loss_falling_tenfold_is_drawn_on_a_log_axis():
    """Notebook 02's UNet loss fell early and sat flat on a linear axis after epoch 3."""
    import matplotlib

    matplotlib.use("agg")
    from anomaly.viz import plot_history

    rows = [
        {"epoch": i, "train_loss": 1.0 / (1 + 5 * i), "val_loss": 1.2 / (1 + 5 * i)}
        for i in range(10)
    ]
    ax = plot_history(rows).axes[0]
    assert ax.get_yscale() == "log" and "log scale" in ax.get_ylabel()
    flat = [{"epoch": i, "train_loss": 1.0 - 0.01 * i} for i in range(10)]
    assert plot_history(flat).axes[0].get_yscale() == "linear"


def test_notebook_01s_views_take_a_folder_as_counts_table_does(tiny_cookies):
    """kinds_figure, normals_figure and intensity_* failed on a folder path ('str' object has
    no attribute 'defects') where counts_table and defect_area_figure take one."""
    import matplotlib

    matplotlib.use("agg")
    from anomaly import notebook as nb

    for view in (nb.kinds_figure, nb.normals_figure, nb.intensity_figure):
        assert view(str(tiny_cookies)).axes
    assert "good" in nb.intensity_table(tiny_cookies)


def test_threshold_says_what_it_does_on_the_scored_test_images(scored_ae_run, tmp_path, capsys):
    """It printed the held-out count only; the good rejected and defects caught on the test set
    were left to a notebook helper (README quotes them for notebook 07)."""
    import numpy as np

    from anomaly.cli import main

    run = copy_run(scored_ae_run, tmp_path / "run")
    pred = RunDir(run).predictions()
    good, bad = pred.scores[pred.labels == 0], pred.scores[pred.labels > 0]
    value = float(np.median(pred.scores))
    assert main(["threshold", "--run", str(run), "--rule", "manual", "--value", str(value)]) == 0
    out = capsys.readouterr().out
    assert f"rejects {int(np.sum(good >= value))} of {good.size} good (95 % interval" in out
    assert f"catches {int(np.sum(bad >= value))} of {bad.size} defective (95 % interval" in out
