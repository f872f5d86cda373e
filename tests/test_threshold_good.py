"""`threshold --good-images FOLDER`: the normal-score rules set on a folder of good images.

The run is the session's tiny auto-encoder (`scored_ae_run`); the folder holds the tiny cookie
set's good test images (never trained on), copied so a test may add or damage files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import copy_run, good_test_folder
from PIL import Image

from anomaly.calibration import set_threshold
from anomaly.cli import main
from anomaly.metrics import conformal_n_needed
from anomaly.predict import predict_images
from anomaly.runs import RunDir, RunError
from anomaly.threshold_text import calibration_words


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def run(scored_ae_run, tmp_path):
    return copy_run(scored_ae_run, tmp_path / "run")


@pytest.fixture
def good(tiny_cookies, tmp_path):
    """A flat folder of the 4 good test cookies (the run never trained on them)."""
    return good_test_folder(tiny_cookies, tmp_path / "line-good")


def _scores_one_by_one(run: Path, folder: Path) -> np.ndarray:
    """The folder's scores by `predict` (its own decoding): an independent scoring path."""
    results, _ = predict_images(run, [folder], overlay_dir=run.parent / "overlays-check")
    return np.array([r["score"] for r in results])


def test_the_quantile_is_taken_of_the_folders_scores(run, good):
    held_out = np.array(RunDir(run).val_scores()["scores"])
    t = set_threshold(run, "normal-quantile", 0.5, good_images=good)
    scores = _scores_one_by_one(run, good)
    assert t.value == pytest.approx(np.quantile(scores, 0.5), rel=1e-5)
    assert t.value != pytest.approx(np.quantile(held_out, 0.5), rel=1e-3)  # not the held-out
    assert RunDir(run).threshold().value == t.value  # saved: predict uses it


def test_the_conformal_threshold_sits_just_above_the_kth_folder_score(run, good):
    alpha = 0.25
    t = set_threshold(run, "conformal", alpha, good_images=good)
    scores = np.sort(_scores_one_by_one(run, good))
    k = int(np.ceil((len(scores) + 1) * (1 - alpha)))
    assert t.params["n"] == len(scores) == 4 and t.params["rank"] == k
    assert t.value == pytest.approx(scores[k - 1], rel=1e-5)
    assert str(good) in t.params["guarantee"] and "held-out" not in t.params["guarantee"]


def test_the_folder_is_recorded_in_the_run(run, good):
    rd = RunDir(run)
    t = set_threshold(run, "conformal", 0.25, good_images=good)
    record = rd.threshold().params["calibration"]
    assert record["source"] == "folder" and record["n"] == 4
    assert record["folder"] == str(good) and record["folder_resolved"] == str(good.resolve())
    saved = rd.calibration()
    assert [Path(p).name for p in saved["paths"]] == sorted(f.name for f in good.iterdir())
    assert np.sort(saved["scores"])[t.params["rank"] - 1] < t.value
    assert saved["images_sha256"] == record["images_sha256"]
    # another image, or the same names with other bytes, is another calibration set
    first = min(good.iterdir())
    first.write_bytes(sorted(good.iterdir())[1].read_bytes())
    set_threshold(run, "conformal", 0.25, good_images=good)
    assert rd.threshold().params["calibration"]["images_sha256"] != record["images_sha256"]
    # without the flag the rule reads the held-out scores again, and says so
    t = set_threshold(run, "normal-quantile", 1.0)
    assert t.params["calibration"] == {"source": "held-out", "n": len(rd.val_scores()["scores"])}


def test_the_cli_prints_the_folder_the_guarantee_and_its_condition(run, good, capsys):
    code, out, err = run_cli(
        capsys, "threshold", "--run", run, "--rule", "conformal", "--value", "0.25",
        "--good-images", good,
    )  # fmt: skip
    assert code == 0, err
    assert f"exchangeable with the 4 good images in {good}" in out  # the guarantee
    assert f"set on 4 good images in {good}" in out and "calibration_scores.json" in out
    assert f"holds only if the good parts you will check are like the images in {good}" in out
    image = min(good.iterdir())
    code, _, err = run_cli(capsys, "predict", "--run", run, image)
    assert code == 0 and f"good images in {good}" in err  # predict says it too
    code, out, _ = run_cli(capsys, "threshold", "--run", run, "--rule", "conformal", "--value", 0.5)
    assert code == 0 and "held out from training" in out and "--good-images FOLDER" in out


def test_rules_that_read_no_good_scores_refuse_the_folder(run, good, capsys):
    for rule, value in (("manual", "1.0"), ("f1", None)):
        argv = ["threshold", "--run", run, "--rule", rule, "--good-images", good]
        code, _, err = run_cli(capsys, *argv, *(["--value", value] if value else []))
        assert code == 2 and f"--rule {rule} reads no good-image scores" in err
        assert "drop --good-images" in err


def _refused(capsys, run: Path, folder, value: str = "0.25") -> str:
    before = (run / "threshold.json").read_bytes()
    code, out, err = run_cli(
        capsys, "threshold", "--run", run, "--rule", "conformal", "--value", value,
        "--good-images", folder,
    )  # fmt: skip
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err + out
    assert (run / "threshold.json").read_bytes() == before  # nothing saved
    assert not (run / RunDir.CALIBRATION).exists()
    return err


def test_bad_folders_are_refused_by_name_with_the_fix(run, good, tmp_path, capsys):
    err = _refused(capsys, run, tmp_path / "nowhere")
    assert "nowhere: folder not found" in err
    err = _refused(capsys, run, min(good.iterdir()))
    assert "this is a file; pass the folder" in err
    empty = tmp_path / "empty"
    (empty / "good").mkdir(parents=True)
    shutil.copy(min(good.iterdir()), empty / "good")
    err = _refused(capsys, run, empty)
    assert f"{empty}: no images in this folder" in err and "good/" in err  # points inside


def test_a_corrupt_image_is_named(run, good, capsys):
    (good / "IMG_7.png").write_text("saved wrongly")
    err = _refused(capsys, run, good)
    assert "1 of its 5 images cannot be read" in err and "IMG_7.png" in err
    assert "re-save" in err.lower()


def test_too_few_images_for_alpha_says_how_many_are_needed(run, good, capsys):
    need = conformal_n_needed(0.1)  # 9; the folder holds 4
    err = _refused(capsys, run, good, value="0.1")
    assert f"needs at least {need} good images" in err and "holds 4" in err
    assert f"Add {need - 4} or more good images" in err and "--value 0.2 or more" in err


def test_training_images_are_refused(run, good, tiny_cookies, capsys):
    shutil.copy(min((tiny_cookies / "train" / "good").iterdir()), good / "copy.png")
    err = _refused(capsys, run, good)
    assert "1 of its 5 images are training images" in err and "copy.png" in err


def test_words_for_a_rule_without_good_scores_are_empty(run):
    assert calibration_words(set_threshold(run, "manual", 1.0)) == ""
    text = json.loads((run / "threshold.json").read_text())
    assert "calibration" not in text["params"]


def test_the_explorer_names_the_images_a_threshold_was_set_on():
    from anomaly.explorer.text import describe_rule, rule_html
    from anomaly.metrics import Threshold

    counts = {"false_reject_rate": 0.04}
    held = Threshold(2.0, "conformal", {"alpha": 0.05, "n": 24, "guarantee": "<= 5%"})
    assert "24 held-out good images" in describe_rule(held)
    folder = Threshold(
        2.0,
        "conformal",
        {
            "alpha": 0.05,
            "n": 24,
            "guarantee": "<= 5%",
            "calibration": {"source": "folder", "folder": "line/good", "n": 24},
        },
    )
    assert "24 good images in line/good" in describe_rule(folder)
    assert "held-out" not in rule_html(folder, 2.0, counts, 2.0)
    assert "exchangeable with the good images in line/good" in rule_html(folder, 2.0, counts, 2.0)


def test_a_threshold_stopped_before_threshold_json_keeps_the_earlier_guarantee(
    run, good, tmp_path, monkeypatch
):
    """`threshold --good-images B` killed after calibration_scores.json and before
    threshold.json: the earlier threshold (set on A) holds A's scores itself, so its guarantee
    still stands on them rather than being checked against B's."""
    rd = RunDir(run)
    first = set_threshold(run, "conformal", 0.25, good_images=good)
    other = tmp_path / "other-good"
    shutil.copytree(good, other)
    with Image.open(min(good.iterdir())) as im:  # B: five images, A four (a copy: one)
        im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(other / "extra.png")

    def killed(self, threshold):
        raise KeyboardInterrupt

    monkeypatch.setattr(RunDir, "save_threshold", killed)
    with pytest.raises(KeyboardInterrupt):
        set_threshold(run, "conformal", 0.25, good_images=other)
    monkeypatch.undo()
    assert rd.calibration()["n"] == 5  # B's scores were written
    kept = rd.threshold()
    assert kept.value == first.value and "scores_disagree" not in kept.params
    assert calibration_words(kept) == calibration_words(first)  # the guarantee, and its condition
    assert len(kept.params["calibration"]["scores"]) == 4


def test_a_threshold_whose_own_scores_were_edited_claims_no_guarantee(run, good):
    set_threshold(run, "conformal", 0.25, good_images=good)
    path = RunDir(run).file(RunDir.THRESHOLD)
    saved = json.loads(path.read_text())
    record = saved["params"]["calibration"]
    record["scores"] = [s * 0.5 for s in record["scores"]]
    path.write_text(json.dumps(saved))
    assert "scores_disagree" in RunDir(run).threshold().params
    record["scores"] = ["1.0"]
    path.write_text(json.dumps(saved))
    with pytest.raises(RunError, match="calibration.scores .*a non-empty list of finite numbers"):
        RunDir(run).threshold()


@pytest.mark.parametrize("kept_bytes", [2**29, 0])  # kept from the check, or read again
def test_each_image_of_the_folder_is_decoded_once_when_it_fits(run, good, monkeypatch, kept_bytes):
    """The folder was decoded twice, once to name every unreadable image and once to score it:
    a folder of camera JPEGs took twice as long as it needs. Over `KEPT_BYTES` the images are
    read again rather than held; the threshold is the same both ways."""
    import collections

    from anomaly import calibration
    from anomaly.data import reading

    reads = collections.Counter()
    real = reading.read_image

    def counted(path, *args, **kwargs):
        reads[Path(path).name] += 1
        return real(path, *args, **kwargs)

    monkeypatch.setattr(reading, "read_image", counted)
    monkeypatch.setattr(calibration, "KEPT_BYTES", kept_bytes)
    t = set_threshold(run, "normal-quantile", 0.5, good_images=good)
    names = {f.name for f in good.iterdir()}
    assert set(reads) == names and set(reads.values()) == {1 if kept_bytes else 2}
    assert t.value == pytest.approx(np.quantile(_scores_one_by_one(run, good), 0.5), rel=1e-5)
