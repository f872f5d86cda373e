"""What a walkthrough of bringing one's own photos through the shell found (session 30): the
commands that messages suggest can be copied as they are, with a space in a path."""

from __future__ import annotations

import shlex

import numpy as np
import pytest
from helpers import copy_run, patchknn_export

from anomaly.config import Config
from anomaly.runs import RunDir, RunError
from anomaly.terminal import shell_word


def test_a_suggested_command_quotes_a_path_with_a_space(scored_ae_run, tmp_path):
    run = tmp_path / "my runs" / "line 2"
    copy_run(scored_ae_run, run)
    (run / "scores.csv").unlink()
    with pytest.raises(RunError) as e:
        RunDir(run).scores()
    command = str(e.value).split("`")[1]
    assert shlex.split(command) == ["python", "-m", "anomaly", "score", "--run", str(run)]
    assert shell_word("runs/pk") == "runs/pk"  # a plain path stays as it is


def test_a_flat_folder_of_photos_is_told_where_its_images_go(tmp_path):
    """`train --data` on a folder of photos (a user's first try) only restated the layout."""
    import numpy as np
    from PIL import Image

    from anomaly.data import AnomalyDataset, DataError

    photos = tmp_path / "line photos"
    photos.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(photos / f"p{i}.jpg")
    with pytest.raises(DataError, match=r"It holds 3 images directly.*move the defect-free ones"):
        AnomalyDataset(photos, "train")
    good = tmp_path / "OK parts"
    photos.rename(good)
    with pytest.raises(DataError, match=r"pass the folder above it, " + str(tmp_path)):
        AnomalyDataset(good, "train")


def test_a_photo_turned_by_90_degrees_is_named():
    """A portrait photo without an EXIF orientation, for a run trained on landscape ones (3:4
    against 4:3, under the aspect check's 2x), was rejected with red everywhere, unexplained."""
    from anomaly.data.image_unlike import unlike

    trained = {"colour": [True], "bits": [8], "aspect": [1.33, 1.34], "side": [1500, 1500]}
    kind = {"colour": True, "bits": 8, "side": 1500, "transparent": False}
    said = unlike({**kind, "aspect": 0.75}, trained, 3, 224)
    assert len(said) == 1 and said[0].startswith("portrait") and "turned by 90" in said[0]
    assert unlike({**kind, "aspect": 1.2}, trained, 3, 224) == []  # another crop: not named
    square = {**trained, "aspect": [0.95, 1.3]}  # some training images near square: no rule
    assert unlike({**kind, "aspect": 0.75}, square, 3, 224) == []
    assert (
        "landscape"
        in unlike({**kind, "aspect": 1.33}, {**trained, "aspect": [0.75, 0.8]}, 3, 224)[0]
    )


def test_far_above_names_the_scores_far_out_of_the_rest():
    from anomaly.decision import far_above, far_above_words

    rng = np.random.default_rng(0)
    good = rng.normal(6.4, 0.2, 20)
    scores = np.r_[good, 16.7, 18.6]
    assert list(far_above(scores)) == [21, 20]  # highest first
    words = far_above_words([f"p{i}.jpg" for i in range(22)], scores)
    assert words.startswith("2 of its 22 images") and "p21.jpg (18.6)" in words
    assert far_above_words([f"p{i}" for i in range(20)], good) is None
    assert len(far_above([1.0, 1.0, 50.0])) == 0  # too few for quartiles


def test_threshold_on_good_images_names_a_defect_among_them(tiny_cookies, tmp_path):
    """A folder of good images with two defects in it set the threshold at the defects' level
    ("catches 2 of 6 defective") without a word."""
    import shutil

    from anomaly.calibration import set_threshold
    from anomaly.data import make_cookies
    from anomaly.pipeline import train_run

    run = tmp_path / "pk"
    config = Config.for_method("patchknn", data=str(tiny_cookies), size=64, device="cpu")
    train_run(config, run, progress=False)
    more = tmp_path / "more"
    make_cookies(more, preset="tiny", seed=5, size=64)
    folder = tmp_path / "line"
    shutil.copytree(more / "train" / "good", folder)
    for p in sorted((more / "test" / "mustard").glob("*.png")):
        shutil.copy(p, folder / f"slipped_{p.name}")
    with pytest.warns(UserWarning, match=r"score far above the others.*slipped_"):
        set_threshold(run, "conformal", 0.2, good_images=folder)


def test_predict_says_when_trains_threshold_rests_on_a_handful(tiny_cookies, tmp_path, capsys):
    """train said its threshold rested on 1 held-out image; predict then gave PASS / REJECT at
    it saying only "no guarantee"."""
    from anomaly.cli import main
    from anomaly.pipeline import train_run

    run = tmp_path / "pk"
    config = Config.for_method("patchknn", data=str(tiny_cookies), size=64, device="cpu")
    train_run(config, run, progress=False)
    image = min((tiny_cookies / "test" / "good").glob("*.png"))
    assert main(["predict", "--run", str(run), "--no-overlays", str(image)]) == 0
    err = capsys.readouterr().err
    assert "held-out" in err and "--good-images" in err


def test_a_folder_of_photos_to_check_beside_good_is_named(tmp_path):
    """A `to check/` folder beside good/ became a defect kind without a word, and `score`
    reported 9/13 defective caught, AUROC 0.615."""
    from PIL import Image

    from anomaly.data import AnomalyDataset
    from anomaly.data.layout_names import unsorted_word
    from anomaly.decision import score_summary

    for kind in ("good", "scratch", "to check"):
        (tmp_path / kind).mkdir()
        for i in range(5):
            Image.fromarray(np.full((8, 8, 3), 30 * i, np.uint8)).save(tmp_path / kind / f"{i}.png")
    with pytest.warns(UserWarning, match=r"to check/ is read as .*predict --run RUN FOLDER"):
        test = AnomalyDataset(tmp_path, "test", size=8)
    assert [unsorted_word(n) for n in ("new_photos", "Unlabelled", "new_scratch", "dent")] == [
        "new",
        "unlabelled",
        None,
        None,
    ]
    summary = score_summary(test.labels, np.arange(len(test)), {}, None, test.defects)
    assert f"({len(test)} images: good 1, scratch 5, to check 5)" in summary


def test_small_slips_of_the_walkthrough():
    from anomaly.metrics import conformal_n_needed
    from anomaly.overlays import _apart

    with pytest.raises(ValueError, match=r"for 5 %, give 0.05"):
        conformal_n_needed(5)
    assert (_apart(8.08512, 8.08498), _apart(8.08498, 8.08512)) == ("8.0851", "8.085")
    assert _apart(29.57, 30.63) == "29.57"


def test_a_models_digest_is_read_in_blocks(tmp_path, monkeypatch):
    """`threshold` hashed model.pt with Path.read_bytes: a link to a 16 GB file took all memory
    and ended in a MemoryError traceback."""
    import hashlib
    from pathlib import Path

    from anomaly.safe_files import sha256_file

    data = b"x" * 3_000_000
    (tmp_path / "model.pt").write_bytes(data)

    def whole(self):
        raise MemoryError("read whole")

    monkeypatch.setattr(Path, "read_bytes", whole)
    assert sha256_file(tmp_path / "model.pt") == hashlib.sha256(data).hexdigest()


def _npz_of_headers(path, arrays: dict) -> None:
    """An .npz whose arrays declare `arrays`' {name: (shape, dtype)} and hold no data."""
    import io
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, (shape, dtype) in arrays.items():
            head = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                head, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
            )
            z.writestr(f"{name}.npy", head.getvalue())  # magic and header, no data


def test_predictions_declaring_more_than_memory_are_refused_unread(tmp_path):
    """A 0.8 MB predictions.npz of deflated zeros declared 8,000 maps (2.9 GB once read), and
    one of 8 MB 80,000: the explorer read them whole before any check."""
    from anomaly.detectors.base import Predictions

    n = 10**6
    path = tmp_path / "predictions.npz"
    arrays = {
        "labels": ((n,), "i8"),
        "scores": ((n,), "f4"),
        "maps": ((n, 224, 224), "f2"),
        "masks": ((0,), "u1"),
        "paths": ((n,), "<U8"),
    }
    _npz_of_headers(path, arrays)
    with pytest.raises(
        ValueError, match=r"reading it needs \d+\.\d GiB of memory, and .* available"
    ):
        Predictions.load(path)
    _npz_of_headers(path, {**arrays, "maps": ((n - 1, 224, 224), "f2")})
    with pytest.raises(ValueError, match=r"not one score, label and map for each image"):
        Predictions.load(path)


@pytest.mark.parametrize("text", ["[" * 3000 + "]" * 3000, '{"size": ' + "9" * 5000 + "}"])
def test_a_record_nested_too_deep_or_too_long_a_number_is_named(
    scored_ae_run, tiny_cookies, tmp_path, capsys, text
):
    """A 4 KB config.json of [[[...]]] ended score, predict, threshold and export in a
    RecursionError traceback; a 5,000-digit number in one said only "Exceeds the limit (4300
    digits) for integer string conversion", naming no file."""
    from anomaly.cli import main

    run = copy_run(scored_ae_run, tmp_path / "run")
    image = str(min((tiny_cookies / "test" / "good").glob("*.png")))
    for name in ("config.json", "threshold.json", "split.json"):
        saved = (run / name).read_text()
        (run / name).write_text(text)
        code = main(["predict", "--run", str(run), "--no-overlays", image])
        assert f"{run / name} is not valid JSON" in capsys.readouterr().err
        assert code == (0 if name == "split.json" else 2)  # split.json: said, and scored
        (run / name).write_text(saved)


def test_a_damaged_record_of_the_training_images_is_said(tmp_path):
    """Values such as [1, 2] or {"colour": "x"} in split.json's images switched the checks of
    unlike images off without a word."""
    import io

    from PIL import Image

    from anomaly.data.image_unlike import warn_unlike

    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    for record in ([1, 2], {"colour": "x", "side": [1e308, -1]}):
        out = io.StringIO()
        warn_unlike([path], record, 3, 64, stream=out)
        assert "does not read" in out.getvalue()


def test_a_run_that_cannot_be_written_is_named_so(tiny_cookies, tmp_path, monkeypatch, capsys):
    """A read-only run: score and threshold said "could not take the lock RO/.lock; delete it",
    of a lock that was not there; export printed a raw "[Errno 13] Permission denied"."""
    import errno
    import os
    import tempfile

    from anomaly.cli import main
    from anomaly.pipeline import train_run

    run = tmp_path / "run"
    config = Config.for_method("patchknn", data=str(tiny_cookies), size=64, device="cpu")
    train_run(config, run, progress=False)
    real_open, real_mkstemp = os.open, tempfile.mkstemp

    def refused(path, *args, **kwargs):
        if str(path).startswith(str(run)) and args and args[0] & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    def no_temporary(*args, dir=None, **kwargs):
        if str(dir).startswith(str(run)):
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    real_access = os.access
    monkeypatch.setattr(os, "open", refused)
    monkeypatch.setattr(os, "access", lambda p, m: p != run and real_access(p, m))
    monkeypatch.setattr(tempfile, "mkstemp", no_temporary)
    assert main(["threshold", "--run", str(run), "--rule", "manual", "--value", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{run} cannot be written (Permission denied)" in err and "delete it" not in err
    assert main(["export", "--run", str(run)]) == 2
    err = capsys.readouterr().err
    # (since session 37 export takes the run's lock, which says so first, with export's way out)
    assert f"{run} cannot be written (Permission denied), and export writes" in err
    assert "export --out FILE need no write to the run" in err


def test_threshold_says_why_the_held_out_scores_were_not_counted(scored_ae_run, tmp_path, capsys):
    """With another run's model.pt put in, threshold --rule manual said only "the run has no
    held-out scores to count against", hiding that val_scores.json is another model's."""
    from anomaly.cli import main

    run = copy_run(scored_ae_run, tmp_path / "run")
    (run / "model.pt").write_bytes((run / "model.pt").read_bytes() + b"\0")
    assert main(["threshold", "--run", str(run), "--rule", "manual", "--value", "1"]) == 0
    out = capsys.readouterr().out
    assert "no held-out scores of its model.pt" in out and "scored by another model" in out


def test_an_edited_quantile_threshold_is_named(scored_ae_run, tiny_cookies, tmp_path, capsys):
    """threshold.json's value edited to 1e300, rule normal_quantile kept: predict printed
    "threshold 1e+300 (normal_quantile)" and passed every part."""
    import json

    from anomaly.cli import main

    run = copy_run(scored_ae_run, tmp_path / "run")
    assert RunDir(run).threshold().params.get("scores_disagree") is None  # as train set it
    saved = json.loads((run / "threshold.json").read_text())
    (run / "threshold.json").write_text(json.dumps({**saved, "value": 1e300}))
    image = str(min((tiny_cookies / "test" / "crack").glob("*.png")))
    assert main(["predict", "--run", str(run), "--no-overlays", image]) == 0
    err = capsys.readouterr().err
    assert "its value is not the quantile q it records of the scores it was set on" in err


def test_a_history_that_is_a_pipe_or_not_numbers_is_named(scored_ae_run, tmp_path):
    """read_history (the notebooks' loss curves) waited for ever on a history.csv that is a
    pipe, and a row of text raised a bare "could not convert string to float"."""
    import os

    from anomaly.runs import read_history

    run = copy_run(scored_ae_run, tmp_path / "run")
    assert read_history(run)[0]["epoch"] == 1
    (run / "history.csv").write_text("epoch,train_loss\n1,x\n")
    with pytest.raises(RunError, match=r"history.csv holds a row that is not numbers"):
        read_history(run)
    (run / "history.csv").unlink()
    os.mkfifo(run / "history.csv")
    with pytest.raises(RunError, match=r"history.csv is not a regular file"):
        read_history(run)


def test_a_path_from_split_json_cannot_forge_a_line(scored_ae_run, tmp_path, capsys):
    """A new line in a path of split.json reached the terminal raw in train --like's refusal,
    so a run from someone else could add a forged line under "error: ..."."""
    import json

    from anomaly.cli import main

    run = copy_run(scored_ae_run, tmp_path / "run")
    split = json.loads((run / "split.json").read_text())
    split["train"][0] = split["train"][0] + "\ntrained: all good"
    (run / "split.json").write_text(json.dumps(split))
    assert main(["train", "--like", str(run), "--out", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err
    assert "\\ntrained: all good" in err and "\ntrained: all good" not in err


def test_a_file_cut_short_is_told_to_be_copied_again(tmp_path):
    """A truncated JPEG was told "Re-save it as PNG" (it cannot be opened to be re-saved), and
    under predict --onnx to be "a PNG, JPEG, ... file", which it is."""
    import io

    from PIL import Image

    from anomaly.data import DataError
    from anomaly.data.folder import read_image
    from anomaly.onnx_predict import ExportError, read_file

    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        out, "JPEG"
    )
    path = tmp_path / "cut.JPG"
    path.write_bytes(out.getvalue()[:600])
    with pytest.raises(DataError, match=r"cut short or damaged .* copy it again"):
        read_image(path)
    with pytest.raises(ExportError, match=r"; copy it again$"):
        read_file(path, 64)


def test_a_cache_that_cannot_be_written_is_worked_on_without(tiny_cookies, tmp_path, monkeypatch):
    """The refusal of a folder that cannot be written escaped the ONNX cache's "work on without
    it", so predict failed where the user's cache folder was read-only (review, session 30)."""
    import errno
    import tempfile

    from anomaly.cli import main
    from anomaly.pipeline import train_run

    run = tmp_path / "run"
    config = Config.for_method("patchknn", data=str(tiny_cookies), size=64, device="cpu")
    train_run(config, run, progress=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("ANOMALY_CACHE", str(cache))
    real_mkstemp = tempfile.mkstemp

    def no_temporary(*args, dir=None, **kwargs):
        if str(dir).startswith(str(cache)):
            raise PermissionError(errno.EROFS, "Read-only file system", str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", no_temporary)
    image = str(min((tiny_cookies / "test" / "good").glob("*.png")))
    assert main(["predict", "--run", str(run), "--no-overlays", image]) == 0


def test_a_metrics_file_nested_too_deep_is_not_score_s(tmp_path):
    """written_by_score read metrics.json with json.loads: a 100k-deep [[...]] raised
    RecursionError out of score --out (review, session 30)."""
    (tmp_path / "metrics.json").write_text("[" * 100_000 + "]" * 100_000)
    assert RunDir(tmp_path).written_by_score("metrics.json") is False


def test_threshold_without_a_rule_says_the_saved_one(scored_ae_run, tmp_path, capsys):
    """`threshold --run R` could not show the threshold in place (--rule was required)."""
    from anomaly.cli import main

    run = copy_run(scored_ae_run, tmp_path / "run")
    before = (run / "threshold.json").read_bytes()
    assert main(["threshold", "--run", str(run)]) == 0
    out = capsys.readouterr().out
    from anomaly.threshold_text import threshold_words

    assert out.startswith(threshold_words(RunDir(run).threshold())) and "saved in" in out
    assert "held-out good image" in out and (run / "threshold.json").read_bytes() == before
    assert main(["threshold", "--run", str(run), "--value", "1"]) == 2
    assert "give one" in capsys.readouterr().err
    (run / "threshold.json").unlink()
    assert main(["threshold", "--run", str(run)]) == 2
    assert "has no threshold saved" in capsys.readouterr().err


def test_every_unreadable_training_image_is_named_at_once(tmp_path):
    """train stopped at the first unreadable good image: a folder of several damaged copies
    took as many runs to find (threshold --good-images named all of them)."""
    from PIL import Image

    from anomaly.data import AnomalyDataset, DataError

    good = tmp_path / "set" / "good"
    good.mkdir(parents=True)
    for i in range(6):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(good / f"{i}.png")
    for name in ("a bad.png", "b.png", "c.png"):
        (good / name).write_bytes(b"not an image")
    with pytest.raises(
        DataError, match=r"a bad.png is not a readable image.*Not usable either: .*b.png"
    ):
        AnomalyDataset(tmp_path / "set", "train")


def test_predict_recursive_scores_the_folders_below(tiny_cookies, tmp_path, capsys):
    """predict had no --recursive: photos kept in folders by day were skipped, with a hint."""
    import shutil

    from anomaly.cli import main
    from anomaly.pipeline import train_run

    run = tmp_path / "run"
    config = Config.for_method("patchknn", data=str(tiny_cookies), size=64, device="cpu")
    train_run(config, run, progress=False)
    tree = tmp_path / "to check"
    good, crack = (
        sorted((tiny_cookies / "test" / "good").glob("*.png")),
        sorted((tiny_cookies / "test" / "crack").glob("*.png")),
    )
    for folder, files in (("", good[:1]), ("monday", good[1:2]), ("monday/am", crack[:1])):
        (tree / folder).mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy(f, tree / folder / f.name)
    (tree / ".hidden").mkdir()
    shutil.copy(good[0], tree / ".hidden" / "x.png")
    (tree / "monday" / "notes.txt").write_text("not an image")
    assert main(["predict", "--run", str(run), "--no-overlays", str(tree)]) == 0
    flat = capsys.readouterr()
    assert len(flat.out.splitlines()) == 1 and "add --recursive" in flat.err
    assert main(["predict", "--run", str(run), "--no-overlays", "--recursive", str(tree)]) == 0
    out, err = capsys.readouterr()
    rows = [line.split("\t")[0] for line in out.splitlines()]
    assert rows == [
        str(tree / good[0].name),
        str(tree / "monday" / good[1].name),
        str(tree / "monday" / "am" / crack[0].name),
    ]
    assert "notes.txt" in err and "add --recursive" not in err


def test_predict_onnx_takes_one_path_a_generator_and_names_a_missing_file(tiny_cookies, tmp_path):
    """A deployment walkthrough: one path was read letter by letter ("/ is a folder..."), a
    generator was used up by the check of unlike images (no scores, no error), and a missing
    file was told to be "a PNG, JPEG, ... file"."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from anomaly.onnx_predict import ExportError, predict_onnx

    path = patchknn_export(tiny_cookies, tmp_path / "run", tmp_path / "m.onnx")
    files = sorted((tiny_cookies / "test" / "good").glob("*.png"))[:2]
    one, _ = predict_onnx(path, str(files[0]))
    both, _ = predict_onnx(path, (f for f in files))
    assert one.shape == (1,) and both.shape == (2,) and abs(both[0] - one[0]) < 1e-6
    with pytest.raises(ExportError, match=r"nope.png: no such file; check its path"):
        predict_onnx(path, [tmp_path / "nope.png"])
