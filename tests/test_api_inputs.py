"""What the Python API is given (session 29's walkthrough of it from a notebook): tensors,
data sets, paths and configs that scored without a word or failed deep inside torch."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

import anomaly
from anomaly.config import Config
from anomaly.detectors import get_detector
from anomaly.pipeline import load_run


@pytest.fixture(scope="module")
def ae(scored_ae_run):
    return load_run(scored_ae_run)


@pytest.fixture(scope="module")
def batch(ae, tiny_cookies):
    return ae.dataset(tiny_cookies)[0]["image"][None]


def test_dataset_scores_as_the_cli(ae, scored_ae_run, tiny_cookies):
    """`detector.dataset(root)` takes the run's size, channels and decoding: the same scores as
    `score`; the data set's default size (256, the run's 64) is refused, not scored."""
    pred = ae.predict(ae.dataset(tiny_cookies))
    with open(scored_ae_run / "scores.csv", newline="") as f:
        cli = {row["path"]: float(row["score"]) for row in csv.DictReader(f)}
    assert np.allclose([cli[p] for p in pred.paths], pred.scores, rtol=1e-5)
    with pytest.raises(ValueError, match=r"size 256 \(the run's 64\).*detector.dataset"):
        ae.predict(anomaly.AnomalyDataset(tiny_cookies, "test"))


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda x: (x * 255).to(torch.uint8), r"torch.uint8: use images.float\(\) / 255"),
        (lambda x: x * 255, r"run from .* to .*: divide 0-255 values by 255"),
        (lambda x: (x - 0.45) / 0.225, "leave out any normalisation"),
        (lambda x: x[0], r"got \[1, 64, 64\]: one image without its batch dimension"),
        (lambda x: x.permute(0, 2, 3, 1), r"channels last, use images.permute\(0, 3, 1, 2\)"),
        (lambda x: x.repeat(1, 3, 1, 1), "the run takes 1 channel "),
        (lambda x: torch.nn.functional.interpolate(x, size=48), "resize to 64 x 64"),
        (lambda x: torch.where(torch.arange(64) == 3, torch.nan, x), "NaN or infinite"),
        (lambda x: x[:0], "an empty batch"),
    ],
)
def test_predict_batch_refuses_what_it_would_score_wrong(ae, batch, change, said):
    """uint8 or 0-255 pixels scored about ten times higher, a tensor without its batch
    dimension gave one score per channel, another size scored without a word."""
    ae.predict_batch(batch)  # the right input scores
    with pytest.raises(ValueError, match=said):
        ae.predict_batch(change(batch))


def test_predict_and_fit_say_what_they_take(ae, batch, tiny_cookies):
    """An array, a tensor or a path failed with IndexError or TypeError from inside torch."""
    for given, said in (
        (str(tiny_cookies), r"not the path .*detector.dataset\("),
        (tiny_cookies, "not the path"),
        (batch, "not a Tensor; .* use predict_batch"),
        (batch.numpy(), "not a ndarray"),
        ([str(tiny_cookies / "test" / "good" / "000.png")], "anomaly.predict_images"),
    ):
        with pytest.raises(TypeError, match=said):
            ae.predict(given)
    fresh = get_detector("ae")(ae.config)
    with pytest.raises(TypeError, match="ae.fit takes a data set, not a Tensor"):
        fresh.fit(batch)
    with pytest.raises(ValueError, match="fit\\(\\) got an empty data set"):
        fresh.fit(fresh.dataset(tiny_cookies, "train").subset([]))


@pytest.mark.parametrize("method", ["ae", "unet", "vae", "draem", "flow"])
def test_a_method_trained_by_epochs_refuses_to_score_untrained(method, batch):
    """They scored with their random first weights, as if trained."""
    config = Config.for_method(method, size=64, channels=1, width=4)
    with pytest.raises(RuntimeError, match=f"{method}: call fit\\(\\) \\(or load a run"):
        get_detector(method)(config).predict_batch(batch)


def test_predict_images_takes_one_path(scored_ae_run, tiny_cookies):
    """A str was read letter by letter: '/' scanned as a folder, then 't', 'm', ..."""
    one = tiny_cookies / "test" / "good" / "000.png"
    results, _ = anomaly.predict_images(scored_ae_run, str(one), overlays=False)
    assert [r["path"] for r in results] == [str(one)] and "score" in results[0]
    with pytest.raises(TypeError, match="not as a ndarray"):
        anomaly.predict_images(scored_ae_run, [np.zeros((8, 8))], overlays=False)


def test_figures_say_a_data_set_or_a_missing_folder_is_no_run(tiny_cookies, tmp_path):
    """They said "has not been scored; run score --run ..." for both, which fails."""
    from anomaly import notebook as nb

    with pytest.raises(anomaly.RunError, match="no such run folder"):
        nb.histogram_figure(tmp_path / "nope")
    with pytest.raises(anomaly.RunError, match="is a data set, not a run folder"):
        nb.histogram_figure(tiny_cookies)
    with pytest.raises(anomaly.RunError, match="is a data set, not a run folder"):
        anomaly.ThresholdExplorer([tiny_cookies])


def test_config_names_a_typo_and_an_empty_data_and_takes_a_path(tiny_cookies, tmp_path):
    with pytest.raises(ValueError, match="unknown method 'patchnn' \\(did you mean 'patchknn'"):
        Config.for_method("patchnn")
    assert Config.for_method("meandiff", data=tiny_cookies).data == str(tiny_cookies)
    with pytest.raises(ValueError, match="config.data is empty"):
        anomaly.train_run(Config.for_method("meandiff"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_saved_rule_name_sets_the_threshold_again(scored_ae_run, tmp_path):
    """threshold.json says "normal_quantile", which set_threshold refused as unknown."""
    from helpers import copy_run

    run = copy_run(scored_ae_run, tmp_path / "run")
    rule = anomaly.RunDir(run).threshold().rule
    assert rule == "normal_quantile"
    assert anomaly.set_threshold(run, rule, 0.9).rule == rule


# --- the review of these checks: what they must not refuse -------------------------------------
def test_a_data_set_of_ones_own_with_a_size_attribute_is_not_compared(ae, tiny_cookies):
    """Any `size` attribute was read as the images' size: (224, 224), or len(data)."""
    from torch.utils.data import Dataset

    class Mine(Dataset):
        def __init__(self, d):
            self.d, self.size, self.channels = d, (64, 64), "rgb"

        def __len__(self):
            return len(self.d)

        def __getitem__(self, i):
            return self.d[i]

    assert len(ae.predict(Mine(ae.dataset(tiny_cookies))).scores) > 0


def test_small_jpegs_read_without_draft_decoding_are_taken(ae, tiny_cookies, tmp_path):
    """Draft decoding changes only JPEGs of at least 4x the run's size: a set of small JPEGs
    read with decode='full' (AnomalyDataset's default) decodes alike and was refused."""
    import shutil

    from PIL import Image

    jpg = tmp_path / "jpg"
    shutil.copytree(tiny_cookies, jpg)
    for png in list(jpg.rglob("*.png")):
        if "ground_truth" not in png.parts:
            Image.open(png).convert("RGB").save(png.with_suffix(".jpg"))
            png.unlink()
    drafted = get_detector("ae")(ae.config.replace(decode="draft"))  # as new runs decode
    drafted.load_state_dict(ae.state_dict())
    small = anomaly.AnomalyDataset(jpg, "test", size=64, channels=1, decode="full")
    assert len(drafted.predict(small).scores) == len(small)
    big = next(iter((jpg / "test" / "good").iterdir()))
    Image.new("RGB", (256, 256)).save(big)  # 4x the run's 64 px: draft decodes it at half
    with pytest.raises(ValueError, match="decode 'full' \\(the run's 'draft'\\)"):
        drafted.predict(anomaly.AnomalyDataset(jpg, "test", size=64, channels=1, decode="full"))


def test_a_users_subclass_may_adapt_its_input(ae, batch):
    """A user's predict_batch that resizes (or scales uint8) before calling super() was refused
    on what it was given; one that only calls super() was checked twice."""
    from anomaly.detectors import inputs
    from anomaly.detectors.reconstruction import AutoEncoderDetector

    calls = []

    class Resizing(AutoEncoderDetector):
        def predict_batch(self, images):
            images = torch.nn.functional.interpolate(images.float() / 255, size=(64, 64))
            return super().predict_batch(images)

    mine = Resizing(ae.config)
    mine.load_state_dict(ae.state_dict())
    check = inputs.check_batch
    try:
        inputs.check_batch = lambda *a: calls.append(a) or check(*a)
        scores, _ = mine.predict_batch((batch * 255).to(torch.uint8).repeat(1, 1, 2, 2))
    finally:
        inputs.check_batch = check
    assert scores.shape == (1,) and len(calls) == 1


def test_bicubic_overshoot_is_taken_and_a_subclass_without_init_runs(ae, batch):
    """A bicubic resize across a sharp edge gives -0.12 to 1.22: refused as 0-255 pixels."""
    big = torch.zeros(1, 1, 32, 32)
    big[..., 8:20, 8:20] = 1
    x = torch.nn.functional.interpolate(big, size=(64, 64), mode="bicubic")
    assert float(x.min()) < -0.1 and float(x.max()) > 1.2
    assert ae.predict_batch(x)[0].shape == (1,)


def test_an_interrupted_fit_may_be_looked_at(tiny_cookies):
    """After Ctrl-C in fit, predicting the partly trained network was refused as untrained."""
    det = get_detector("ae")(Config.for_method("ae", size=64, channels=1, width=4, epochs=50))
    data = det.dataset(tiny_cookies, "train")
    calls = {"n": 0}
    step = det.step

    def stop_soon(images):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return step(images)

    det.step = stop_soon
    with pytest.raises(KeyboardInterrupt):
        det.fit(data, progress=False)
    assert det.predict(det.dataset(tiny_cookies)).scores.size > 0


def test_fit_on_defective_images_says_so(tiny_cookies):
    """fit on the test split learned its defects as normal without a word."""
    det = get_detector("meandiff")(Config.for_method("meandiff", size=64, channels=1))
    with pytest.warns(UserWarning, match=r"fit got \d+ defective images .* 'train' split"):
        det.fit(det.dataset(tiny_cookies, "test"))
