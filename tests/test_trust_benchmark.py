"""The benchmark refuses bad data, and --methods it would fail on in their turn, before it
trains anything, a failed method says why in one line, tables read n/a for what was not
measured, --seed is checked by name, and auto says what its too few training images are and
what to do."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from anomaly.config import Config


def _copy(data: Path, dest: Path) -> Path:
    shutil.copytree(data, dest)
    return dest


def _no_training(monkeypatch):
    """Make any method run fail the test: the refusals must come first."""
    from anomaly import benchmark

    def run_method(*args, **kwargs):
        raise AssertionError("a method ran before the data was checked")

    monkeypatch.setattr(benchmark, "_run_method", run_method)


def _kinds(data: Path) -> list[str]:
    return sorted(d.name for d in (data / "test").iterdir() if d.name != "good")


def test_a_test_set_of_one_kind_is_refused_before_anything_runs(
    tiny_cookies, tmp_path, monkeypatch
):
    from anomaly.benchmark import BenchmarkError, run_benchmark

    _no_training(monkeypatch)
    no_good = _copy(tiny_cookies, tmp_path / "no_good")
    shutil.rmtree(no_good / "test" / "good")
    no_defect = _copy(tiny_cookies, tmp_path / "no_defect")
    for kind in _kinds(no_defect):
        shutil.rmtree(no_defect / "test" / kind)
    shutil.rmtree(no_defect / "ground_truth")
    out = tmp_path / "bench"
    with pytest.raises(BenchmarkError, match="needs both good and defective") as err:
        run_benchmark([str(no_good), str(no_defect)], methods=["meandiff"], out=str(out))
    message = str(err.value)
    assert f"{no_good}: its test images are" in message and "no good ones" in message
    assert f"{no_defect}: its test images are" in message and "no defective ones" in message
    assert "test/good/" in message and "--data" in message
    assert not out.exists()  # nothing claimed, nothing trained


def test_a_bad_test_folder_is_refused_before_anything_runs(tiny_cookies, tmp_path, monkeypatch):
    from anomaly.benchmark import run_benchmark
    from anomaly.data import DataError

    _no_training(monkeypatch)
    orphan = _copy(tiny_cookies, tmp_path / "orphan")
    kind = _kinds(orphan)[0]
    shutil.rmtree(orphan / "test" / kind)  # its masks stay in ground_truth/<kind>
    out = tmp_path / "bench"
    with pytest.raises(DataError, match=re.escape(str(orphan / "ground_truth" / kind))):
        run_benchmark(str(orphan), methods=["meandiff"], out=str(out))
    assert not out.exists()


def test_the_curve_refuses_a_test_set_of_one_kind_too(tiny_cookies, tmp_path, capsys):
    from anomaly.cli import main

    no_good = _copy(tiny_cookies, tmp_path / "no_good")
    shutil.rmtree(no_good / "test" / "good")
    out = tmp_path / "curves"
    argv = ["benchmark", "--curve", "train-size", "--data", str(no_good), "--out", str(out)]
    assert main(argv) == 2
    assert "needs both good and defective" in capsys.readouterr().err
    assert not out.exists()


def test_a_workers_known_error_is_one_line_without_a_traceback(tiny_cookies, tmp_path):
    # ae+kmeans with no ae run: the worker refuses; what the benchmark shows is its message
    cmd = [sys.executable, "-m", "anomaly.benchmark", "ae+kmeans", str(tiny_cookies)]
    proc = subprocess.run(
        [*cmd, str(tmp_path / "run"), "0", "--smoke"], capture_output=True, text=True, check=False
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: ae+kmeans needs the ae row first (it clusters that run's encoder features)"
    )


def test_tables_read_na_for_any_metric_not_measured():
    from anomaly.benchmark_tables import format_summary, format_table, readme_table, summarize

    def row(set_, image):
        return {"suite": "p", "set": set_, "method": "m", "image_auroc": image, "fit_s": None}

    rows = [row("a", None), row("b", None)]
    assert "| a | m | n/a | n/a |" in format_table(rows)
    summary = summarize(rows)
    assert summary[0]["mean_image_auroc"] is None
    assert "| p | m | 2 | n/a | n/a | n/a |" in format_summary(summary)
    table = readme_table(rows)
    assert "| **worst set** | n/a (a) |" in table and "| **mean** | n/a / n/a / n/a |" in table
    assert "**n/a" not in table  # nothing unmeasured is called the best
    one = readme_table([{"method": "m", "image_auroc": None, "per_defect": {"crack": None}}])
    assert one.splitlines()[2].startswith("| m | n/a |") and one.endswith("| n/a |")


def test_detectability_without_visible_defect_masks_has_no_bins():
    from anomaly.benchmark_tables import detectability
    from anomaly.detectors import Predictions

    masks = np.zeros((3, 4, 4), np.uint8)  # the defective image's mask is empty
    pred = Predictions(
        ["0.png", "1.png", "2.png"],
        np.array([0, 0, 1]),
        ["good", "good", "crack"],
        np.array([0.1, 0.2, 0.9]),
        np.zeros((3, 4, 4), np.float32),
        masks,
    )
    assert detectability(pred)["bins"] == []


@pytest.mark.parametrize(
    ("seed", "words"),
    [(-1, "--seed -1: must be at least 0"), (2**70, f"--seed {2**70}: must be at most 4294967295")],
)
def test_a_seed_out_of_range_is_refused_by_name(seed, words):
    with pytest.raises(ValueError, match=f"{words} \\(its range: 0 to 4294967295\\)"):
        Config(seed=seed).validate()
    Config(seed=2**32 - 1).validate()  # numpy's largest seed is fine


def test_train_and_benchmark_refuse_a_bad_seed_by_name(tiny_cookies, tmp_path, capsys):
    from anomaly.cli import main

    run, out = tmp_path / "run", tmp_path / "bench"
    train = ["train", "--method", "meandiff", "--data", str(tiny_cookies), "--size", "64"]
    assert main([*train, "--out", str(run), "--seed", "99999999999999999999"]) == 2
    assert "--seed 99999999999999999999: must be at most" in capsys.readouterr().err
    bench = ["benchmark", "--data", str(tiny_cookies), "--methods", "meandiff", "--smoke"]
    assert main([*bench, "--out", str(out), "--seed", "-3"]) == 2
    assert "--seed -3: must be at least 0" in capsys.readouterr().err
    curve = ["benchmark", "--curve", "train-size", "--data", str(tiny_cookies), "--seeds", "3"]
    assert main([*curve, "--out", str(out), "--seed", str(2**32 - 2)]) == 2
    assert f"--seed must be at most {2**32 - 3}" in capsys.readouterr().err
    assert not run.exists() and not out.exists()


def test_auto_says_what_its_too_few_training_images_are_and_what_to_do():
    from anomaly.detectors.auto import MIN_IMAGES, check_enough

    config = Config.for_method("auto")  # --val-fraction 0.1
    check_enough(MIN_IMAGES, config)
    check_enough(1, Config.for_method("patchknn"))  # other methods: not auto's business
    with pytest.raises(ValueError) as err:
        check_enough(5, config, n_good=6)  # 6 in train/good, 1 held out for the threshold
    message = str(err.value)
    assert (
        "got 5: the 6 training images of train/good less the 1 that --val-fraction 0.1 holds"
        in message
    )
    assert "Put at least 7 images in train/good" in message and "--val-fraction 0 " in message
    with pytest.raises(ValueError) as err:
        check_enough(2, config, n_good=3)  # --val-fraction 0 would not be enough either
    assert "--val-fraction 0 " not in str(err.value)


def test_auto_fit_refuses_too_few_images_with_the_same_words():
    from helpers import Textures

    from anomaly.detectors.auto import AutoDetector

    config = Config(method="auto", size=32, channels=3, seed=0)
    with pytest.raises(ValueError, match=r"auto needs at least 6 training images.*got 5 \("):
        AutoDetector(config).fit(Textures(5, size=32, channels=3))


@pytest.mark.parametrize(
    ("methods", "words"),
    [
        (
            ["patchknn", "ae+kmeans"],
            (
                "ae+kmeans clusters the encoder features of the ae row, which comes nowhere in --methods. "
                "Put each row before its +kmeans row: --methods patchknn ae ae+kmeans (a row left "
                "out is clustered from --out only when its run there was trained with the same "
                "data, seed and settings). Nothing was trained"
            ),
        ),
        (
            ["unet_original+kmeans", "meandiff", "unet_original"],
            (
                "the unet_original row, which comes after it. Put each row before its +kmeans row: "
                "--methods unet_original unet_original+kmeans meandiff (a row left out"
            ),
        ),
        (["meandiff", "kmeans"], "names it after that row: ae+kmeans,"),
        (["meandiff", "patchknn", "meandiff"], "names meandiff more than once"),
    ],
)
def test_methods_that_would_fail_in_their_turn_are_refused_before_anything_runs(
    tiny_cookies, tmp_path, monkeypatch, capsys, methods, words
):
    from anomaly.cli import main

    _no_training(monkeypatch)
    out = tmp_path / "bench"
    argv = ["benchmark", "--data", str(tiny_cookies), "--out", str(out), "--smoke"]
    assert main([*argv, "--methods", *methods]) == 2
    assert words in capsys.readouterr().err
    assert not out.exists()  # nothing trained, no folder made


def test_each_default_kmeans_row_comes_after_its_row():
    from anomaly.benchmark import DEFAULT_METHODS, check_methods

    check_methods(DEFAULT_METHODS)
    check_methods(["unet", "meandiff", "unet+kmeans"])  # its row before it, not next to it


def test_a_kmeans_row_may_cluster_its_rows_run_kept_in_out_when_trained_alike(
    tiny_cookies, tmp_path
):
    """`--methods ae+kmeans` over a benchmark folder that holds its ae run (rerunning only the
    k-means row) worked before the up-front check refused it; it is refused only when that run
    was trained otherwise (another seed or smoke setting) or is not there."""
    from anomaly.benchmark import _config, _kept_source, check_methods
    from anomaly.benchmark_dirs import BenchmarkError
    from anomaly.pipeline import train_run

    sets, bases = [{"path": str(tiny_cookies)}], [tmp_path / "bench"]
    assert not _kept_source("ae", sets, bases, seed=0, smoke=True)  # nothing there yet
    train_run(_config("ae", str(tiny_cookies), 0, True), bases[0] / "ae")
    assert _kept_source("ae", sets, bases, seed=0, smoke=True)
    assert not _kept_source("ae", sets, bases, seed=1, smoke=True)
    assert not _kept_source("ae", sets, bases, seed=0, smoke=False)
    check_methods(["ae+kmeans"], kept=lambda src: src == "ae")
    with pytest.raises(BenchmarkError, match="comes nowhere in --methods"):
        check_methods(["ae+kmeans"], kept=lambda src: False)
    with pytest.raises(BenchmarkError, match="comes after it"):  # listed: it trains anew
        check_methods(["ae+kmeans", "ae"], kept=lambda src: True)


def _killed_run(out: Path, method: str) -> Path:
    """The temporary run folder a benchmark killed while `method` trained leaves: marked, never
    sealed (its mark lists no files), holding run files and a half-written temporary one."""
    from anomaly.benchmark_dirs import claim_dir, claim_out, run_dirs

    claim_out(out)
    work = claim_dir(run_dirs(out, method)[1])
    for name in ("config.json", "split.json", "versions.json", ".lock"):
        (work / name).write_text("{}")
    (work / ".model.pt.k1ll3d_x.tmp").write_bytes(b"half a model")
    return work


def test_a_killed_runs_folder_holding_a_users_file_is_refused_and_kept(
    tiny_cookies, tmp_path, monkeypatch
):
    from anomaly.benchmark import BenchmarkError, run_benchmark

    _no_training(monkeypatch)
    out = tmp_path / "bench"
    work = _killed_run(out, "meandiff")
    (work / "notes.txt").write_text("a user's notes")
    (work / "plots").mkdir()  # a user's folder, empty
    before = sorted(p.name for p in work.iterdir())
    with pytest.raises(BenchmarkError) as err:
        run_benchmark(str(tiny_cookies), methods=["meandiff"], out=str(out), smoke=True)
    message = str(err.value)
    assert f"{work} holds a run the benchmark never finished" in message
    assert "(notes.txt, plots/), so nothing was removed" in message
    assert "Move them away or choose another --out" in message
    assert sorted(p.name for p in work.iterdir()) == before  # the run's files too
    assert (work / "notes.txt").read_text() == "a user's notes"


def test_a_killed_runs_folder_of_run_files_only_is_rerun(tiny_cookies, tmp_path):
    from anomaly.benchmark import run_benchmark
    from anomaly.benchmark_dirs import MARK

    out = tmp_path / "bench"
    work = _killed_run(out, "meandiff")
    (row,) = run_benchmark(str(tiny_cookies), methods=["meandiff"], out=str(out), smoke=True)
    assert "error" not in row and not work.exists()
    assert (out / "meandiff" / "model.pt").is_file()
    assert not (out / "meandiff" / ".model.pt.k1ll3d_x.tmp").exists()
    listed = json.loads((out / "meandiff" / MARK).read_text())["files"]
    assert "model.pt" in listed and not any(f.endswith(".tmp") for f in listed)


@pytest.mark.parametrize("method", ["kmeans", "ae+kmeans", "unet_original"])
def test_the_curve_refuses_a_method_it_cannot_fit_before_making_its_folder(
    tiny_cookies, tmp_path, capsys, method
):
    from anomaly.cli import main

    out = tmp_path / "curves"
    argv = ["benchmark", "--curve", "train-size", "--data", str(tiny_cookies), "--smoke"]
    assert main([*argv, "--method", method, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--method {method}: the train-size curve fits one of ae, auto," in err
    assert "unet+kmeans" in err and ("needs a run to cluster" in err) == ("kmeans" in method)
    assert not out.exists()
