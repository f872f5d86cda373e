"""Session 20's fixes, each with the check that failed before it."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from anomaly import notebook_benchmark
from anomaly.notebook_setup import Settings


def _fake_benchmark(data, methods, out, seed, smoke):
    Path(out).mkdir(parents=True)
    (Path(out) / "benchmark.json").write_text(json.dumps({"rows": [], "table": ""}))


def test_smoke_benchmarks_stay_beside_the_smoke_runs(tmp_path, monkeypatch):
    """Notebook 06's smoke benchmarks were written to fresh folders in the system's temporary
    folder, which nothing cleared: every `make test` left two there. They go under the smoke
    runs' folder now (inside ANOMALY_HOME, which `make test` removes)."""
    import anomaly.benchmark
    import anomaly.data.photos

    monkeypatch.setattr(anomaly.benchmark, "run_benchmark", _fake_benchmark)
    monkeypatch.setattr(anomaly.data.photos, "make_photos", lambda *a, **k: None)
    monkeypatch.setattr(notebook_benchmark, "ensure_cookies", lambda s: tmp_path / "cookies")
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    s = Settings(True, "tiny", 64, 1, tmp_path / "data", tmp_path / "home" / "runs" / "smoke")
    notebook_benchmark.benchmark_result(s)
    notebook_benchmark.photos_result(s)
    assert list(system_tmp.iterdir()) == []
    made = sorted(p.name.split("-")[1] for p in s.runs_dir.iterdir())
    assert made == ["bench", "photos"]


def test_predict_onnx_draws_the_overlay_predict_run_draws(tiny_cookies, tmp_path):
    """`predict --onnx` drew a bare heat map at the model's size (48 px here), without the
    verdict, score, name or colour bar of `predict --run`'s overlay at the image's own size;
    its module said they were the same overlays. A pixel threshold the run saved (the
    explorer's) colours both alike: the export carries it in map_range."""
    import numpy as np
    from PIL import Image

    from anomaly.cli import main
    from anomaly.config import Config
    from anomaly.metrics import Threshold
    from anomaly.pipeline import train_run
    from anomaly.runs import RunDir

    run = tmp_path / "run"
    config = Config.for_method("patchknn", data=str(tiny_cookies), size=48, device="cpu")
    train_run(config, run, progress=False)
    rd = RunDir(run)
    low, high = rd.map_range()
    saved = rd.threshold()
    params = {**saved.params, "pixel_threshold": low + 0.5 * (high - low)}
    rd.save_threshold(Threshold(saved.value, saved.rule, params))
    wide = tmp_path / "wide.png"  # another size and aspect than the model's 48 x 48
    first = min((tiny_cookies / "test" / "crack").glob("*.png"))
    Image.open(first).convert("RGB").resize((90, 60)).save(wide)
    assert main(["export", "--run", str(run)]) == 0
    assert main(["predict", "--run", str(run), "--out", str(tmp_path / "r"), str(wide)]) == 0
    onnx = ["predict", "--onnx", str(run / "model.onnx"), "--out", str(tmp_path / "o")]
    assert main([*onnx, str(wide)]) == 0
    by_run = np.asarray(Image.open(tmp_path / "r" / "wide_overlay.png"), np.int16)
    by_onnx = np.asarray(Image.open(tmp_path / "o" / "wide_overlay.png"), np.int16)
    assert by_onnx.shape == by_run.shape  # own size, enlarged alike, with head and colour bar
    assert np.mean(np.abs(by_onnx - by_run) > 8) < 0.002


def test_notebook_04s_threshold_leaves_the_benchmarks_run_as_it_was(tmp_path, capsys):
    """Notebook 04 saved an F1 threshold into the run `make benchmark` wrote (it shows the
    benchmark's runs): the benchmark's unet+kmeans then predicted at a threshold chosen on its
    test labels, and the notebook's own histogram drew it the next time. `own_copy` gives the
    cell a copy in the notebooks' own folder; the notebooks' own runs are used as they are."""
    import anomaly.notebook as nb

    runs = tmp_path / "runs" / "benchmark"
    s = Settings(False, "benchmark", None, None, tmp_path / "data", runs)
    bench = runs / "kmeans"
    bench.mkdir(parents=True)
    (bench / "model.pt").write_bytes(b"weights")
    (bench / "threshold.json").write_text('{"set by": "the benchmark"}')
    copy = nb.own_copy(s, bench)
    assert copy == tmp_path / "runs" / "notebooks" / "kmeans"
    assert "the benchmark's run stays as it was" in capsys.readouterr().out
    assert nb.own_copy(s, bench) == copy  # the same model: the copy made before
    (copy / "model.pt").write_bytes(b"retrained")  # another model there: a second copy
    assert nb.own_copy(s, bench) == copy.with_name("kmeans-2")
    assert nb.own_copy(s, copy) == copy  # the notebooks' own run: itself
    smoke = Settings(True, "tiny", 64, 1, tmp_path / "data", runs)
    assert nb.own_copy(smoke, bench) == bench  # smoke runs are the notebooks' own
    assert (bench / "threshold.json").read_text() == '{"set by": "the benchmark"}'


def test_notebooks_show_paths_from_their_home(tmp_path, monkeypatch):
    """Committed notebooks showed /work/main/... (the folder they ran in): paths were made
    relative to the working folder, notebooks/, so anything at the top stayed absolute."""
    import anomaly.notebook as nb
    from anomaly.data import AnomalyDataset

    monkeypatch.setenv("ANOMALY_HOME", str(tmp_path))
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    run = tmp_path / "runs" / "benchmark" / "ae"
    assert nb.shown(run) == "runs/benchmark/ae"
    assert nb.shown(Path("/elsewhere/x")) == "/elsewhere/x"
    assert (
        nb.shown(f"a warning about {run}/model.pt") == "a warning about runs/benchmark/ae/model.pt"
    )
    from anomaly.data import make_cookies

    make_cookies(tmp_path / "data" / "c", preset="tiny", seed=0, size=32)
    shown = nb.shown(AnomalyDataset(tmp_path / "data" / "c", "train", size=32))
    assert "AnomalyDataset('data/c'" in shown and str(tmp_path) not in shown


def test_held_out_scores_and_predictions_of_another_model_are_refused(tiny_cookies, tmp_path):
    """A model.pt (and config.json) copied in from another run: predict refused the old
    threshold.json and said to set one, but `threshold` then read val_scores.json and
    predictions.npz, the old model's scores, and saved a threshold (with a guarantee) on which
    every defect passed. Both record the model that made them now, and are refused for another."""
    import shutil

    import pytest
    from helpers import tiny_config

    from anomaly.calibration import set_threshold
    from anomaly.pipeline import score_run, train_run
    from anomaly.runs import RunError

    a, b = tmp_path / "a", tmp_path / "b"
    train_run(tiny_config(tiny_cookies, method="meandiff"), a, progress=False)
    train_run(tiny_config(tiny_cookies, method="meandiff", seed=1, size=32), b, progress=False)
    score_run(a, overlays=False)
    set_threshold(a, "conformal", 0.5)  # its own scores: fine
    for name in ("model.pt", "config.json"):
        shutil.copy(b / name, a / name)
    with pytest.raises(RunError, match=r"val_scores.json were scored by another model"):
        set_threshold(a, "conformal", 0.5)
    with pytest.raises(RunError, match=r"predictions.npz were made by another model"):
        set_threshold(a, "f1")
    set_threshold(a, "manual", 1.0)  # no scores read: still possible


def test_training_again_where_model_pt_was_deleted_says_what_it_removed(
    tiny_cookies, tmp_path, capsys
):
    """`train` into a run folder whose model.pt had been deleted removed the earlier model's
    scores.csv, metrics.json, predictions.npz and overlays without a word (README: "removed,
    and it says so")."""
    from helpers import tiny_config

    from anomaly.pipeline import score_run, train_run

    run = tmp_path / "run"
    train_run(tiny_config(tiny_cookies, method="meandiff"), run, progress=False)
    score_run(run, overlays=False)
    (run / "model.pt").unlink()
    capsys.readouterr()
    train_run(tiny_config(tiny_cookies, method="meandiff"), run, progress=False)
    out = capsys.readouterr().out
    assert "removed the outputs of the earlier model (" in out and "scores.csv" in out
    assert not (run / "scores.csv").exists()


def test_a_plain_layout_run_without_split_json_is_not_scored(tiny_cookies, tmp_path):
    """In the plain layout (good/ and defect folders) split.json is the record of which good
    images trained: deleted, `score` split good/ anew by position, scored held-out and trained
    images as test images, dropped real ones, and wrote the metrics without a word."""
    import shutil

    import pytest
    from helpers import tiny_config

    from anomaly.pipeline import score_run, train_run
    from anomaly.runs import RunError

    plain = tmp_path / "plain"
    shutil.copytree(tiny_cookies / "train" / "good", plain / "good")
    shutil.copytree(tiny_cookies / "test" / "crack", plain / "crack")
    run = tmp_path / "run"
    train_run(tiny_config(plain, method="meandiff"), run, progress=False)
    score_run(run, overlays=False)  # with its split.json: fine
    (run / "split.json").unlink()
    with pytest.raises(RunError, match="split.json is missing: in the plain layout"):
        score_run(run, overlays=False)


def test_predict_without_overlays_needs_no_overlay_scale(tiny_cookies, tmp_path):
    """`predict --no-overlays` failed on a run without val_scores.json ("retrain the run, or
    pass its maps to set the overlay scale"): the scale is for overlays it was told not to draw."""
    from helpers import tiny_config

    from anomaly.cli import main
    from anomaly.pipeline import train_run

    run = tmp_path / "run"
    train_run(tiny_config(tiny_cookies, method="meandiff"), run, progress=False)
    (run / "val_scores.json").unlink()
    image = str(min((tiny_cookies / "test" / "good").glob("*.png")))
    assert main(["predict", "--run", str(run), "--no-overlays", image]) == 0


def test_exporting_a_run_without_a_threshold_says_what_the_file_lacks(tiny_cookies, tmp_path):
    """`export` of a run without threshold.json printed "wrote model.onnx", and `predict --onnx`
    then refused that file ("holds no threshold"); export says so when it writes it."""
    import pytest

    from anomaly.config import Config
    from anomaly.export import export_onnx
    from anomaly.pipeline import train_run

    run = tmp_path / "run"
    config = Config.for_method("patchknn", data=str(tiny_cookies), size=48, device="cpu")
    train_run(config, run, progress=False)
    (run / "threshold.json").unlink()
    with pytest.warns(UserWarning, match="has no threshold.json, so .* holds no threshold"):
        export_onnx(run)


def test_held_out_copies_name_the_folder_the_good_images_are_in(tiny_cookies, tmp_path):
    """In the plain layout the held-out copies' warning said "Remove the copies from
    train/good", a folder that layout has not."""
    import shutil

    import pytest
    from helpers import tiny_config

    from anomaly.pipeline import train_run

    plain = tmp_path / "plain"
    shutil.copytree(tiny_cookies / "train" / "good", plain / "good")
    for f in sorted((plain / "good").glob("*.png"))[1:]:
        shutil.copy(plain / "good" / "000.png", f)  # every image the same: held-out copies
    with pytest.warns(UserWarning, match=r"Remove the copies from good/, or"):
        train_run(tiny_config(plain, method="meandiff"), tmp_path / "run", progress=False)


def test_a_mask_folder_that_is_not_read_is_named(tiny_cookies, tmp_path):
    """Masks in masks/ of an MVTec AD layout (which reads ground_truth/), or in masks/ beside
    a ground_truth/ of the plain layout, were ignored without a word (score only noted that
    the predictions had no masks)."""
    import shutil

    import pytest

    from anomaly.data import AnomalyDataset

    mvtec = tmp_path / "mvtec"
    shutil.copytree(tiny_cookies, mvtec)
    (mvtec / "ground_truth").rename(mvtec / "masks")
    with pytest.warns(UserWarning, match=r"masks/ is not read: masks are read from .*ground_truth"):
        AnomalyDataset(mvtec, "test", size=32)
    plain = tmp_path / "plain"
    shutil.copytree(tiny_cookies / "train" / "good", plain / "good")
    shutil.copytree(tiny_cookies / "test" / "crack", plain / "crack")
    shutil.copytree(tiny_cookies / "ground_truth" / "crack", plain / "masks" / "crack")
    (plain / "ground_truth" / "crack").mkdir(parents=True)
    first = min((plain / "masks" / "crack").iterdir())
    first.rename(plain / "ground_truth" / "crack" / first.name)  # one read, the others not
    with pytest.warns(UserWarning, match=r"masks/ is not read"):
        AnomalyDataset(plain, "test", size=32)


def test_a_setting_deleted_from_config_json_is_named_as_missing(tiny_cookies, tmp_path):
    """A field deleted from config.json reads as its default, and the refusal said
    "config.json has 128": a value the file does not hold."""
    import pytest
    from helpers import tiny_config

    from anomaly.build import load_run
    from anomaly.pipeline import train_run
    from anomaly.runs import RunError

    run = tmp_path / "run"
    train_run(tiny_config(tiny_cookies, method="meandiff", size=32), run, progress=False)
    config = json.loads((run / "config.json").read_text())
    del config["size"]
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunError, match=r"size: config.json has no size \(so the default \d+\)"):
        load_run(run)


def test_an_empty_training_image_is_named_as_empty(tiny_cookies, tmp_path):
    """`train` said "not a readable image (cannot identify image file ...)" of a 0-byte file,
    where `predict` says it is empty."""
    import shutil

    import pytest
    from helpers import tiny_config

    from anomaly.data import DataError
    from anomaly.pipeline import train_run

    data = tmp_path / "data"
    shutil.copytree(tiny_cookies, data)
    (data / "train" / "good" / "zz_empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"zz_empty.png is empty \(0 bytes\)"):
        train_run(tiny_config(data, method="meandiff"), tmp_path / "run", progress=False)


def test_score_says_when_good_test_images_break_the_conformal_guarantee():
    """A conformal threshold set on held-out images unlike the test set's good ones (near-copies
    of training images) rejected 21 of 25 good coins (notebook 07) under a printed
    5 % guarantee, and `score` said nothing. The beta-binomial test of the guarantee's
    assumption warns then, and at most about `level` of the time when it holds."""
    import numpy as np

    from anomaly.decision import guarantee_broken, score_summary
    from anomaly.metrics import threshold_conformal, threshold_manual

    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(25), np.ones(10)]
    t = threshold_conformal(rng.normal(size=20), 0.05)
    shifted = np.r_[rng.normal(size=25) + 2.5, np.full(10, 9.0)]
    summary = score_summary(labels, shifted, {}, t)
    assert "good test images are rejected, far more than the guarantee's 5 %" in summary
    assert "--good-images" in summary
    assert guarantee_broken(labels, shifted, threshold_manual(float(t))) is None  # no guarantee
    alarms = 0
    for _ in range(1000):  # exchangeable: the guarantee holds, so warnings are rare
        held, good = rng.normal(size=20), rng.normal(size=25)
        scores = np.r_[good, np.full(10, 9.0)]
        alarms += guarantee_broken(labels, scores, threshold_conformal(held, 0.05)) is not None
    assert alarms <= 20  # level 0.01: about 10 expected at most


def test_threshold_command_warns_when_the_scored_test_set_breaks_its_guarantee(
    tiny_cookies, tmp_path, capsys
):
    """`threshold --rule conformal` on a run whose scored good test images score far above its
    held-out ones says so at once, as `score` will."""
    from helpers import tiny_config

    from anomaly.cli import main
    from anomaly.pipeline import score_run, train_run
    from anomaly.runs import RunDir

    run = tmp_path / "run"
    train_run(tiny_config(tiny_cookies, method="meandiff"), run, progress=False)
    score_run(run, overlays=False)
    rd = RunDir(run)
    record = json.loads(rd.file(rd.VAL_SCORES).read_text())
    n = 40  # as if 40 good images had been held out, all scoring far below the test set's
    record.update(paths=record["paths"][:1] * n, scores=[-1e6 - i for i in range(n)])
    rd.file(rd.VAL_SCORES).write_text(json.dumps(record))
    assert main(["threshold", "--run", str(run), "--rule", "conformal", "--value", "0.05"]) == 0
    assert "good test images are rejected, far more than the guarantee's" in capsys.readouterr().out


def test_a_conformal_guarantee_its_scores_do_not_give_is_not_claimed(tiny_cookies, tmp_path):
    """A threshold.json edited to claim a conformal guarantee on n = 5000 images (alpha 0.001),
    in a run whose held-out scores are a handful, was printed by predict as "false-reject
    rate <= 0.1%"; its value, n and rank must now be what its alpha gives on the recorded
    scores, else no guarantee is claimed. One set by `threshold` keeps its guarantee."""
    from helpers import tiny_config

    from anomaly.calibration import set_threshold
    from anomaly.pipeline import train_run
    from anomaly.runs import RunDir
    from anomaly.threshold_text import threshold_words

    run = tmp_path / "run"
    train_run(tiny_config(tiny_cookies, method="meandiff", val_fraction=0.5), run, progress=False)
    rd = RunDir(run)
    n = len(rd.val_scores()["scores"])
    set_threshold(run, "conformal", 1 / (n + 1))
    assert "guarantee: false-reject rate" in threshold_words(rd.threshold())
    record = json.loads(rd.file(rd.THRESHOLD).read_text())
    record["params"].update(alpha=0.001, n=5000, rank=4996)
    record["params"].pop("guarantee")
    rd.file(rd.THRESHOLD).write_text(json.dumps(record))
    words = threshold_words(rd.threshold())
    assert "not what its alpha gives on the scores it was set on" in words
    assert "no guarantee is claimed" in words and "0.1%" not in words
