"""Whitened patch features (`patchknn --whiten`): the transform, its place in the extractor,
saving and loading, and the ONNX export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import Textures

from anomaly.config import Config
from anomaly.detectors.patchknn import PatchKNN
from anomaly.features import fit_whitening
from anomaly.metrics import image_auroc

SIZE = 64


def test_whitened_features_have_unit_covariance_and_shrinkage_bounds_the_gain():
    gen = torch.Generator().manual_seed(0)
    mixing = torch.randn(6, 6, generator=gen) * torch.tensor([5.0, 2.0, 1.0, 0.5, 0.2, 0.1])
    feats = torch.randn(20_000, 6, generator=gen) @ mixing.T + 3.0
    mean, matrix = fit_whitening(feats, shrink=1e-6)
    white = (feats - mean) @ matrix
    np.testing.assert_allclose(white.mean(0), 0, atol=1e-3)
    np.testing.assert_allclose(torch.cov(white.T), torch.eye(6), atol=2e-2)
    # shrinkage: the least-varying direction is no longer scaled to unit variance
    _, shrunk = fit_whitening(feats, shrink=0.1)
    assert torch.linalg.matrix_norm(shrunk, 2) < torch.linalg.matrix_norm(matrix, 2) / 2
    with pytest.raises(ValueError, match="shrinkage"):
        fit_whitening(feats, shrink=0.0)


@pytest.fixture(scope="module")
def whitened():
    config = Config(method="patchknn", size=SIZE, batch_size=8, coreset_ratio=0.1, whiten=0.1)
    return PatchKNN(config).fit(Textures(16, seed=1))


def test_extractor_whitens_what_the_bank_holds(whitened):
    mean, matrix = whitened.state_dict()["whiten_mean"], whitened.state_dict()["whiten_matrix"]
    images = Textures(3, seed=4).images
    raw = PatchKNN(Config(method="patchknn", size=SIZE, coreset_ratio=0.1)).embed(images)
    np.testing.assert_allclose(whitened.embed(images), (raw - mean) @ matrix, rtol=1e-4, atol=1e-4)
    # the bank is in the whitened space: its spread is about 1 along every direction
    assert 0.2 < float(whitened.bank.std(0).mean()) < 3


def test_whitened_detector_finds_defects_and_survives_a_round_trip(whitened):
    test = Textures(12, defective=6, seed=2)
    pred = whitened.predict(test)
    assert image_auroc(pred.labels, pred.scores) == 1.0
    restored = PatchKNN(whitened.config)
    restored.load_state_dict(whitened.state_dict())
    images = test.images[:4]
    assert torch.equal(restored.predict_batch(images)[0], whitened.predict_batch(images)[0])


def test_a_bank_and_a_config_that_disagree_on_whitening_are_refused(whitened):
    plain = PatchKNN(Config(method="patchknn", size=SIZE, coreset_ratio=0.1))
    with pytest.raises(RuntimeError, match="whitened"):
        plain.load_state_dict(whitened.state_dict())
    state = plain.fit(Textures(8, seed=1)).state_dict()
    with pytest.raises(RuntimeError, match="without whitened"):
        PatchKNN(whitened.config).load_state_dict(state)


def test_onnx_export_includes_the_whitening(whitened, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from anomaly.export import export_detector

    path = export_detector(whitened, tmp_path / "model.onnx")
    images = Textures(2, defective=1, seed=5).images
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    scores = [session.run(None, {name: image[None].numpy()})[0] for image in images]
    np.testing.assert_allclose(
        np.concatenate(scores), whitened.predict_batch(images)[0].numpy(), atol=1e-4
    )
