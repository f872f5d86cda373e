"""Session 38's walkthroughs: each test fails without the fix it names."""

from __future__ import annotations

from helpers import copy_run


def test_an_explorer_page_reports_the_threshold_saved_since_it_read_it(scored_ae_run, tmp_path):
    # a page left open while `threshold` saved another threshold exported a report (and a
    # snapshot) calling its own outdated threshold "saved": a QA record of a threshold no
    # command uses
    import anomaly
    from anomaly.calibration import set_threshold

    run = copy_run(scored_ae_run, tmp_path / "run")
    ex = anomaly.ThresholdExplorer(run)
    old = ex.run.saved.value
    set_threshold(run, "manual", old * 3)
    report = ex.report_html()
    assert f"{old * 3:.4g}" in report and "changed since this page read it" in ex.status.value
    assert ex.run.saved.value == old * 3
    ex.close()


def test_a_mac_zips_and_a_usb_sticks_own_folders_are_no_defect_kinds(tiny_cookies, tmp_path):
    # unzipping a Mac's zip leaves __MACOSX/ (of ._ files) beside the kinds, a USB stick has its
    # $RECYCLE.BIN/: train passed, then score stopped, calling __MACOSX a folder of masks
    import shutil
    import warnings

    from anomaly.data import AnomalyDataset

    root = tmp_path / "d"
    shutil.copytree(tiny_cookies, root)
    for junk in ("test/__MACOSX/crack", "$RECYCLE.BIN/S-1-5-21", "train/good/__MACOSX"):
        (root / junk).mkdir(parents=True)
        (root / junk / "._000.png").write_bytes(b"\x00\x05\x16\x07" + bytes(4092))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing said of them either
        test = AnomalyDataset(root, "test", size=64)
        train = AnomalyDataset(root, "train", size=64)
    assert "__MACOSX" not in {s.defect for s in test.samples}
    assert len(train) == len(AnomalyDataset(tiny_cookies, "train", size=64))


def test_train_and_test_folders_named_in_capitals_are_told_to_be_renamed(tiny_cookies, tmp_path):
    # Train/ and Test/ (a Windows copy) were taken for two data sets: "pass one of them, e.g.
    # .../Test", and following that trained on the test images without a word
    import shutil

    import pytest

    from anomaly.data import AnomalyDataset
    from anomaly.data.files import DataError

    root = tmp_path / "u"
    shutil.copytree(tiny_cookies, root)
    (root / "train").rename(root / "Train")
    (root / "test").rename(root / "Test")
    with pytest.raises(DataError) as err:
        AnomalyDataset(root, "train", size=64)
    assert "rename Test/ to test/ and Train/ to train/" in str(err.value)
    assert "pass one of them" not in str(err.value)


def test_two_runs_compared_on_other_data_are_named_after_the_runs(scored_ae_run, tmp_path):
    # ThresholdExplorer([A/scored/ho, B/scored/ho]) named them "ho" and "ho-2": the Save of
    # one wrote into the run the user took for the other
    import shutil

    import anomaly
    from anomaly.pipeline import score_run
    from anomaly.runs import RunDir

    data = RunDir(scored_ae_run).config().data
    shutil.copytree(data, tmp_path / "ho")
    runs = [copy_run(scored_ae_run, tmp_path / name) for name in ("A", "B")]
    for run in runs:
        score_run(run, tmp_path / "ho", overlays=False, progress=False)
    ex = anomaly.ThresholdExplorer([run / "scored" / "ho" for run in runs])
    assert [label for label, _ in ex.run_select.options] == ["A on ho (ae)", "B on ho (ae)"]
    ex.close()


def test_a_model_copied_beside_another_runs_split_is_not_tested_on_its_training_images(
    tmp_path, capsys
):
    # `cp B/model.pt B/threshold.json prod/` (a rollback by hand into a copy of A): score took
    # A's split.json for B's, tested B on images B had learned, and replaced metrics.json
    import shutil
    import warnings

    import pytest
    from helpers import plain_set, tiny_config

    from anomaly.build import load_run
    from anomaly.pipeline import score_run, train_run
    from anomaly.runs import RunError

    data = plain_set(tmp_path / "line", n_good=12)
    train_run(tiny_config(data, "patchknn", size=32), tmp_path / "A", progress=False)
    for image in sorted((data / "good").iterdir())[:4]:  # good parts falsely rejected: added
        shutil.copy(image, data / "good" / f"new_{image.name}")
    train_run(tiny_config(data, "patchknn", size=32), tmp_path / "B", progress=False)
    prod = copy_run(tmp_path / "A", tmp_path / "prod")
    for name in ("model.pt", "threshold.json"):
        shutil.copy(tmp_path / "B" / name, prod / name)
    with pytest.raises(RunError, match="not the split .* Copy"):
        score_run(prod, progress=False)
    shutil.copy(tmp_path / "B" / "split.json", prod / "split.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the model and its split together again: nothing said
        assert load_run(prod).trained_in(data)


def test_a_method_that_failed_on_a_set_is_a_row_of_the_tables_not_left_out():
    # benchmark.md and the notes dropped a failed method's row, and its summary's mean and
    # worst set were over the sets it did not fail on (beside others' over every set)
    from anomaly.benchmark_tables import caveats, format_table, summarize

    ok = {"image_auroc": 0.5, "image_auroc_ci": [0.4, 0.6], "pixel_auroc": 0.9, "aupro": 0.8}
    rows = [
        {"set": "a", "suite": "s", "method": "meandiff", **ok},
        {"set": "few", "suite": "s", "method": "meandiff", **ok, "image_auroc": 0.375},
        {"set": "a", "suite": "s", "method": "auto", **ok},
        {"set": "few", "suite": "s", "method": "auto", "error": ["error: too few images"]},
    ]
    table = format_table(rows, per_defect=False)
    assert "| few | auto | FAILED |" in table
    auto = next(s for s in summarize(rows) if s["method"] == "auto")
    assert auto["mean_image_auroc"] is None and auto["worst_set"] == "failed on few"
    assert "- few auto: error: too few images" in caveats(rows)


def test_the_benchmark_passes_on_what_each_methods_run_warned_of(tiny_cookies, tmp_path):
    # test images that are copies of training images: `score` warns that the metrics are
    # optimistic; the benchmark printed "image AUROC 0.750" and its files said nothing
    import shutil

    from anomaly.benchmark import run_benchmark

    data = tmp_path / "dup"
    shutil.copytree(tiny_cookies, data)
    shutil.copy(next((data / "train" / "good").iterdir()), data / "test" / "good" / "copy.png")
    run_benchmark(str(data), methods=["meandiff"], out=str(tmp_path / "b"), smoke=True)
    for name in ("benchmark.md", "benchmark-notes.md"):
        text = (tmp_path / "b" / name).read_text()
        assert "Warned:" in text and "byte-identical copies" in text


def test_the_benchmark_refuses_too_few_images_for_auto_before_anything_trains(
    tiny_cookies, tmp_path, monkeypatch
):
    # auto's minimum was found after every method listed before it had trained; and
    # `--data .` gave the set an empty name (its runs at the top of --out)
    import shutil

    import pytest

    from anomaly.benchmark import run_benchmark
    from anomaly.benchmark_checks import discover_sets
    from anomaly.benchmark_dirs import BenchmarkError

    data = tmp_path / "few3"
    shutil.copytree(tiny_cookies, data)
    for image in sorted((data / "train" / "good").iterdir())[3:]:
        image.unlink()
    with pytest.raises(BenchmarkError, match="auto needs at least"):
        run_benchmark(str(data), methods=["meandiff", "auto"], out=str(tmp_path / "b"))
    assert not (tmp_path / "b").exists()
    monkeypatch.chdir(data)
    assert [s["name"] for s in discover_sets(".")] == ["few3"]


def test_a_perfectly_separated_small_test_set_gets_an_interval_of_some_width():
    # one good and one defective image gave "1.00-1.00", a certainty no test set that small
    # has; 25 good images perfectly separated leave room for about 14 % of them unseen
    import pytest

    from anomaly.metrics import auroc_interval

    assert auroc_interval([0, 1], [0.1, 0.9]) == pytest.approx((0.025, 1.0))
    labels = [0] * 25 + [1] * 35
    assert auroc_interval(labels, range(60)) == pytest.approx((0.025 ** (1 / 25), 1.0))
    assert auroc_interval(labels, range(60, 0, -1)) == pytest.approx((0.0, 1 - 0.025 ** (1 / 25)))


def test_train_like_names_good_images_added_since_the_run(tmp_path):
    # good parts falsely rejected, added to good/, then `train --like A`: "the run is
    # reproduced", the new images left out without a word
    import shutil

    import pytest
    from helpers import plain_set, tiny_config

    from anomaly.pipeline import train_run
    from anomaly.rerun import train_like

    data = plain_set(tmp_path / "line", n_good=10)
    train_run(tiny_config(data, "meandiff", size=32), tmp_path / "A", progress=False)
    shutil.copy(data / "good" / "000.png", data / "good" / "added.png")
    with pytest.warns(UserWarning, match=r"holds at least 1 good image more than the run trained"):
        train_like(tmp_path / "A", tmp_path / "A2", progress=False)


def test_a_data_set_copied_through_a_mac_keeps_its_split(tmp_path):
    # pièce_000.png renamed to its NFD form (e + a combining accent, as a Mac's copy writes it):
    # score tested the run on its own training images, said they were "missing or changed",
    # and replaced metrics.json; --like refused a file that visibly exists
    import os
    import unicodedata
    import warnings

    from helpers import plain_set, tiny_config

    from anomaly.pipeline import score_run, train_run
    from anomaly.rerun import train_like

    data = plain_set(tmp_path / "line", n_good=10)
    good = data / "good"
    for p in sorted(good.iterdir()):
        p.rename(good / f"pièce_{p.name}")
    train_run(tiny_config(data, "meandiff", size=32), tmp_path / "A", progress=False)
    _, before = score_run(tmp_path / "A", overlays=False, progress=False)
    for name in os.listdir(good):
        os.rename(good / name, good / unicodedata.normalize("NFD", name))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "copies of training images", no "missing"
        _, after = score_run(tmp_path / "A", overlays=False, progress=False)
        train_like(tmp_path / "A", tmp_path / "A2", progress=False)
    assert after["n_images"] == before["n_images"]


def test_a_passing_overlays_share_over_the_pixel_threshold_is_readable(monkeypatch):
    # beside the file name, "photo02_good.png; 0.0014 of its map over pixel thr. (yellow:
    # PASS)" was shrunk to 8 px to fit a 256 px overlay: about 6 px in notebook 07's figure
    import numpy as np
    from PIL import ImageDraw

    from anomaly import overlays

    sizes = {}
    real = ImageDraw.ImageDraw.text
    monkeypatch.setattr(
        ImageDraw.ImageDraw,
        "text",
        lambda self, xy, text, *a, **k: (
            sizes.update({text: k["font"].size}) or real(self, xy, text, *a, **k)
        ),
    )
    amap = np.full((64, 64), 3.0, np.float32)
    amap[:2, :4] = 9.0
    image = np.full((256, 256, 3), 0.5, np.float32)
    scale = overlays.EvidenceScale(2.0, 7.0)
    rgb = overlays.annotated_overlay(image, amap, scale, 1.0, 2.0, title="photo02_good.png")
    share = next(t for t in sizes if "of its map over pixel thr." in t)
    assert sizes[share] >= 12 and sizes["photo02_good.png"] >= 12
    assert rgb[overlays.body_rows(image.shape, "photo02_good.png")].shape[0] == 256


def test_workers_forked_after_a_run_is_loaded_score_instead_of_hanging(scored_ae_run):
    # load_run runs the network once (its size probe) on torch's threads: workers of a fork
    # Pool then waited for ever in OpenMP's barrier (the fork copies no threads)
    from helpers import fresh_python

    from anomaly.runs import RunDir

    images = [str(p) for p in RunDir(scored_ae_run).predictions().paths[:4]]
    code = f"""
import multiprocessing, torch, anomaly
torch.set_num_threads(2)
det = anomaly.load_run({str(scored_ae_run)!r})
def score(p):
    return anomaly.predict_images(det, [p], overlays=False)[0][0]["score"]
with multiprocessing.get_context("fork").Pool(2) as pool:
    print(len(pool.map_async(score, {images!r}).get(timeout=60)))
"""
    done = fresh_python(code)
    assert done.stdout.strip() == "4", done.stderr[-2000:]


def test_a_loaded_network_run_can_be_sent_to_a_spawned_worker(scored_ae_run):
    # "Can't pickle local object 'load_run.<locals>.<lambda>'" for an ae run passed to a
    # spawn or forkserver pool's workers
    import pickle

    from anomaly.build import load_run

    det = pickle.loads(pickle.dumps(load_run(scored_ae_run)))
    assert det.trained_in(det.config.data) is not None


def test_a_second_score_into_the_same_out_folder_is_refused_while_the_first_writes(
    scored_ae_run, tmp_path
):
    # two `score --out X` at once (two runs, one folder) both exited 0 and left scores.csv of
    # one beside overlays of the other; or the second named the first's temporary file as
    # "files score does not write"
    import pytest
    from test_walkthrough37 import held_by_another_process

    from anomaly.pipeline import score_run
    from anomaly.run_lock import InUse
    from anomaly.runs import RunDir

    data = RunDir(scored_ae_run).config().data
    out = tmp_path / "X"
    out.mkdir()
    with held_by_another_process(out, "score"), pytest.raises(InUse, match="score"):
        score_run(copy_run(scored_ae_run, tmp_path / "ae"), data, out=out, progress=False)
    score_run(  # the killed holder's lock: taken over, not "a file of yours"
        tmp_path / "ae", data, out=out, overlays=False, progress=False
    )
    assert not (out / ".lock").exists() and (out / "scores.csv").is_file()


def test_train_like_of_a_run_from_before_model_pt_recorded_its_split(tmp_path):
    # model.pt now records its split: --like of a run trained before said the two files
    # "differ in the config they record: its fields", though only that record differs
    from helpers import plain_set, tiny_config

    from anomaly.pipeline import train_run
    from anomaly.rerun import same_model_words, train_like
    from anomaly.run_checkpoints import SPLIT_KEY
    from anomaly.runs import RunDir
    from anomaly.safe_files import atomic_save

    data = plain_set(tmp_path / "line", n_good=10)
    train_run(tiny_config(data, "meandiff", size=32), tmp_path / "A", progress=False)
    old = RunDir(tmp_path / "A")
    payload = old.checkpoint()
    del payload[SPLIT_KEY]  # as a model.pt written before session 38
    atomic_save(payload, old.file(old.MODEL))
    train_like(tmp_path / "A", tmp_path / "A2", progress=False)
    said = same_model_words(tmp_path / "A", tmp_path / "A2")
    assert "config and learned state alike: the run is reproduced" in said, said


def test_a_mask_whose_name_differs_from_its_image_only_in_case_is_named(tiny_cookies, tmp_path):
    # B01_mask.png beside b01.png (one file on Windows): "this mask matches no image", no hint
    import shutil

    import pytest

    from anomaly.data import AnomalyDataset
    from anomaly.data.files import DataError

    root = tmp_path / "d"
    shutil.copytree(tiny_cookies, root)
    mask = min((root / "ground_truth" / "crack").iterdir())
    stem = mask.name.split("_mask")[0]
    (root / "test" / "crack" / f"{stem}.png").rename(root / "test" / "crack" / f"b{stem}.png")
    mask.rename(mask.with_name(f"B{stem}_mask.png"))
    with pytest.raises(DataError, match=f"b{stem}.png there differs only in case"):
        AnomalyDataset(root, "test", size=64)


def test_a_macs_appledouble_file_named_as_an_image_is_called_what_it_is(scored_ae_run, tmp_path):
    # `predict $(find DIR -name '*.png')` picks up ._000.png: "cannot read this image ...
    # Re-save it as PNG, or delete it", for a Mac's metadata file
    import anomaly

    sidecar = tmp_path / "._000.png"
    sidecar.write_bytes(b"\x00\x05\x16\x07" + bytes(4092))
    (row,), _ = anomaly.predict_images(scored_ae_run, [sidecar], overlays=False)
    assert "AppleDouble" in row["error"] and "Re-save" not in row["error"]


def test_the_benchmark_on_a_folder_of_sets_says_how_to_give_them_all(tiny_cookies, tmp_path):
    # "It holds data sets (a, b); pass one of them": nothing said of repeating --data or of
    # the manifest that makes a folder a suite
    import shutil

    import pytest

    from anomaly.benchmark import run_benchmark
    from anomaly.benchmark_dirs import BenchmarkError

    for name in ("a", "b"):
        shutil.copytree(tiny_cookies, tmp_path / "sets" / name)
    with pytest.raises(BenchmarkError, match=r"repeat --data for each.*manifest\.json"):
        run_benchmark(str(tmp_path / "sets"), methods=["meandiff"], out=str(tmp_path / "b"))


def test_the_review_of_the_split_record_and_of_the_mac_copies(tiny_cookies, tmp_path):
    # a review: a model.pt beside another run's split was refused by score on MVTec data too
    # (its test images are its own folder's); a Mac's copy of a plain set at a new path was
    # tested on training images; --like on a Mac's copy of train/good called every image added;
    # Test/ beside a data set got "rename Test/ to test/"
    import os
    import shutil
    import unicodedata
    import warnings

    import pytest
    from helpers import plain_set, tiny_config

    from anomaly.data import AnomalyDataset
    from anomaly.data.files import DataError
    from anomaly.pipeline import score_run, train_run
    from anomaly.rerun import train_like

    mvtec = tmp_path / "mv"
    shutil.copytree(tiny_cookies, mvtec)
    train_run(tiny_config(mvtec, "meandiff", size=32), tmp_path / "A", progress=False)
    shutil.copy(mvtec / "train" / "good" / "000.png", mvtec / "train" / "good" / "new.png")
    train_run(tiny_config(mvtec, "meandiff", size=32), tmp_path / "B", progress=False)
    roll = copy_run(tmp_path / "B", tmp_path / "roll")
    shutil.copy(tmp_path / "A" / "model.pt", roll / "model.pt")
    shutil.copy(tmp_path / "A" / "threshold.json", roll / "threshold.json")
    score_run(roll, overlays=False, progress=False)  # MVTec: the split chooses no test image

    def to_nfd(folder):
        for name in os.listdir(folder):
            os.rename(folder / name, folder / unicodedata.normalize("NFD", name))

    plain = plain_set(tmp_path / "pl", n_good=10)
    for p in sorted((plain / "good").iterdir()):
        p.rename(plain / "good" / f"pièce_{p.name}")
    train_run(tiny_config(plain, "meandiff", size=32), tmp_path / "P", progress=False)
    _, own = score_run(tmp_path / "P", overlays=False, progress=False)
    shutil.copytree(plain, tmp_path / "pl_mac")
    to_nfd(tmp_path / "pl_mac" / "good")
    _, mac = score_run(tmp_path / "P", tmp_path / "pl_mac", overlays=False, progress=False)
    assert mac["n_images"] == own["n_images"]

    for p in sorted((mvtec / "train" / "good").iterdir()):
        p.rename(p.with_name(f"pièce_{p.name}"))
    train_run(tiny_config(mvtec, "meandiff", size=32), tmp_path / "E", progress=False)
    to_nfd(mvtec / "train" / "good")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing added
        train_like(tmp_path / "E", tmp_path / "E2", progress=False)

    sets = tmp_path / "sets"
    shutil.copytree(tiny_cookies, sets / "cookies")
    (sets / "Test").mkdir()
    with pytest.raises(DataError, match="It holds data sets \\(cookies\\)"):
        AnomalyDataset(sets, "train", size=64)


def test_a_command_stopped_by_a_signal_leaves_no_stale_hook_for_the_next(monkeypatch):
    # a review: after one SIGTERM-stopped command in a long-lived process, the next command
    # kept the stopped one's hook as "the" hook, and put it back at its end
    import signal
    import sys

    from anomaly import cli

    original = sys.excepthook
    try:
        try:
            with cli._signals_interrupt():
                signal.raise_signal(signal.SIGTERM)
        except KeyboardInterrupt:
            pass
        with cli._signals_interrupt():
            pass
        assert sys.excepthook is original
    finally:
        sys.excepthook = original


def test_the_smoke_benchmark_does_not_pass_on_warnings_about_its_own_settings(
    tiny_cookies, tmp_path
):
    # a review: every `benchmark --smoke` with auto said "--size 64: ... leave --size at
    # auto's default", a flag the user never gave
    from anomaly.benchmark import run_benchmark

    run_benchmark(str(tiny_cookies), methods=["auto"], out=str(tmp_path / "b"), smoke=True)
    assert "--size 64" not in (tmp_path / "b" / "benchmark.md").read_text()


def test_a_nearly_separated_test_set_is_no_surer_than_a_separated_one():
    # a review: 25 good and 42 defective images, AUROC 1.0 got 0.86-1.00 and AUROC 0.999 (one
    # pair out of order) 0.99-1.00: the worse result read as the surer one
    import numpy as np

    from anomaly.metrics import auroc_interval

    labels = np.r_[np.zeros(25, bool), np.ones(42, bool)]
    scores = np.r_[np.linspace(0, 1, 25), np.linspace(2, 3, 42)]
    separated = auroc_interval(labels, scores)
    scores[24] = 2.01
    assert auroc_interval(labels, scores)[0] <= separated[0]


def test_a_batch_outside_the_good_scores_the_threshold_rests_on_is_said():
    # a drift walkthrough: blurred images (a lens refocused) scored below every good image the
    # threshold was set on, and ae passed every part, defects too, without a word; a blue cast
    # had patchknn reject every good part with only the guarantee's line beside the rows
    from anomaly.decision import batch_outside

    good = [1 + i / 20 for i in range(20)]
    low = batch_outside([0.5, 0.6, 0.7, 0.8, 0.9, 1.5], good)
    assert low and low.startswith("5 of these 6 images score below every one of the 20")
    high = batch_outside([3.0] * 8 + [1.5] * 2, good)
    assert high and high.startswith("8 of these 10 images score above every one of the 20")
    assert batch_outside([3.0] * 8 + [1.5] * 2, good, below_only=True) is None
    assert batch_outside([3.0, 3.0] + [1.5] * 8, good) is None  # a few defects: as expected
    assert batch_outside([0.5] * 4, good) is None  # too few to tell


def test_predict_and_score_say_when_a_batch_scores_below_every_good_image(
    scored_ae_run, monkeypatch, tmp_path
):
    import pytest

    import anomaly
    from anomaly import decision
    from anomaly.pipeline import score_run
    from anomaly.runs import RunDir

    monkeypatch.setattr(decision, "rested_on", lambda run, threshold: [1e6 + i for i in range(20)])
    images = [str(p) for p in RunDir(scored_ae_run).predictions().paths]
    with pytest.warns(UserWarning, match="score below every one of the 20 good images"):
        anomaly.predict_images(scored_ae_run, images, overlays=False)
    with pytest.warns(UserWarning, match="score below every one of the 20 good images"):
        score_run(copy_run(scored_ae_run, tmp_path / "run"), overlays=False, progress=False)


def test_the_smoke_benchmark_keeps_warnings_about_the_data(tiny_cookies, tmp_path):
    # a review: the smoke filter dropped any warning naming "--size 64", such as "3 of the 8
    # training images ... are stretched up to --size 64": one about the data, at any size
    import shutil

    from PIL import Image

    from anomaly.benchmark import run_benchmark

    data = tmp_path / "sm"
    shutil.copytree(tiny_cookies, data)
    for f in sorted((data / "train" / "good").iterdir())[:3]:
        Image.open(f).resize((20, 20)).save(f)
    run_benchmark(str(data), methods=["meandiff"], out=str(tmp_path / "b"), smoke=True)
    assert "stretched up to --size 64" in (tmp_path / "b" / "benchmark.md").read_text()


def test_the_report_names_the_model_by_its_whole_digest(scored_ae_run):
    # an audit: the report cut model.pt's SHA-256 to 16 digits, so it could not be compared
    # with threshold.json's model_sha256
    import anomaly
    from anomaly.threshold_file import model_sha256

    ex = anomaly.ThresholdExplorer(scored_ae_run)
    assert model_sha256(scored_ae_run / "model.pt") in ex.report_html()
    ex.close()


def test_predict_onnx_compares_a_batch_with_the_good_scores_of_its_threshold(tmp_path, monkeypatch):
    # a review: `predict --onnx` (the deployed path) had no batch check of scores outside the
    # good ones; the export now records them ("good_scores")
    import json

    import pytest
    from helpers import patchknn_export, plain_set

    from anomaly import export_predict
    from anomaly.decision import rested_on
    from anomaly.onnx_predict import OnnxDetector
    from anomaly.runs import RunDir

    data = plain_set(tmp_path / "d", n_good=40)
    onnx = patchknn_export(data, tmp_path / "run", size=32)
    run = RunDir(tmp_path / "run")
    recorded = json.loads(OnnxDetector(onnx).meta["good_scores"])
    assert recorded == pytest.approx(rested_on(run, run.threshold()))
    monkeypatch.setattr(export_predict, "_good_scores", lambda d: [1e6 + i for i in range(20)])
    images = sorted(str(p) for p in (data / "good").iterdir())[:6]
    with pytest.warns(UserWarning, match="score below every one of the 20 good images"):
        export_predict.predict_files(onnx, images, overlays=False)


def test_the_explorer_gives_the_rates_intervals_as_threshold_does():
    # an audit: `threshold` printed 0 of 4 good rejected as "0.00-60.3 %", while the report
    # and the page showed "0.000" alone, a rate that four images cannot pin down
    from anomaly.explorer.text import format_confusion_html

    counts = {"tp": 3, "fp": 0, "tn": 4, "fn": 3, "threshold": 1.0, "precision": 1.0}
    counts |= {"recall": 0.5, "f1": 0.67, "false_reject_rate": 0.0, "escape_rate": 0.5}
    html = format_confusion_html(counts)
    assert "95 % interval of the rate 0.00-60.3 %" in html
    assert "95 % interval of the rate 11.8-88.2 %" in html
