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
    with pytest.raises(RuntimeError, match=f"{method}: call fit\\(\\) \\(or load a run\\)"):
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
