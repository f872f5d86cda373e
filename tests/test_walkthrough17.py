"""What a new user ran into (session 17's walkthrough), each with the fix: a plain-layout data
set that grows after training, a run written inside a data set, a run still training, and
folder names the layout guesses wrong."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from helpers import plain_set
from PIL import Image

from anomaly.cli import main
from anomaly.config import Config
from anomaly.pipeline import score_run, train_run


def _tested_good(run):
    with open(run / "scores.csv") as f:
        return sorted(r["file"] for r in csv.DictReader(f) if r["label"] == "0")


def test_good_images_added_after_training_never_move_a_trained_one_into_the_test(tmp_path):
    data = plain_set(tmp_path / "plain")
    run = tmp_path / "run"
    train_run(Config.for_method("meandiff", data=str(data), size=32), run, progress=False)
    score_run(run, overlays=False)
    before = _tested_good(run)
    assert len(before) == 4
    rng = np.random.default_rng(1)
    for i in range(3):  # new photos, named to sort first
        Image.fromarray(rng.integers(90, 110, (32, 32, 3), dtype=np.uint8)).save(
            data / "good" / f"0000_new{i}.png"
        )
    score_run(run, overlays=False)
    after = _tested_good(run)
    assert set(before) <= set(after)  # the held-out test images stay test images
    assert set(after) - set(before) == {f"0000_new{i}" for i in range(3)}  # the new ones join
    split = (run / "split.json").read_text()
    assert not any(f"good/{name}.png" in split for name in after)  # none was trained on


def test_a_run_inside_a_plain_data_set_is_refused_before_anything_is_written(tmp_path, capsys):
    data = plain_set(tmp_path / "plain")
    args = ["train", "--data", str(data), "--method", "meandiff", "--size", "32"]
    assert main([*args, "--out", str(data / "run")]) == 2
    said = capsys.readouterr()
    assert f"is inside the data set {data}" in said.out + said.err
    assert not (data / "run").exists()  # it would have become a defect kind named "run"
    run = tmp_path / "run"
    assert main([*args, "--out", str(run)]) == 0
    assert main(["score", "--run", str(run), "--out", str(data / "scores")]) == 2
    assert not (data / "scores").exists()
    assert main(["score", "--run", str(run)]) == 0  # the data set is as it was


def test_a_run_still_training_is_said_to_be_in_use_not_interrupted(
    tiny_cookies, tmp_path, monkeypatch, capsys
):
    import json
    import subprocess
    import sys

    from helpers import tiny_flags

    import anomaly.train

    real, calls = anomaly.train._run_epoch, []

    def stopped_in_epoch_2(*args):  # model.pt of epoch 1, marked unfinished
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(anomaly.train, "_run_epoch", stopped_in_epoch_2)
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *tiny_flags(tiny_cookies)]) == 130
    monkeypatch.undo()
    image = str(next((tiny_cookies / "test" / "good").glob("*.png")))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # as if that training still ran in another process
        (run / ".lock").write_text(json.dumps({"pid": sleeper.pid, "command": "train"}))
        capsys.readouterr()
        for args in (
            ["predict", "--run", str(run), image],
            ["train", "--out", str(run), *tiny_flags(tiny_cookies)],
            ["train", "--method", "kmeans", "--from", str(run), "--out", str(tmp_path / "km")],
        ):
            assert main(args) == 75, args  # in use: try again later
            said = capsys.readouterr()
            words = said.out + said.err
            assert f"is in use: process {sleeper.pid} is running `train`" in words, args
            assert "interrupted" not in words, args
        assert main(["threshold", "--run", str(run), "--rule", "manual", "--value", "1"]) == 75
        said = capsys.readouterr()
        assert "is in use" in said.err + said.out and "--out" not in said.err + said.out
    finally:
        sleeper.kill()
        sleeper.wait()
    assert main(["train", "--out", str(run), "--resume"]) == 0  # the holder gone: resumable


@pytest.mark.parametrize("name", ["normal", "OK", "Pass", "defect-free"])
def test_a_folder_of_good_images_by_another_name_is_not_scored_as_defects(tmp_path, name):
    from anomaly.data import AnomalyDataset, DataError

    data = plain_set(tmp_path / "plain")
    (data / "stain").rename(data / name)  # a QA folder of good parts, not a defect kind
    with pytest.raises(DataError, match=rf"{name}/ would be read as a defect kind.*good"):
        AnomalyDataset(data, "test")
    mvtec = tmp_path / "mvtec"
    (mvtec / "train").mkdir(parents=True)
    (data / name).rename(mvtec / "train" / name)
    with pytest.raises(DataError, match=rf"{name}/ would be read as a defect kind"):
        AnomalyDataset(mvtec, "train")


def test_a_plain_data_set_with_a_defect_kind_named_test_says_so(tmp_path):
    from anomaly.data import AnomalyDataset, DataError

    data = plain_set(tmp_path / "plain")
    (data / "stain").rename(data / "test")
    with pytest.raises(DataError, match="holds good/ and test/ but no train/.*named test/"):
        AnomalyDataset(data, "train")


def test_a_leftover_good_folder_beside_train_and_test_is_named(tiny_cookies, tmp_path):
    import shutil

    from anomaly.data import AnomalyDataset

    data = tmp_path / "cookies"
    shutil.copytree(tiny_cookies, data)
    shutil.copytree(data / "train" / "good", data / "good")
    with pytest.warns(UserWarning, match=r"good/ is not read: this data set is in the MVTec AD"):
        train = AnomalyDataset(data, "train")
    assert all("/train/good/" in p for p in train.paths)


def test_the_held_out_maximum_as_threshold_rejects_none_of_them(tmp_path, capsys):
    data = plain_set(tmp_path / "plain")
    run = tmp_path / "run"
    train_run(Config.for_method("meandiff", data=str(data), size=32), run, progress=False)
    capsys.readouterr()
    assert main(["threshold", "--run", str(run), "--rule", "normal-quantile", "--value", "1"]) == 0
    said = capsys.readouterr()
    assert "it rejects 0 of the run's" in said.out + said.err


def _turned_set(root, shape):
    """An MVTec-style set whose one defect image is a JPEG with EXIF orientation 6 (shown
    turned a quarter) and whose mask was drawn on the stored pixels."""
    rng = np.random.default_rng(0)
    for split, n in (("train/good", 6), ("test/good", 2)):
        (root / split).mkdir(parents=True)
        for i in range(n):
            a = rng.integers(90, 110, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(a).save(root / split / f"{i:03d}.png")
    (root / "test/spot").mkdir(parents=True)
    (root / "ground_truth/spot").mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(
        root / "test/spot/s1.jpg", exif=exif
    )
    mask = np.zeros(shape, np.uint8)
    mask[2:8, 2:8] = 255
    Image.fromarray(mask).save(root / "ground_truth/spot/s1_mask.png")
    return root


def test_a_defect_image_turned_by_exif_has_its_mask_checked(tmp_path):
    from anomaly.data import AnomalyDataset, DataError

    square = _turned_set(tmp_path / "square", (32, 32))
    with pytest.warns(UserWarning, match=r"s1.jpg \(EXIF orientation 6\).*mask must be drawn"):
        AnomalyDataset(square, "test")
    oblong = _turned_set(tmp_path / "oblong", (32, 48))  # stored 48 wide, shown 32 wide
    with pytest.raises(DataError, match=r"EXIF orientation 6.*the mask fits it as stored"):
        AnomalyDataset(oblong, "test")


def test_a_file_where_predict_writes_its_folder_is_named_and_kept(tmp_path, capsys):
    data = plain_set(tmp_path / "plain")
    run = tmp_path / "run"
    train_run(Config.for_method("meandiff", data=str(data), size=32), run, progress=False)
    (run / "predict").write_text("my notes\n")
    capsys.readouterr()
    assert main(["predict", "--run", str(run), str(data / "stain" / "000.png")]) == 2
    said = capsys.readouterr()
    assert f"{run / 'predict'} is a file where the outputs' folder goes" in said.out + said.err
    assert "Errno" not in said.out + said.err
    assert (run / "predict").read_text() == "my notes\n"


def test_small_things_a_new_user_met(tmp_path, capsys, monkeypatch):
    data = plain_set(tmp_path / "plain")
    run = tmp_path / "run"
    train_run(Config.for_method("meandiff", data=str(data), size=32), run, progress=False)
    score_run(run, overlays=False)
    good = tmp_path / "good-parts"
    good.mkdir()
    with open(run / "scores.csv") as f:
        tested = [r for r in csv.DictReader(f) if r["label"] == "0"]
    for r in tested:  # the run's own test images, copied by path
        (good / f"{r['file']}.png").symlink_to(r["path"])
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    args = ["threshold", "--run", "run", "--rule", "conformal", "--value", "0.2"]
    assert main([*args, "--good-images", "good-parts"]) == 0
    said = capsys.readouterr()
    assert f"{len(tested)} of its {len(tested)} images are test images" in said.err
    # the guarantee names the folder in full: it is read from anywhere
    assert str(good) in (run / "threshold.json").read_text()
    # predict given its own overlays says what they are
    image = str(data / "stain" / "000.png")
    assert main(["predict", "--run", "run", image]) == 0
    capsys.readouterr()
    assert main(["predict", "--run", "run", str(run / "predict")]) == 0
    said = capsys.readouterr()
    assert "that anomaly wrote, not photos of parts" in said.err


def test_auto_says_which_flags_its_candidates_do_not_read(tiny_cookies, tmp_path, capsys):
    from anomaly.detectors.auto import MIN_IMAGES  # noqa: F401  (auto is registered)

    args = ["train", "--data", str(tiny_cookies), "--method", "auto", "--size", "64"]
    extra = ["--coreset-ratio", "0.5", "--backbone", "resnet18", "--seed", "3"]
    assert main([*args, *extra, "--out", str(tmp_path / "auto")]) == 0
    said = capsys.readouterr().err
    line = next(x for x in said.splitlines() if x.startswith("warning: --method auto ignores"))
    assert "--coreset-ratio (its candidates bring their own settings)" in line
    assert "--backbone" in line and "--seed" not in line  # the seed is the run's: it is read
    assert "--size 64: auto's candidates work at up to 448 px" in said  # enlarged, blurred


def test_kmeans_says_it_holds_out_what_its_source_held_out(scored_ae_run, tmp_path, capsys):
    out = str(tmp_path / "km")
    args = ["train", "--method", "kmeans", "--from", str(scored_ae_run), "--out", out]
    assert main([*args, "--val-fraction", "0.3"]) == 0
    said = capsys.readouterr().err
    assert "--val-fraction (it holds out the images its --from run held out)" in said


def test_auto_counts_a_plain_data_sets_images_as_the_layout_splits_them(tmp_path, capsys):
    data = plain_set(tmp_path / "plain", n_good=8, n_defect=1)  # 8 good: 2 tested, 6 train
    args = ["train", "--data", str(data), "--method", "auto", "--out", str(tmp_path / "a")]
    assert main(args) == 2
    said = capsys.readouterr()
    words = said.out + said.err
    assert "Put at least 9 images in good/" in words and "train/good" not in words
    assert not (tmp_path / "a").exists()


def test_benchmark_out_inside_a_data_set_is_refused_before_anything_runs(
    tiny_cookies, tmp_path, capsys
):
    import shutil

    plain = plain_set(tmp_path / "plain")
    mvtec = tmp_path / "cookies"
    shutil.copytree(tiny_cookies, mvtec)
    for data, out in ((plain, plain / "bench"), (mvtec, mvtec / "test" / "bench")):
        args = ["benchmark", "--data", str(data), "--methods", "meandiff", "--out", str(out)]
        assert main(args) == 2
        said = capsys.readouterr()
        assert f"--out {out} is inside the data set {data}" in said.out + said.err
        assert "Traceback" not in said.out + said.err
        assert not out.exists()
    curve = ["benchmark", "--curve", "train-size", "--data", str(plain), "--sizes", "2"]
    assert main([*curve, "--out", str(plain / "curve")]) == 2
    assert not (plain / "curve").exists()


def test_explore_given_a_file_says_it_is_not_a_run_folder(tmp_path):
    from anomaly.explorer.server import voila_command

    note = tmp_path / "notes.txt"
    note.write_text("mine\n")
    with pytest.raises(FileNotFoundError, match="is a file, not a run folder"):
        voila_command([note], 8866)


def test_make_photos_over_a_cookie_set_names_the_other_generator(tiny_cookies, tmp_path, capsys):
    import shutil

    cookies = tmp_path / "cookies"
    shutil.copytree(tiny_cookies, cookies)
    assert main(["make-photos", str(cookies), "--overwrite"]) == 2
    said = capsys.readouterr()
    assert "its manifest.json is another tool's" in said.out + said.err
    assert "no manifest.json" not in said.out + said.err


def test_an_auto_curve_leaves_out_sizes_auto_cannot_fit_and_says_so(tiny_cookies, capsys):
    from anomaly.benchmark_curves import train_size_curve

    with pytest.raises(ValueError, match="--method auto: give --sizes of at least 6"):
        train_size_curve(tiny_cookies, "auto", sizes=[2, 4], smoke=True, progress=False)
    assert "--sizes 2 4: auto needs at least 6 training images a point" in capsys.readouterr().err


def test_kmeans_on_other_data_than_its_encoder_saw_says_so(scored_ae_run, tmp_path, capsys):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(_data_of(scored_ae_run), other)
    args = ["train", "--method", "kmeans", "--from", str(scored_ae_run)]
    assert main([*args, "--data", str(other), "--out", str(tmp_path / "km")]) == 0
    said = capsys.readouterr().err
    assert "k-means clusters its encoder's features of" in said and str(other) in said
    assert main([*args, "--out", str(tmp_path / "km2")]) == 0  # its own data: nothing to say
    assert "which it never saw" not in capsys.readouterr().err


def _data_of(run):
    from anomaly.runs import RunDir

    return RunDir(run).config().data
