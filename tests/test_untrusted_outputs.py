"""What a command writes, and the decisions it makes, when its inputs are wrong or hostile: files
of the user's never overwritten, run folders from someone else never written through, broken
thresholds and scores never passing a part, a diverged training never saved as trained."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from helpers import tiny_config

from anomaly.calibration import set_threshold
from anomaly.cli import main
from anomaly.overlays import PASS, REJECT, verdict
from anomaly.pipeline import score_run, train_run
from anomaly.predict import predict_images
from anomaly.runs import RunDir, RunError
from anomaly.train import Diverged


@pytest.fixture(scope="module")
def meandiff_run(tiny_cookies, tmp_path_factory):
    run = tmp_path_factory.mktemp("untrusted") / "md"
    train_run(tiny_config(tiny_cookies, "meandiff"), run, progress=False)
    return run


def _copy(run, tmp_path):
    return shutil.copytree(run, tmp_path / "run")


def _image(tiny_cookies):
    return min((tiny_cookies / "test" / "good").glob("*.png"))


def _replace_model(run, payload):
    """Write model.pt as a broken model would be, and keep the run's threshold and held-out
    scores for it (they record the model that made them, and would be refused before the model
    is scored)."""
    torch.save(payload, run / "model.pt")
    for name in ("threshold.json", "val_scores.json"):
        record = json.loads((run / name).read_text())
        record.pop("model_sha256")
        (run / name).write_text(json.dumps(record))


def test_train_refuses_a_folder_of_the_users(tiny_cookies, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("my notes")  # a name the run would use
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(RunError, match="not a run's .config.json, notes.txt."):
        train_run(tiny_config(tiny_cookies, "meandiff"), mine, progress=False)
    assert sorted(p.name for p in mine.iterdir()) == ["config.json", "notes.txt"]
    assert (mine / "config.json").read_text() == "my notes"
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder is fine
    train_run(tiny_config(tiny_cookies, "meandiff"), empty, progress=False)
    assert RunDir(empty).has_model()


def test_a_nan_or_infinite_threshold_is_refused(meandiff_run, tiny_cookies, tmp_path, capsys):
    run = _copy(meandiff_run, tmp_path)
    path = run / "threshold.json"
    for value in ("NaN", "Infinity", "-Infinity"):
        path.write_text(
            json.dumps({"value": 1.0, "rule": "manual", "params": {}}).replace("1.0", value)
        )
        with pytest.raises(RunError, match="not a finite number"):
            RunDir(run).threshold()
        assert main(["predict", "--run", str(run), str(_image(tiny_cookies))]) == 2
        assert "threshold.json does not hold a threshold" in capsys.readouterr().err
    path.write_text(json.dumps({"value": 1.0, "rule": "manual", "params": "x"}))
    with pytest.raises(RunError, match="params are not an object"):
        RunDir(run).threshold()


def test_a_score_that_is_not_a_number_is_rejected(meandiff_run, tiny_cookies, tmp_path, capsys):
    assert verdict(float("nan"), 1.0) == REJECT and verdict(0.5, float("nan")) == REJECT
    assert verdict(0.5, 1.0) == PASS and verdict(1.0, 1.0) == REJECT
    run = _copy(meandiff_run, tmp_path)
    state = torch.load(run / "model.pt", weights_only=True)
    broken = {
        k: torch.full_like(v, math.nan) if torch.is_tensor(v) and v.is_floating_point() else v
        for k, v in state["state"].items()
    }
    _replace_model(run, {**state, "state": broken})
    assert main(["predict", "--run", str(run), str(_image(tiny_cookies))]) == 2
    out = capsys.readouterr()
    assert out.out.split("\t")[1:] == ["nan", "REJECT\n"] or "\tnan\tREJECT" in out.out
    assert "scored NaN or infinite" in out.err and "train the run again" in out.err


def test_predict_never_writes_through_a_link_in_the_run(meandiff_run, tiny_cookies, tmp_path):
    run = _copy(meandiff_run, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = outside / "notes.txt"
    precious.write_text("precious")
    image = _image(tiny_cookies)
    (run / "predict").mkdir()
    name = f"{image.stem}_overlay.png"
    (run / "predict" / name).symlink_to(precious)  # a file link: replaced, not followed
    (results, _) = predict_images(run, [image])
    assert precious.read_text() == "precious" and (run / "predict" / name).is_symlink()
    assert Path(results[0]["overlay"]).parent == run / "predict"
    assert not Path(results[0]["overlay"]).is_symlink()
    shutil.rmtree(run / "predict")
    (run / "predict").symlink_to(outside, target_is_directory=True)  # a folder link: refused
    with pytest.raises(RunError, match="is a symbolic link"):
        predict_images(run, [image])
    (run / "overlays").symlink_to(outside, target_is_directory=True)
    with pytest.raises(RunError, match="is a symbolic link"):
        score_run(run)
    assert sorted(p.name for p in outside.iterdir()) == ["notes.txt"]


def test_conformal_refuses_a_run_that_held_out_nothing(tiny_cookies, tmp_path):
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="no validation split"):
        train_run(tiny_config(tiny_cookies, "meandiff", val_fraction=0.0), run, progress=False)
    for rule, value in (("conformal", 0.2), ("normal-quantile", 0.99)):
        with pytest.raises(RunError, match="held out no good images .*--good-images FOLDER"):
            set_threshold(run, rule, value)
    assert set_threshold(run, "manual", 3.0).value == 3.0  # a rule that needs no scores still works


def test_a_diverged_training_stops_and_says_what_to_change(tiny_cookies, tmp_path, capsys):
    config = tiny_config(tiny_cookies, "ae", lr=1e9, epochs=3)
    with pytest.raises(Diverged, match=r"loss became (nan|inf) in epoch \d.*lower --lr .*1e\+09"):
        train_run(config, tmp_path / "run", progress=False)
    assert not RunDir(tmp_path / "run").has_threshold()  # nothing decides with it


def test_export_overwrites_only_its_own_files(tiny_cookies, tmp_path, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from anomaly.config import Config
    from anomaly.export import ExportError, export_onnx

    run = tmp_path / "pk"
    config = Config.for_method("patchknn", data=str(tiny_cookies), size=48, device="cpu")
    train_run(config, run, progress=False)
    notes = tmp_path / "notes.txt"
    notes.write_text("precious")
    with pytest.raises(ExportError, match="notes.txt exists and is not a detector exported"):
        export_onnx(run, notes)
    assert notes.read_text() == "precious"
    path = export_onnx(run)
    assert export_onnx(run) == path  # its own earlier export is replaced
    image = str(_image(tiny_cookies))
    assert main(["predict", "--onnx", str(path), image]) == 0
    out = capsys.readouterr()
    assert "(normal_quantile)" in out.err and "warning" not in out.err
    set_threshold(run, "manual", 123.0)  # the run's threshold moves on; the file keeps its own
    assert main(["predict", "--onnx", str(path), image]) == 0
    err = capsys.readouterr().err
    assert "now says 123" in err and f"python -m anomaly export --run {run}" in err


def test_predict_keeps_every_earlier_overlay(meandiff_run, tiny_cookies, tmp_path, capsys):
    run = _copy(meandiff_run, tmp_path)
    day1, day2 = tmp_path / "day1", tmp_path / "day2"
    for day, kind in ((day1, "good"), (day2, "crack")):
        day.mkdir()
        shutil.copy(min((tiny_cookies / "test" / kind).glob("*.png")), day / "part.png")
    first = predict_images(run, [day1 / "part.png"])[0][0]["overlay"]
    before = Path(first).read_bytes()
    assert main(["predict", "--run", str(run), str(day2 / "part.png")]) == 0
    line = capsys.readouterr().out.splitlines()[0].split("\t")
    second = line[3]
    assert line[0] == str(day2 / "part.png") and second != first  # the CLI names its overlay
    assert Path(first).read_bytes() == before and Path(second).is_file()


def test_damaged_run_files_are_named_with_the_fix(meandiff_run, tiny_cookies, tmp_path, capsys):
    run = _copy(meandiff_run, tmp_path)
    scores = json.loads((run / "val_scores.json").read_text())
    (run / "val_scores.json").write_text(json.dumps({**scores, "map_range": [5]}))
    with pytest.raises(RunError, match="val_scores.json: its map_range is not two finite"):
        RunDir(run).map_range()
    (run / "val_scores.json").write_text(json.dumps(scores))
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "workers": -3}))
    with pytest.raises(ValueError, match=r"config.json: --workers -3: must be at least 0"):
        RunDir(run).config()
    (run / "config.json").write_text(json.dumps({**config, "device": "cuda:7"}))
    if not torch.cuda.is_available():  # a run from a GPU machine still predicts here
        with pytest.warns(UserWarning, match="trained on --device cuda:7"):
            results, _ = predict_images(run, [_image(tiny_cookies)])
        assert results[0]["verdict"] in (PASS, REJECT)


def test_score_refuses_a_model_that_gives_nan(meandiff_run, tmp_path):
    run = _copy(meandiff_run, tmp_path)
    state = torch.load(run / "model.pt", weights_only=True)
    state["state"]["mean"] = torch.full_like(state["state"]["mean"], math.nan)
    _replace_model(run, state)
    with pytest.raises(RunError, match="NaN or infinite scores or maps, so nothing was written"):
        score_run(run)
    assert not RunDir(run).is_scored()


def test_predict_names_a_folder_without_images(meandiff_run, tiny_cookies, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", "--run", str(meandiff_run), str(_image(tiny_cookies)), str(empty)]) == 2
    assert f"error: {empty} is a folder with no images" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"--size 5000: must be at most 4096"):
        tiny_config(tiny_cookies, "meandiff", size=5000).validate()
    with pytest.raises(ValueError, match="is a file; give the data set's folder"):
        train_run(tiny_config(_image(tiny_cookies), "meandiff"), tmp_path / "r", progress=False)


def test_a_file_given_twice_is_scored_once(tiny_cookies):
    from anomaly.predict import expand_images

    folder = tiny_cookies / "test" / "good"
    files = expand_images(
        [folder, _image(tiny_cookies), folder / ".." / "good" / _image(tiny_cookies).name]
    )
    assert len(files) == len(set(files)) == len(list(folder.glob("*.png")))


def test_threshold_says_how_many_held_out_good_images_it_rejects(meandiff_run, tmp_path, capsys):
    run = _copy(meandiff_run, tmp_path)
    n = len(RunDir(run).val_scores()["scores"])
    assert main(["threshold", "--run", str(run), "--rule", "manual", "--value", "-1"]) == 0
    assert f"it rejects {n} of the run's {n} held-out good image" in capsys.readouterr().out
    assert main(["threshold", "--run", str(run), "--rule", "manual", "--value", "1e300"]) == 0
    assert f"it rejects 0 of the run's {n} held-out good image" in capsys.readouterr().out


def test_overwrite_deletes_only_what_the_generator_made(tmp_path):
    from anomaly.data import make_cookies
    from anomaly.data.photos import make_photos

    root = tmp_path / "c"
    make_cookies(root, preset="tiny", seed=1, size=32)
    mine = root / "train" / "good" / "999.png"
    shutil.copy(next((root / "train" / "good").glob("*.png")), mine)
    with pytest.raises(ValueError, match=r"did not make \(train/good/999.png\), so nothing was"):
        make_cookies(root, preset="tiny", seed=2, size=32, overwrite=True)
    assert mine.is_file() and len(list((root / "train" / "good").glob("*.png"))) > 1
    mine.unlink()
    make_cookies(root, preset="tiny", seed=2, size=32, overwrite=True)  # now all is ours
    assert json.loads((root / "manifest.json").read_text())["seed"] == 2

    suite = tmp_path / "trap" / "suite"
    make_photos(suite, seed=0, tiny=True, sets=["moon"])
    precious = tmp_path / "trap" / "thesis.txt"
    precious.write_text("important")
    manifest = json.loads((suite / "manifest.json").read_text())
    manifest["sets"] = {"..": manifest["sets"]["moon"]}  # a tampered manifest
    (suite / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="names a set '..' this generator never makes"):
        make_photos(suite, seed=1, tiny=True, sets=["moon"], overwrite=True)
    assert precious.read_text() == "important" and (suite / "moon").is_dir()


def test_an_interrupted_run_is_not_used_until_it_is_finished(tiny_cookies, tmp_path, capsys):
    run = tmp_path / "ae"
    train_run(tiny_config(tiny_cookies, "ae", epochs=1), run, progress=False)
    payload = torch.load(run / "model.pt", weights_only=True)
    torch.save({**payload, "complete": False}, run / "model.pt")  # as a resume cut short leaves it
    assert main(["predict", "--run", str(run), str(_image(tiny_cookies))]) == 2
    assert f"train --resume --out {run}" in capsys.readouterr().err
    with pytest.raises(RunError, match="its training was interrupted"):
        score_run(run)


def test_a_kept_threshold_loses_its_guarantee_and_stale_calibration_goes(tiny_cookies, tmp_path):
    from anomaly.data import AnomalyDataset
    from anomaly.pipeline import _default_threshold, load_run
    from anomaly.threshold_text import threshold_words

    run = tmp_path / "md"
    train_run(tiny_config(tiny_cookies, "meandiff"), run, progress=False)
    good = tmp_path / "good"
    shutil.copytree(tiny_cookies / "test" / "good", good)
    for i, f in enumerate(sorted(good.glob("*.png")) * 10):  # enough images for alpha 0.5
        shutil.copy(f, good / f"copy{i}.png")
    t = set_threshold(run, "conformal", 0.5, good_images=good)
    assert "guarantee" in t.params and RunDir(run).file(RunDir.CALIBRATION).is_file()
    detector = load_run(run)  # the model "changed" (a resume): the user's threshold is kept
    data = AnomalyDataset(tiny_cookies, "train", size=64, channels=1)
    with pytest.warns(UserWarning, match="no validation split"):
        _default_threshold(RunDir(run), detector, data, None, keep_own=True, progress=False)
    kept = RunDir(run).threshold()
    assert kept.value == t.value and "guarantee" not in kept.params
    assert "its guarantee no longer holds" in threshold_words(kept)
    set_threshold(run, "manual", 1.0)  # the same model.pt scored them: kept
    path = RunDir(run).file(RunDir.CALIBRATION)
    stale = {**json.loads(path.read_text()), "model_sha256": "0" * 64}  # another model's
    path.write_text(json.dumps(stale))
    set_threshold(run, "manual", 1.0)
    assert not path.exists()


def test_benchmark_refuses_unknown_methods_before_running(tiny_cookies, tmp_path):
    from anomaly.benchmark import BenchmarkError, run_benchmark

    with pytest.raises(BenchmarkError, match=r"unknown methods \['nope'\]"):
        run_benchmark(str(tiny_cookies), methods=["meandiff", "nope"], out=str(tmp_path / "b"))
    assert not (tmp_path / "b").exists()


def test_resume_finds_the_same_images_where_the_data_moved(tiny_cookies, tmp_path):
    data, moved, run = tmp_path / "data", tmp_path / "moved", tmp_path / "ae"
    shutil.copytree(tiny_cookies, data)
    train_run(tiny_config(data, "ae", epochs=1), run, progress=False)
    shutil.move(data, moved)
    config = RunDir(run).config().replace(epochs=2, data=str(moved))
    train_run(config, run, resume=True, progress=False)
    assert len(RunDir(run).history()) == 2 and RunDir(run).config().data == str(moved)


def test_resume_refuses_fewer_epochs_than_it_trained(tiny_cookies, tmp_path):
    run = tmp_path / "ae"
    train_run(tiny_config(tiny_cookies, "ae", epochs=2), run, progress=False)
    config = RunDir(run).config().replace(epochs=1)
    with pytest.raises(RunError, match="already trained 2 epochs.*give more than 2"):
        train_run(config, run, resume=True, progress=False)


def test_resume_refuses_training_images_that_changed(tiny_cookies, tmp_path):
    data, run = tmp_path / "data", tmp_path / "ae"
    shutil.copytree(tiny_cookies, data)
    train_run(tiny_config(data, "ae", epochs=1), run, progress=False)
    split = json.loads((run / "split.json").read_text())
    assert len(split["sha256"]) == len(split["train"]) + len(split["val"])
    first, other = split["train"][0], split["train"][1]
    shutil.copy(other, first)  # the same name, other pixels
    config = RunDir(run).config().replace(epochs=2)
    with pytest.raises(RunError, match=r"1 of the run's \d+ images changed since it was trained"):
        train_run(config, run, resume=True, progress=False)


def test_kmeans_from_a_run_without_an_encoder_writes_nothing(meandiff_run, tmp_path):
    config = tiny_config("", "kmeans", source_run=str(meandiff_run))
    with pytest.raises(ValueError, match="kmeans needs an ae, unet or vae run; .* meandiff run"):
        train_run(config, tmp_path / "km", progress=False)
    assert not (tmp_path / "km").exists()


def test_moving_a_split_moves_its_image_paths_only(tmp_path, monkeypatch):
    from anomaly.pipeline import _moved

    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    monkeypatch.chdir(old)  # a digest read as a relative path would lie under the old root
    split = {"train": [str(old / "a.png")], "val": [str(old / "b.png")], "sha256": ["ab", "cd"]}
    assert _moved(split, str(old), str(new)) == {
        "train": [str(new / "a.png")],
        "val": [str(new / "b.png")],
        "sha256": ["ab", "cd"],
    }


def test_an_atomic_write_never_follows_a_link_planted_under_a_temporary_name(tmp_path):
    import os

    from anomaly.safe_files import write_json

    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    run = tmp_path / "run"
    run.mkdir()
    # the temporary name an earlier version used (".NAME.PID.tmp") was predictable
    (run / f".threshold.json.{os.getpid()}.tmp").symlink_to(victim)
    write_json(run / "threshold.json", {"value": 1.0})
    assert victim.read_text() == "mine"
    assert json.loads((run / "threshold.json").read_text()) == {"value": 1.0}
    mask = os.umask(0)
    os.umask(mask)
    assert (run / "threshold.json").stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == [
        f".threshold.json.{os.getpid()}.tmp"
    ]  # only the planted link is left; no temporary file of ours
