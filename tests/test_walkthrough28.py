"""Session 28's walkthroughs (a new user's own photos; run folders from someone else): each fix
with the check that failed before it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from helpers import plain_set, tiny_config
from PIL import Image

from anomaly.cli import main
from anomaly.config import Config
from anomaly.pipeline import _datasets, score_run, train_run
from anomaly.runs import RunDir


def _tested_good(folder):
    with open(folder / "scores.csv") as f:
        return sorted(r["file"] for r in csv.DictReader(f) if r["label"] == "0")


def _learned(run):
    split = json.loads((run / "split.json").read_text())
    return {p.rsplit("/", 1)[-1][:-4] for p in split["train"] + split["val"]}


def test_another_plain_set_is_tested_whole(tmp_path):
    """Scored on another plain-layout set (none of whose images the run learned), only the
    fifth of its good images the holdout rule picks were tested, without a word."""
    run = tmp_path / "run"
    train_run(Config.for_method("meandiff", data=str(plain_set(tmp_path / "a")), size=32), run)
    other = plain_set(tmp_path / "b", seed=1)  # the same file names, other images
    score_run(run, data=str(other), overlays=False)
    assert _tested_good(run / "scored" / "b") == [f"{i:03d}" for i in range(20)]


def test_good_images_added_since_leave_the_runs_split_readable(tmp_path):
    """A good image added to a plain set moved the fifths, so --resume found the run's own
    training images "not in" the data set and refused."""
    data = plain_set(tmp_path / "plain")
    run = tmp_path / "run"
    config = Config.for_method("meandiff", data=str(data), size=32)
    train_run(config, run)
    Image.fromarray(np.full((32, 32, 3), 100, np.uint8)).save(data / "good" / "0000_new.png")
    split = RunDir(run).split()
    train, val = _datasets(config, split)
    assert list(train.paths) == split["train"] and list(val.paths) == split["val"]


def test_kmeans_learns_only_what_its_source_learned_when_good_images_were_added(tmp_path):
    """kmeans --from split good/ into fifths anew: with a good image added since its source
    trained, it learned some of the source's test images and tested some its encoder learned."""
    data = plain_set(tmp_path / "plain")
    source = tmp_path / "ae"
    train_run(tiny_config(data, "ae", size=32, channels=3, epochs=1), source)
    Image.fromarray(np.full((32, 32, 3), 100, np.uint8)).save(data / "good" / "0000_new.png")
    km = tmp_path / "km"
    train_run(
        Config.for_method("kmeans", source_run=str(source), data=str(data), size=32, channels=3),
        km,
    )
    assert _learned(km) == _learned(source)
    score_run(km, overlays=False)
    assert not set(_tested_good(km)) & _learned(source)
    assert "0000_new" in _tested_good(km)


def test_a_folder_of_the_users_with_a_runs_config_json_is_not_trained_into(tmp_path, capsys):
    """A folder holding a run's config.json beside the user's own files was taken for a run:
    train removed the user's scores.csv and metrics.json as "outputs of the earlier model"."""
    run = tmp_path / "run"
    train_run(Config.for_method("meandiff", data=str(plain_set(tmp_path / "a")), size=32), run)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "config.json").write_bytes((run / "config.json").read_bytes())
    mine = {"notes.txt": "mine", "scores.csv": "my,table\n", "metrics.json": '{"mine": 1}'}
    for name, text in mine.items():
        (notes / name).write_text(text)
    flags = ["train", "--data", str(tmp_path / "a"), "--method", "meandiff", "--size", "32"]
    assert main([*flags, "--out", str(notes)]) == 2
    assert "also files no run writes (notes.txt)" in capsys.readouterr().err
    assert {p.name: p.read_text() for p in notes.iterdir() if p.name != "config.json"} == mine


def test_training_again_keeps_files_of_scores_names_that_score_did_not_write(tmp_path, capsys):
    """Trained again (its model.pt deleted), a run lost a scores.csv and metrics.json of the
    user's (not score's) as "outputs of the earlier model"; score's own are still removed."""
    data = plain_set(tmp_path / "a")
    run = tmp_path / "run"
    config = Config.for_method("meandiff", data=str(data), size=32)
    train_run(config, run)
    score_run(run, overlays=False)
    (run / "model.pt").unlink()
    (run / "scores.csv").write_text("my,table\n")
    train_run(config, run)
    said = capsys.readouterr().out
    assert (run / "scores.csv").read_text() == "my,table\n"
    assert not (run / "metrics.json").exists() and not (run / "predictions.npz").exists()
    assert "metrics.json" in said and "but not scores.csv (score did not write it)" in said


def test_score_never_writes_an_overlay_over_a_users_file_of_its_second_name(tmp_path):
    """An overlay whose name was taken by a user's file fell back to `<stem>_<index>.png`
    without looking: a user's file of that name was replaced."""
    run = tmp_path / "run"
    train_run(Config.for_method("meandiff", data=str(plain_set(tmp_path / "a")), size=32), run)
    score_run(run)
    first = next(iter(json.loads((run / "overlays" / ".written.json").read_text())))
    stem = first[:-4]
    (run / "overlays" / first).write_text("edited")
    (run / "overlays" / f"{stem}_0.png").write_text("my notes")
    score_run(run)
    assert (run / "overlays" / first).read_text() == "edited"
    assert (run / "overlays" / f"{stem}_0.png").read_text() == "my notes"
    assert f"{stem}_0_2.png" in json.loads((run / "overlays" / ".written.json").read_text())


def test_predict_and_export_never_write_into_the_data_set(tmp_path, capsys):
    """`predict --out` inside the run's plain data set (or any MVTec AD one) wrote an overlay
    that the next `score` read as a good image, or as a defect kind of its own."""
    data = plain_set(tmp_path / "a")
    run = tmp_path / "run"
    train_run(Config.for_method("patchknn", data=str(data), size=32), run)
    image = str(data / "stain" / "000.png")
    for out in (data / "good", data / "overlays"):
        assert main(["predict", "--run", str(run), "--out", str(out), image]) == 2
        assert "inside the data set" in capsys.readouterr().err
    assert not (data / "overlays").exists()
    assert main(["export", "--run", str(run)]) == 0
    onnx = ["predict", "--onnx", str(run / "model.onnx"), "--out", str(data / "x"), image]
    assert main(onnx) == 2 and "inside the data set" in capsys.readouterr().err
    # an exported file is never read as an image, but its overlays' folder beside it would be
    assert main(["export", "--run", str(run), "--out", str(data / "model.onnx")]) == 0
    assert main(["predict", "--onnx", str(data / "model.onnx"), image]) == 2
    assert "model_predict is inside the data set" in capsys.readouterr().err
    assert sorted(p.name for p in data.iterdir()) == ["good", "model.onnx", "stain"]


def test_a_pipe_for_model_pt_or_a_path_outside_in_split_json_is_never_read(
    tmp_path, capsys, monkeypatch
):
    """A FIFO put in place of model.pt made predict and score wait forever; a split.json naming
    a file outside the data set (/proc/kmsg, endless) made `score --data OTHER` read it whole to
    hash it."""
    import os

    from anomaly import build

    data = plain_set(tmp_path / "a")
    run = tmp_path / "run"
    train_run(Config.for_method("meandiff", data=str(data), size=32), run)
    split = json.loads((run / "split.json").read_text())
    (tmp_path / "outside.png").write_bytes(b"not the user's to read")
    split["train"][0] = str(tmp_path / "outside.png")  # beside b/ too: ../outside.png
    (run / "split.json").write_text(json.dumps(split))
    other = plain_set(tmp_path / "b", seed=1)
    hashed = []
    real = build.sha256_file  # `build.trained_split` hashes them (`pipeline` before)
    monkeypatch.setattr(build, "sha256_file", lambda p: hashed.append(p) or real(p))
    score_run(run, data=str(other), overlays=False)
    assert hashed and all(Path(p).parent == other / "good" for p in hashed)
    (run / "model.pt").unlink()
    os.mkfifo(run / "model.pt")
    assert main(["predict", "--run", str(run), str(data / "stain" / "000.png")]) == 2
    assert "model.pt is not a file (a pipe, a device or a folder)" in capsys.readouterr().err


def test_ctrl_c_while_torch_saves_stays_an_interruption(tmp_path):
    """Ctrl-C while torch.save wrote last.pt came out as torch's RuntimeError ("unexpected
    pos"): a traceback instead of "interrupted after epoch N; continue with --resume"."""
    import pytest
    import torch

    from anomaly.safe_files import _atomic

    class Stopped:  # the file torch.save writes to, stopped by Ctrl-C on its fifth write
        def __init__(self, f):
            self.f, self.calls = f, 0

        def write(self, data):
            self.calls += 1
            if self.calls == 5:
                raise KeyboardInterrupt
            return self.f.write(data)

        def flush(self):
            self.f.flush()

    state = {"a": torch.zeros(100_000), "b": torch.ones(100_000)}
    with pytest.raises(KeyboardInterrupt):
        _atomic(tmp_path / "last.pt", lambda f: torch.save(state, Stopped(f)))
    assert list(tmp_path.iterdir()) == []  # nothing half-written left


def test_one_good_image_to_train_on_is_said_in_the_layouts_words(tmp_path):
    """With two good images in the plain layout, train spoke of a train/good folder there is
    not, and called the one training image's score that of held-out images."""
    import pytest

    data = plain_set(tmp_path / "a", n_good=2)
    config = Config.for_method("meandiff", data=str(data), size=32)
    with pytest.warns(UserWarning) as said:
        train_run(config, tmp_path / "run")
    text = " ".join(str(w.message) for w in said)
    assert "of good/, the test's share left one image to train on" in text
    assert "train/good" not in text
    # meandiff reproduces its one image: a degenerate threshold, named as the training image's
    assert "its one training image (none held out) scores exactly" in text


def test_a_size_a_network_cannot_take_names_the_sizes_near_it_that_it_can(tmp_path, capsys):
    """`--size 30` for unet said "use a multiple of 16 of at least 64", though 24, 32 and 40
    train: the sizes offered are the ones a probe of the network takes."""
    data = plain_set(tmp_path / "a")
    flags = ["train", "--data", str(data), "--method", "unet", "--epochs", "1"]
    assert main([*flags, "--size", "30", "--out", str(tmp_path / "r")]) == 2
    assert "use 24 or 32 (its default is 128)" in capsys.readouterr().err
    assert main([*flags, "--size", "24", "--out", str(tmp_path / "r24")]) == 0
    # above 128 px the multiple is found with small probes (a refusal of 1001 px took 39 s)
    assert main([*flags, "--size", "1001", "--out", str(tmp_path / "r")]) == 2
    assert "use 1000 or 1008 (its default is 128)" in capsys.readouterr().err


def test_a_run_with_the_users_notes_and_reports_is_trained_again(tmp_path, capsys):
    """Session 28's review: the refusal of folders with files no run writes also refused a run
    that train made, holding the explorer's report.html, predict --onnx's model_predict/ or the
    user's README.txt, once its model.pt was deleted to train again."""
    data = plain_set(tmp_path / "a")
    run = tmp_path / "run"
    config = Config.for_method("meandiff", data=str(data), size=32)
    train_run(config, run)
    (run / "README.txt").write_text("my notes")
    (run / "report.html").write_text("<html></html>")
    (run / "model.pt").unlink()
    train_run(config, run)
    assert (run / "README.txt").read_text() == "my notes" and (run / "model.pt").is_file()


def test_kmeans_on_other_plain_data_with_the_same_names_splits_it_anew(tmp_path):
    """Session 28's review: kmeans --from a run of another plain set whose images had the same
    file names learned only the names its source had learned (9 of 18, the rest tested)."""
    source = tmp_path / "ae"
    train_run(tiny_config(plain_set(tmp_path / "a"), "ae", size=32, channels=3, epochs=1), source)
    other = plain_set(tmp_path / "b", n_good=25, seed=1)  # 000.png ... 024.png, other images
    km = tmp_path / "km"
    config = Config.for_method("kmeans", source_run=str(source), data=str(other), size=32)
    train_run(config.replace(channels=3), km)
    assert len(_learned(km)) == 20  # four fifths of the 25, as for any new plain set
    split = json.loads((km / "split.json").read_text())
    held = {p.rsplit("/", 1)[-1] for p in split["val"]}
    source_held = {
        p.rsplit("/", 1)[-1] for p in json.loads((source / "split.json").read_text())["val"]
    }
    assert len(held) == 2 and held != source_held  # split by its seed, not by the source's names


def test_a_users_file_in_a_benchmark_out_folder_is_never_taken_for_the_benchmarks(tmp_path):
    """A benchmark folder's mark listed every file at its top when sealed, a user's too, and a
    file listed without a hash is taken for one written before hashes were recorded: the next
    run of that name overwrote the user's file."""
    import pytest

    from anomaly.benchmark_dirs import BenchmarkError, claim_out, seal_dir, write_out

    out = tmp_path / "cur"
    claim_out(out)
    write_out(out / "train_size_patchknn.csv", "set,method\n")
    (out / "train_size_meandiff.csv").write_text("a colleague's curve")
    seal_dir(out)  # as a rerun of the patchknn curve seals it
    with pytest.raises(BenchmarkError, match="was not written by the benchmark"):
        write_out(out / "train_size_meandiff.csv", "set,method\n")
    assert (out / "train_size_meandiff.csv").read_text() == "a colleague's curve"
    write_out(out / "train_size_patchknn.csv", "set,method,n\n")  # its own: rewritten


def test_printed_scores_read_as_their_verdicts_and_scores_csv_holds_them_exactly(tmp_path, capsys):
    """scores.csv and predict printed scores in 6 digits: a score of 10.702990 under a manual
    threshold of 10.703 printed "10.703 PASS", and counts made from scores.csv were off by one
    at thresholds set just above a score (the conformal rule's)."""
    from anomaly.metrics import Threshold
    from anomaly.onnx_checks import score_text

    assert score_text(10.702990531921387, 10.703) == "10.70299"
    assert score_text(10.71, 10.703) == "10.71" and score_text(3.0) == "3"
    data = plain_set(tmp_path / "a")
    run = tmp_path / "run"
    train_run(Config.for_method("patchknn", data=str(data), size=32), run)
    pred, _ = score_run(run, overlays=False)
    with open(run / "scores.csv") as f:
        written = {r["path"]: float(r["score"]) for r in csv.DictReader(f)}
    assert written == {p: float(s) for p, s in zip(pred.paths, pred.scores)}
    # a threshold its 6-digit rounding puts on the other side: the rounded value itself when
    # it rounds up (PASS, printed as if at the threshold), the score when it rounds down (REJECT)
    i = next(i for i, s in enumerate(pred.scores) if float(f"{float(s):.6g}") != float(s))
    image, score = pred.paths[i], float(pred.scores[i])
    rounded = float(f"{score:.6g}")
    threshold, expected = (rounded, "PASS") if rounded > score else (score, "REJECT")
    RunDir(run).save_threshold(Threshold(threshold, "manual", {}))
    main(["predict", "--run", str(run), "--no-overlays", image])
    shown, verdict = capsys.readouterr().out.split("\t")[1:3]
    assert verdict == expected and (float(shown) < threshold) == (expected == "PASS")


def test_reading_a_curves_csv_or_a_damaged_json_names_the_file(tmp_path):
    """read_curve on the .csv the benchmark says it wrote raised json's JSONDecodeError."""
    import pytest

    from anomaly.benchmark_curves import read_curve

    (tmp_path / "train_size_patchknn.csv").write_text("set,method,n\n")
    with pytest.raises(ValueError, match=r"train_size_patchknn.csv is not a curve .* give .*json"):
        read_curve(tmp_path / "train_size_patchknn.csv")
    (tmp_path / "train_size_x.json").write_text('{"rows": 3}')
    with pytest.raises(ValueError, match=r"train_size_x.json is not a curve"):
        read_curve(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nope does not exist"):
        read_curve(tmp_path / "nope")


def test_auto_says_a_plain_sets_training_images_are_what_good_holds_less_the_tested(tmp_path):
    """With 6 images in good/, auto said "the 5 images of good/ (less the fifth it tests)",
    which reads as if good/ held 5."""
    import pytest

    from anomaly.detectors.auto import check_enough

    data = plain_set(tmp_path / "a", n_good=6)
    config = Config.for_method("auto", data=str(data))
    with pytest.raises(ValueError) as err:
        check_enough(4, config, n_good=5)
    assert "the 5 training images of good/ (the rest of it is tested) less the 1" in str(err.value)
