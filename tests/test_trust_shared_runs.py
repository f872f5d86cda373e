"""A run folder from someone else is untrusted input: what it says is checked before it is
shown, and it chooses nothing on this machine that the user did not."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import pytest
from helpers import copy_run, tiny_config, tiny_flags

from anomaly.cli import main
from anomaly.threshold_file import guarantee_words


def _threshold(run, rule, **params):
    d = json.loads((run / "threshold.json").read_text())
    d["rule"], d["params"] = rule, params
    (run / "threshold.json").write_text(json.dumps(d))


def _predict(run, tiny_cookies, capsys):
    image = min((tiny_cookies / "test/good").glob("*.png"))
    code = main(["predict", "--run", str(run), str(image)])
    return code, capsys.readouterr()


def test_a_guarantee_with_control_characters_is_refused(
    scored_ae_run, tiny_cookies, tmp_path, capsys
):
    run = copy_run(scored_ae_run, tmp_path / "run")
    _threshold(run, "conformal", alpha=0.1, n=9, guarantee="\x1b[2Jfalse-reject rate <= 10%")
    code, said = _predict(run, tiny_cookies, capsys)
    assert code == 2 and "params.guarantee" in said.err and "printable" in said.err
    assert "\x1b" not in said.out + said.err.replace(repr("\x1b")[1:-1], "")


@pytest.mark.parametrize(
    "rule, params, shown",
    [
        # a rule that guarantees nothing cannot print a guarantee
        (
            "normal_quantile",
            {"q": 0.99, "guarantee": "false-reject rate <= 0.001% (certified)"},
            "no guarantee on the false-reject rate",
        ),
        # words that do not state the file's own alpha are made again from alpha and n
        (
            "conformal",
            {"alpha": 0.1, "n": 9, "guarantee": "false-reject rate <= 0.001% (certified)"},
            "guarantee: false-reject rate <= 10% for new good parts exchangeable with the 9 good",
        ),
    ],
)
def test_only_a_conformal_threshold_shows_a_guarantee_and_only_its_own(
    scored_ae_run, tiny_cookies, tmp_path, capsys, rule, params, shown
):
    run = copy_run(scored_ae_run, tmp_path / "run")
    _threshold(run, rule, **params)
    if rule == "conformal":  # its value and n as alpha gives them on 9 held-out scores
        held = json.loads((run / "val_scores.json").read_text())
        held.update(paths=held["paths"][:1] * 9, scores=[i / 10 for i in range(9)])
        (run / "val_scores.json").write_text(json.dumps(held))
        d = json.loads((run / "threshold.json").read_text())
        d["value"] = math.nextafter(0.8, math.inf)
        (run / "threshold.json").write_text(json.dumps(d))
    code, said = _predict(run, tiny_cookies, capsys)
    assert code in (0, 2) and shown in said.err and "certified" not in said.err


def test_guarantee_words_keep_a_folders_name_when_they_state_the_alpha():
    text = "false-reject rate <= 5% for new good parts exchangeable with the 40 good images in /x"
    assert guarantee_words("conformal", {"alpha": 0.05, "n": 20, "guarantee": text}) == text
    assert guarantee_words("conformal", {"alpha": 0.05}).endswith("the good images it was set on")
    assert guarantee_words("conformal", {"alpha": 5, "guarantee": text}) is None
    assert guarantee_words("f1", {"alpha": 0.05, "guarantee": text}) is None


# --- a train stopped between its model and its threshold -----------------------------------------
@pytest.mark.parametrize("method", ["meandiff", "ae"])
def test_a_train_stopped_after_training_is_finished_by_resume(
    tiny_cookies, tmp_path, monkeypatch, capsys, method
):
    from anomaly import pipeline

    run = tmp_path / "run"
    argv = ["train", "--out", str(run), *tiny_flags(tiny_cookies, **{"--method": method})]

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(pipeline, "_default_threshold", stop)
        assert main(argv) == 130
    err = capsys.readouterr().err
    assert (
        f"interrupted after training; continue with `python -m anomaly train --out {run} --resume`"
        in err
    )
    assert (run / "model.pt").exists() and not (run / "threshold.json").exists()
    assert main(argv) == 2
    assert "finish it (no training again)" in capsys.readouterr().err
    model = (run / "model.pt").read_bytes()
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert "finished: its held-out images are scored" in capsys.readouterr().out
    assert (run / "model.pt").read_bytes() == model  # not trained again
    assert json.loads((run / "threshold.json").read_text())["params"]["set_by"] == "train"
    assert json.loads((run / "val_scores.json").read_text())["scores"]
    image = min((tiny_cookies / "test/good").glob("*.png"))
    main(["predict", "--run", str(run), str(image)])
    assert "(normal_quantile)" in capsys.readouterr().err  # predict has its threshold


def test_an_unreadable_held_out_image_is_named_before_training(tiny_cookies, tmp_path, capsys):
    from anomaly.data import AnomalyDataset
    from anomaly.train_guards import new_split

    data = tmp_path / "data"
    shutil.copytree(tiny_cookies, data)
    config = tiny_config(data, "meandiff")
    paths = AnomalyDataset(data, "train", size=64, channels=1).paths
    held_out = Path(paths[new_split(config, paths)[1][0]])
    held_out.write_bytes(held_out.read_bytes()[:200])  # truncated: only decoding finds it
    run = tmp_path / "run"
    argv = ["train", "--out", str(run), *tiny_flags(data, **{"--method": "meandiff"})]
    assert main(argv) == 2
    assert held_out.name in capsys.readouterr().err
    assert not (run / "model.pt").exists()  # named before training, not after


@pytest.mark.parametrize("layers", ["features.3,features.3", "features.3, features.03"])
def test_a_stage_named_twice_is_refused_before_anything_is_written(
    tiny_cookies, tmp_path, capsys, layers
):
    run = tmp_path / "run"
    flags = tiny_flags(tiny_cookies, **{"--method": "patchknn", "--channels": "3"})
    assert main(["train", "--out", str(run), *flags, "--layers", layers]) == 2
    assert "names features.3 twice" in capsys.readouterr().err
    assert not run.exists()


def test_runs_and_scores_are_never_written_into_a_data_sets_images(
    scored_ae_run, tiny_cookies, tmp_path, capsys
):
    data = tmp_path / "data"
    shutil.copytree(tiny_cookies, data)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    flags = tiny_flags(data, **{"--method": "meandiff"})
    assert main(["train", "--out", str(data / "test/run1"), *flags]) == 2
    assert "inside the data set" in capsys.readouterr().err
    run = copy_run(scored_ae_run, tmp_path / "run")
    argv = ["score", "--run", str(run), "--data", str(data), "--no-overlays"]
    assert main([*argv, "--out", str(data / "ground_truth/new")]) == 2
    assert "inside the data set" in capsys.readouterr().err
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
    assert main(["train", "--out", str(data / "runs/ok"), *flags]) == 0  # beside its images


def test_test_images_that_are_training_images_are_named(scored_ae_run, tmp_path):
    from anomaly.pipeline import score_run
    from anomaly.runs import RunDir

    run = copy_run(scored_ae_run, tmp_path / "run")
    data = tmp_path / "data"
    shutil.copytree(RunDir(run).config().data, data)
    learned = RunDir(run).split()["train"][0]
    shutil.copy(learned, data / "test/good/copy.png")
    with pytest.warns(UserWarning, match=r"1 of the \d+ images scored are byte-identical") as got:
        score_run(run, data=data, overlays=False)
    assert f"copy.png = {learned}" in str(got[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the run's own test images: nothing to say
        score_run(run, overlays=False)


# --- hand-edited or damaged run files: a message naming the file, never a traceback ----------------
def _edit_json(path, change):
    d = json.loads(path.read_text())
    change(d)
    path.write_text(json.dumps(d))


@pytest.mark.parametrize(
    "file, change, said",
    [
        ("config.json", lambda d: d.update(size=64.0), "--size 64.0: must be a whole number"),
        ("config.json", lambda d: d.update(size="64"), "--size '64': must be a whole number"),
        ("config.json", lambda d: d.update(data=5), "--data 5: must be text"),
        ("split.json", lambda d: d.update(train=5), "split.json is damaged"),
        ("split.json", lambda d: d.update(train=[[1]]), "split.json is damaged"),
    ],
)
def test_edited_run_files_are_named(scored_ae_run, tmp_path, capsys, file, change, said):
    run = copy_run(scored_ae_run, tmp_path / "run")
    _edit_json(run / file, change)
    command = ["threshold", "--run", str(run), "--rule", "normal-quantile"]
    if file == "config.json":
        command = ["score", "--run", str(run), "--no-overlays"]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err


@pytest.mark.parametrize(
    "damage", [{"config": "x"}, {"state": [1, 2]}, {"state.encoder.0.weight": [1.0]}]
)
def test_a_damaged_checkpoint_is_named(scored_ae_run, tmp_path, capsys, damage):
    import torch

    run = copy_run(scored_ae_run, tmp_path / "run")
    payload = torch.load(run / "model.pt", weights_only=True)
    for key, value in damage.items():
        if key.startswith("state."):
            payload["state"] = {k: value for k in payload["state"]}  # lists, not tensors
        else:
            payload[key] = value
    torch.save(payload, run / "model.pt")
    assert main(["score", "--run", str(run), "--no-overlays"]) == 2
    assert str(run / "model.pt") in capsys.readouterr().err


def test_a_folder_in_place_of_the_lock_is_named(scored_ae_run, tmp_path, capsys):
    run = copy_run(scored_ae_run, tmp_path / "run")
    (run / ".lock").mkdir()
    assert main(["threshold", "--run", str(run), "--rule", "normal-quantile"]) == 2
    assert f"{run / '.lock'} is a folder" in capsys.readouterr().err


def test_damaged_metrics_and_scores_are_named_in_the_notebook_tables(scored_ae_run, tmp_path):
    from anomaly import notebook as nb
    from anomaly.runs import RunError

    run = copy_run(scored_ae_run, tmp_path / "run")
    _edit_json(run / "metrics.json", lambda d: d.update(image_auroc="high"))
    with pytest.raises(RunError, match="metrics.json is damaged .its image_auroc is 'high'"):
        nb.metrics_table({"ae": run})
    rows = (run / "scores.csv").read_text().splitlines()
    head, first = rows[0].split(","), rows[1].split(",")
    first[head.index("score")] = "lots"
    (run / "scores.csv").write_text("\n".join([rows[0], ",".join(first), *rows[2:]]) + "\n")
    with pytest.raises(RunError, match="scores.csv is damaged .a score of 'lots'"):
        nb.scores_table(run)


@pytest.mark.parametrize("map_range", [[5, 5], [0, 1e-300], [-1e307, 1e307]])
def test_a_degenerate_map_range_draws_no_overflow(
    scored_ae_run, tiny_cookies, tmp_path, capsys, map_range
):
    run = copy_run(scored_ae_run, tmp_path / "run")
    _edit_json(run / "val_scores.json", lambda d: d.update(map_range=map_range))
    image = min((tiny_cookies / "test/good").glob("*.png"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy's divide by zero, overflow
        code = main(["predict", "--run", str(run), str(image)])
    said = capsys.readouterr()
    if abs(map_range[0]) > 1e30:
        assert code == 2 and "map_range is not two finite numbers" in said.err
    else:
        assert "REJECT" in said.out or "PASS" in said.out


def test_a_pixel_threshold_beyond_float32_is_refused(scored_ae_run, tiny_cookies, tmp_path, capsys):
    run = copy_run(scored_ae_run, tmp_path / "run")
    _edit_json(run / "threshold.json", lambda d: d["params"].update(pixel_threshold=1e308))
    image = min((tiny_cookies / "test/good").glob("*.png"))
    assert main(["predict", "--run", str(run), str(image)]) == 2
    assert (
        "params.pixel_threshold is '1e+308', not a finite number (at most 1e30"
        in capsys.readouterr().err
    )


@pytest.mark.parametrize("q", ["0", "0.01", "0.49"])
def test_threshold_refuses_the_quantiles_train_refuses(scored_ae_run, tmp_path, capsys, q):
    run = copy_run(scored_ae_run, tmp_path / "run")
    before = (run / "threshold.json").read_bytes()
    assert main(["threshold", "--run", str(run), "--rule", "normal-quantile", "--value", q]) == 2
    assert "must be from 0.5 to 1.0" in capsys.readouterr().err
    assert (run / "threshold.json").read_bytes() == before


def test_a_warning_during_a_progress_bar_gets_a_line_of_its_own(capsys):
    import sys

    from tqdm import tqdm

    from anomaly import cli

    show = cli._one_line_warnings(warnings.showwarning)
    with tqdm(total=2, file=sys.stderr, desc="predict") as bar:
        bar.update(1)
        show("x.png: unlike the training images", UserWarning, "/p/anomaly/data/k.py", 1)
    line = next(s for s in capsys.readouterr().err.split("\n") if "warning:" in s)
    assert line.split("\r")[-1] == "warning: x.png: unlike the training images"


def test_more_neighbors_than_bank_rows_is_said(tiny_cookies, tmp_path, capsys):
    run = tmp_path / "run"
    flags = tiny_flags(tiny_cookies, **{"--method": "patchknn", "--channels": "3"})
    for drop in ("--epochs", "--batch-size", "--width", "--latent", "--patience", "--corrupt"):
        i = flags.index(drop)
        del flags[i : i + 2]
    assert main(["train", "--out", str(run), *flags, "--neighbors", "100000"]) == 0
    assert "--neighbors 100000 is more than the memory bank's" in capsys.readouterr().err


def test_a_data_set_or_a_run_folder_given_for_the_wrong_flag_gets_the_right_advice(
    scored_ae_run, tiny_cookies, capsys
):
    image = str(min((tiny_cookies / "test/good").glob("*.png")))
    assert main(["predict", "--run", str(tiny_cookies), image]) == 2
    err = capsys.readouterr().err
    assert "is a data set, not a run folder" in err and f"--out {tiny_cookies}" not in err
    assert main(["predict", "--onnx", str(scored_ae_run), image]) == 2
    assert f"{scored_ae_run} is a folder, not an ONNX file" in capsys.readouterr().err


def test_the_notebooks_show_a_benchmark_run_only_of_their_data_and_settings(
    scored_ae_run, tiny_cookies, tmp_path, capsys
):
    from anomaly.notebook_setup import Settings

    runs = scored_ae_run.parent
    other = Settings(False, "benchmark", None, None, tmp_path / "cookies", runs)
    assert other.run_folder("ae") == other.own_runs / "ae"
    assert f"it was trained on {tiny_cookies}" in capsys.readouterr().out
    full = Settings(False, "benchmark", None, None, tiny_cookies, runs)  # a 64 px run: --smoke
    assert full.run_folder("ae") == full.own_runs / "ae"
    assert "a --smoke run" in capsys.readouterr().out
    smoke = Settings(True, "tiny", 64, 1, tiny_cookies, runs)
    assert smoke.run_folder("ae") == scored_ae_run


def test_notebook_tables_name_a_missing_run_and_a_data_set(scored_ae_run, tiny_cookies, tmp_path):
    from anomaly import notebook as nb
    from anomaly.runs import RunError

    with pytest.raises(RunError, match="no such run folder"):
        nb.metrics_table({"x": tmp_path / "nope"})
    with pytest.raises(RunError, match="is a data set, not a run folder"):
        nb.scores_table(tiny_cookies)
    with pytest.raises(ValueError, match="kind='heta'"):
        nb.overlays_figure(scored_ae_run, kind="heta")


def test_counts_table_counts_the_folders_not_the_generators_manifest(tiny_cookies, tmp_path):
    from anomaly import notebook as nb

    data = tmp_path / "data"
    shutil.copytree(tiny_cookies, data)
    written = json.loads((data / "manifest.json").read_text())["counts"]
    assert nb.counts_table(data).split() == [str(x) for kv in written.items() for x in kv]
    for image in sorted((data / "train/good").glob("*.png"))[:3]:
        image.unlink()
    (data / "manifest.json").unlink()  # a user's own data set has none
    assert nb.counts_table(data).splitlines()[0].split() == [
        "train/good",
        str(written["train/good"] - 3),
    ]
