"""The command line's flags and the data generators given values that make no sense: one clear
`error:` or `warning:` line naming the flag, never a silent wrong result."""

from __future__ import annotations

import re
import shutil
from dataclasses import fields

import pytest

from anomaly.cli import main
from anomaly.config import METHODS, READ_BY, Config, ignored_by
from anomaly.notebook_setup import smoke_switch


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_flag_the_method_never_reads_is_named(tiny_cookies, tmp_path, capsys):
    code, _, err = run_cli(
        capsys,
        "train",
        "--method",
        "meandiff",
        "--size",
        "32",
        "--device",
        "cpu",
        "--data",
        tiny_cookies,
        "--out",
        tmp_path / "run",
        "--epochs",
        "5",
        "--k",
        "3",
    )
    assert code == 0
    line = next(x for x in err.splitlines() if x.startswith("warning: --method meandiff"))
    assert "--epochs (read by ae, unet, vae, draem, flow)" in line
    assert "--k (read by kmeans)" in line


def test_read_by_names_real_fields_and_methods():
    names = {f.name for f in fields(Config)}
    assert set(READ_BY) <= names
    assert all(set(methods) <= set(METHODS) for methods in READ_BY.values())
    # auto's candidates bring their own settings: every method's own flag is ignored
    assert ignored_by("auto", ["epochs", "k", "size", "seed"]) == ["epochs", "k"]
    assert ignored_by("kmeans", ["k", "val_fraction"]) == ["val_fraction"]  # --from's split
    assert ignored_by("a_plugin", ["epochs"]) == []
    assert ignored_by("unet", ["epochs", "output", "size", "k"]) == ["k"]


def test_make_photos_refuses_a_test_set_without_good_or_defective_images(tmp_path, capsys):
    for flag, value in (("--good", "0"), ("--defect", "0"), ("--good", "5001")):
        code, _, err = run_cli(capsys, "make-photos", tmp_path / "suite", flag, value)
        assert code == 2
        assert f"{flag} {value}: give 1 to 5000" in err  # (5001 said "at least 0")
    assert not (tmp_path / "suite").exists()


def test_the_smoke_switch_reads_false_as_off(monkeypatch):
    for value, smoke in [("", False), ("0", False), ("false", False), (" Off ", False)]:
        monkeypatch.setenv("ANOMALY_SMOKE", value)
        assert smoke_switch() is smoke, value
    for value in ("1", "TRUE", "yes", "on"):
        monkeypatch.setenv("ANOMALY_SMOKE", value)
        assert smoke_switch() is True, value
    monkeypatch.setenv("ANOMALY_SMOKE", "maybe")
    with pytest.raises(ValueError, match="ANOMALY_SMOKE='maybe' is not a switch"):
        smoke_switch()
    monkeypatch.delenv("ANOMALY_SMOKE")
    assert smoke_switch() is False


@pytest.mark.parametrize("value", ["1e-300", "0.01", "nan", "inf", "0", "-1", "1e9"])
def test_make_cookies_refuses_a_difficulty_that_draws_nothing_useful(tmp_path, capsys, value):
    # 1e-300 ended in a RecursionError from deep inside PIL; 0.01 covered whole images in
    # mustard; 1e9 is the same set as 50
    code, _, err = run_cli(
        capsys, "make-cookies", tmp_path / "c", "--preset", "tiny", "--size", "32",
        "--difficulty", value,
    )  # fmt: skip
    assert code == 2
    assert "difficulty must be a positive finite number, 0.1 to 50;" in err
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"smooth_sigma": 1e6}, "--smooth-sigma 1000000.0: at most --size (64)"),
        ({"score_border": 32}, "--score-border 32 leaves nothing of a 64 px map; use at most 31"),
    ],
)
def test_a_blur_or_border_as_wide_as_the_image_is_refused(flags, message):
    # --smooth-sigma 1e6 asked torch for 256 TB mid-training; --score-border 40 for meandiff
    # trained a run, and for patchknn failed after extracting every feature
    with pytest.raises(ValueError, match=re.escape(message)):
        Config.for_method("meandiff", size=64, **flags).validate()
    Config.for_method("meandiff", size=64, smooth_sigma=64, score_border=31).validate()


def test_anomaly_home_that_cannot_be_written_is_named(tmp_path, monkeypatch):
    from anomaly import notebook_setup

    afile = tmp_path / "afile"
    afile.write_text("mine")
    monkeypatch.setenv("ANOMALY_HOME", str(afile))
    with pytest.raises(ValueError, match="ANOMALY_HOME=.* is a file"):
        notebook_setup.home()
    monkeypatch.setenv("ANOMALY_HOME", str(tmp_path))
    s = notebook_setup.settings(smoke=True)
    monkeypatch.setattr(notebook_setup.os, "access", lambda *a: False)  # root writes anywhere
    with pytest.raises(ValueError, match="set ANOMALY_HOME to one"):
        notebook_setup.ensure_cookies(s)
    assert afile.read_text() == "mine" and not (tmp_path / "data").exists()


def test_workers_by_the_thousand_are_refused_before_any_process_starts(tmp_path, capsys):
    code, _, err = run_cli(
        capsys, "train", "--method", "meandiff", "--data", tmp_path, "--out", tmp_path / "run",
        "--workers", "10000",
    )  # fmt: skip
    assert code == 2
    assert "--workers 10000: must be at most 64" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["make-cookies", "make-photos"])
def test_a_generator_will_not_write_inside_a_data_set(tiny_cookies, tmp_path, capsys, command):
    # make-cookies DATA/test/new made `new` a defect kind of DATA, with train/ and test/ in it
    before = sorted(p.relative_to(tiny_cookies) for p in tiny_cookies.rglob("*"))
    code, _, err = run_cli(capsys, command, tiny_cookies / "test" / "new")
    assert code == 2
    assert f"is inside the data set {tiny_cookies}" in err
    assert sorted(p.relative_to(tiny_cookies) for p in tiny_cookies.rglob("*")) == before
    (tmp_path / "afile").write_text("mine")
    code, _, err = run_cli(capsys, command, tmp_path / "afile" / "sub")
    assert code == 2
    assert f"{tmp_path / 'afile'} is a file" in err


def test_an_empty_image_path_and_a_threshold_quantile_below_half_are_refused(
    tiny_cookies, tmp_path, capsys
):
    """`predict --run R ""` scored the working folder (Path("") is "."), and
    --threshold-quantile 0 made a default threshold that rejects nearly every good part."""
    from helpers import tiny_config

    from anomaly.cli import main
    from anomaly.pipeline import train_run

    run = tmp_path / "md"
    train_run(tiny_config(tiny_cookies, "meandiff"), run, progress=False)
    capsys.readouterr()
    assert main(["predict", "--run", str(run), ""]) == 2
    assert "empty image path" in capsys.readouterr().err
    out = tmp_path / "r"
    flags = ["--method", "meandiff", "--size", "64", "--threshold-quantile", "0.1"]
    assert main(["train", "--data", str(tiny_cookies), "--out", str(out), *flags]) == 2
    assert "--threshold-quantile" in capsys.readouterr().err
    assert not out.exists()


def test_score_and_predict_take_workers_for_one_command(tiny_cookies, tmp_path, capsys):
    run = tmp_path / "run"
    train = ("train", "--method", "meandiff", "--size", "32", "--device", "cpu")
    assert run_cli(capsys, *train, "--data", tiny_cookies, "--out", run)[0] == 0
    config = (run / "config.json").read_text()
    code, out, err = run_cli(capsys, "score", "--run", run, "--no-overlays", "--workers", "1")
    assert code == 0, err
    assert "wrote" in out
    good = sorted((tiny_cookies / "test" / "good").iterdir())[:2]
    code, out, err = run_cli(capsys, "predict", "--run", run, *good, "--workers", "1")
    assert code == 0, err
    shutil.rmtree(run / "predict")
    assert len([x for x in out.splitlines() if "\t" in x]) == 2
    assert (run / "config.json").read_text() == config  # the run's own setting is kept
    code, _, err = run_cli(capsys, "score", "--run", run, "--workers", "10000")
    assert code == 2
    assert "--workers 10000: must be at most 64" in err
    code, _, err = run_cli(capsys, "predict", "--run", run, *good, "--workers", "-1")
    assert code == 2 and "--workers -1: must be at least 0" in err
    assert not (run / "predict").exists()  # refused before anything was made
    code, _, err = run_cli(capsys, "predict", "--onnx", run / "x.onnx", *good, "--workers", "1")
    assert code == 2
    assert "--workers is for predict --run" in err


def test_a_bad_image_read_by_a_decoding_worker_gives_one_error_line(tiny_cookies, tmp_path, capsys):
    """score --workers 2 printed torch's worker traceback around the message naming the file."""
    data = tmp_path / "data"
    shutil.copytree(tiny_cookies, data)
    bad = data / "test" / "good" / "zz_truncated.png"
    bad.write_bytes((data / "train" / "good").glob("*.png").__next__().read_bytes()[:200])
    run = tmp_path / "run"
    train = ("train", "--method", "meandiff", "--size", "32", "--device", "cpu")
    train += ("--batch-size", "2")  # batches enough for two workers (no more than batches)
    assert run_cli(capsys, *train, "--data", data, "--out", run)[0] == 0
    code, _, err = run_cli(capsys, "score", "--run", run, "--no-overlays", "--workers", "2")
    assert code == 2
    assert "Traceback" not in err and "zz_truncated.png" in err
    said = [x for x in err.splitlines() if x.startswith("error: ")]  # after the progress bar
    assert len(said) == 1 and "cannot read this image" in said[0]
