"""The mean-difference baseline (`meandiff`): finds a blob on flat images, saves and restores."""

from __future__ import annotations

import pytest
import torch
from helpers import FlatImages

from anomaly.config import Config
from anomaly.detectors import get_detector
from anomaly.detectors.meandiff import MeanDiff
from anomaly.metrics import image_auroc

SIZE = 48


@pytest.fixture(scope="module")
def fitted():
    config = Config.for_method("meandiff", size=SIZE, batch_size=8)
    return MeanDiff(config).fit(FlatImages(20, seed=1))


def test_registered_with_its_defaults():
    assert get_detector("meandiff") is MeanDiff
    config = Config.for_method("meandiff")
    assert config.channels == 3 and config.size >= 128


def test_mean_and_std_are_the_training_images(fitted):
    images = FlatImages(20, seed=1).images
    assert torch.allclose(fitted.mean, images.mean(0), atol=1e-5)
    assert torch.allclose(fitted.std, images.std(0, unbiased=False), atol=1e-4)


def test_finds_a_blob_and_where_it_is(fitted):
    pred = fitted.predict(FlatImages(12, defective=6, seed=2))
    assert image_auroc(pred.labels, pred.scores) == 1.0
    assert pred.maps.shape == (12, SIZE, SIZE)
    for m, mask in zip(pred.maps[6:], pred.masks[6:]):
        peak = divmod(int(m.argmax()), SIZE)
        assert mask[peak] == 1  # the map's maximum lies on the blob


def test_state_round_trips(fitted):
    state = fitted.state_dict()
    assert set(state) == {"mean", "std"} and all(
        isinstance(v, torch.Tensor) for v in state.values()
    )
    other = MeanDiff(fitted.config)
    other.load_state_dict(state)
    images = FlatImages(4, defective=2, seed=3).images
    for a, b in zip(fitted.predict_batch(images), other.predict_batch(images)):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="config makes"):
        MeanDiff(fitted.config.replace(size=SIZE * 2)).load_state_dict(state)


def test_refuses_before_fit_and_other_sizes(fitted):
    with pytest.raises(RuntimeError, match="fit"):
        MeanDiff(fitted.config).predict_batch(torch.zeros(1, 3, SIZE, SIZE))
    with pytest.raises(ValueError, match="run's size"):
        fitted.predict_batch(torch.zeros(1, 3, SIZE + 1, SIZE + 1))
    with pytest.raises(ValueError, match="empty"):
        MeanDiff(fitted.config).fit(FlatImages(0))
