"""The normalizing flow: exact inverse and log-determinant, and the `flow` detector end to end.

The detector tests use a tiny frozen random convolutional backbone (two stages) on 32 px striped
images, so they run in seconds on a CPU; one test builds the real default backbone when
`anomaly.features` is there.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import Stripes
from torch import nn

from anomaly.config import Config
from anomaly.detectors.flow import FlowDetector, flow_nll_map
from anomaly.detectors.inputs import unchecked
from anomaly.models.flow import FeatureFlow
from anomaly.train import seed_everything

SIZE = 32


def randomised_flow(channels: int = 2, steps: int = 4) -> FeatureFlow:
    """A float64 flow with every parameter random (the zero-initialised identity tests nothing)."""
    torch.manual_seed(0)
    flow = FeatureFlow(channels, steps=steps, hidden_ratio=2.0).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.copy_(0.5 * torch.randn_like(p))
    return flow


def test_flow_is_exactly_invertible():
    flow = randomised_flow(channels=5)
    x = torch.randn(3, 5, 6, 7, dtype=torch.float64)
    z, _ = flow(x)
    assert not torch.allclose(z, x)
    torch.testing.assert_close(flow.inverse(z), x, rtol=1e-9, atol=1e-8)


def test_log_det_matches_brute_force_jacobian():
    flow = randomised_flow(channels=2)
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    _, log_det = flow(x)
    jac = torch.autograd.functional.jacobian(
        lambda v: flow(v.view(1, 2, 4, 4))[0].flatten(), x.flatten()
    )
    sign, logabsdet = torch.linalg.slogdet(jac)
    assert sign.item() != 0
    torch.testing.assert_close(log_det.sum(), logabsdet, rtol=1e-9, atol=1e-9)


def test_untrained_flow_permutes_channels_and_nll_is_the_standard_normal():
    flow = FeatureFlow(4, steps=3)
    x = torch.randn(2, 4, 5, 5)
    z, log_det = flow(x)
    torch.testing.assert_close(z.sort(dim=1).values, x.sort(dim=1).values)
    assert (log_det == 0).all()
    expected = 0.5 * (x * x).mean(dim=1) + 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(flow_nll_map(z, log_det), expected)


# --- the detector, on a tiny backbone ---------------------------------------------------------


class TinyBackbone(nn.Module):
    """Frozen random convolutions with two stages, at strides 2 and 4."""

    def __init__(self) -> None:
        super().__init__()
        self.out_channels = [8, 12]
        torch.manual_seed(123)
        self.stage1 = nn.Sequential(
            nn.Conv2d(1, 8, 3, 1, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU()
        )
        self.stage2 = nn.Sequential(nn.Conv2d(8, 12, 3, 2, 1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = self.stage1(x)
        return [f1, self.stage2(f1)]


def make_detector(**changes) -> FlowDetector:
    config = Config(
        method="flow",
        size=SIZE,
        channels=1,
        epochs=8,
        batch_size=8,
        lr=2e-3,
        patience=0,
        smooth_sigma=1.0,
    ).replace(**changes)
    return FlowDetector(config, steps=4, backbone=TinyBackbone())


@pytest.fixture(scope="module")
def trained():
    seed_everything(0)
    detector = make_detector().fit(Stripes(32, seed=1), Stripes(8, seed=2), progress=False)
    return detector


def test_training_lowers_the_nll(trained):
    losses = [row["train_loss"] for row in trained.history]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.1
    assert trained.history[-1]["val_loss"] < trained.history[0]["val_loss"]


def test_defect_scores_higher_and_the_map_peaks_on_it(trained):
    good, bad = (
        trained.predict(Stripes(8, seed=3)),
        trained.predict(Stripes(8, defective=True, seed=4)),
    )
    assert good.maps.shape == bad.maps.shape == (8, SIZE, SIZE)
    assert bad.scores.min() > good.scores.max()
    near = 0
    for amap, mask in zip(bad.maps, bad.masks):
        assert amap[mask > 0].mean() > 3 * amap[mask == 0].mean()
        y, x = divmod(int(amap.argmax()), SIZE)
        near += bool(
            mask[max(0, y - 4) : y + 5, max(0, x - 4) : x + 5].any()
        )  # within a coarse cell
    assert near >= 7, f"only {near} of 8 maps peak on their defect"


def test_state_round_trip_gives_identical_scores(trained, tmp_path):
    data = Stripes(4, defective=True, seed=5)
    torch.save(trained.state_dict(), tmp_path / "state.pt")
    fresh = make_detector(seed=7)
    fresh.load_state_dict(torch.load(tmp_path / "state.pt"))
    a, b = trained.predict(data), fresh.predict(data)
    assert (a.scores == b.scores).all() and (a.maps == b.maps).all()
    with pytest.raises(ValueError, match="same settings"):
        FlowDetector(fresh.config, steps=2, backbone=TinyBackbone()).load_state_dict(
            trained.state_dict()
        )


def test_same_seed_same_result():
    data = Stripes(8, defective=True, seed=6)
    runs = []
    for _ in range(2):
        seed_everything(0)
        detector = make_detector(epochs=2).fit(Stripes(16, seed=1), progress=False)
        runs.append(detector.predict(data).scores)
    assert (runs[0] == runs[1]).all()


def test_fit_writes_checkpoint_and_history_and_resumes(tmp_path):
    from anomaly.runs import RunDir, load_checkpoint, read_history

    detector = make_detector(epochs=2).fit(
        Stripes(8, seed=1), checkpoints=RunDir(tmp_path), progress=False
    )
    assert len(read_history(tmp_path)) == 2
    fresh = make_detector()
    load_checkpoint(tmp_path, fresh)
    data = Stripes(2, seed=8)
    assert (fresh.predict(data).scores == detector.predict(data).scores).all()
    resumed = make_detector(epochs=3).fit(
        Stripes(8, seed=1), checkpoints=RunDir(tmp_path), resume=True, progress=False
    )
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]


def test_default_backbone_builds_and_predicts():
    config = Config(method="flow", size=64, channels=1, smooth_sigma=1.0)
    detector = FlowDetector(config, steps=2)
    assert not any(p.requires_grad for p in detector.backbone.parameters())
    with unchecked():  # untrained: the shapes and finiteness of its output
        scores, maps = detector.predict_batch(torch.rand(2, 1, 64, 64))
    assert scores.shape == (2,) and maps.shape == (2, 64, 64) and torch.isfinite(maps).all()


def test_feature_padding_mirrors_the_image_and_keeps_the_grid():
    """feature_pad: the backbone sees the image mirrored outwards, cropped back to its cells."""
    backbone = TinyBackbone()
    backbone.stride = [2, 4]  # what tells the detector how many cells to crop
    config = Config(method="flow", size=SIZE, channels=1, feature_pad=6)
    detector = FlowDetector(config, steps=2, backbone=backbone)
    assert detector.pad == 8  # rounded up to whole cells of both stages
    images = Stripes(2, seed=3).items[0]["image"][None]
    feats = detector.raw_features(images)
    assert [tuple(f.shape[-2:]) for f in feats] == [(SIZE // 2, SIZE // 2), (SIZE // 4, SIZE // 4)]
    mirrored = torch.nn.functional.pad(images, (8, 8, 8, 8), mode="reflect")
    torch.testing.assert_close(feats[0], backbone(mirrored)[0][..., 4:-4, 4:-4])
    plain = FlowDetector(config.replace(feature_pad=0), steps=2, backbone=backbone)
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3))  # away from the zero padding
    torch.testing.assert_close(feats[0][inner], plain.raw_features(images)[0][inner])
    assert not torch.allclose(feats[0][..., 0, :], plain.raw_features(images)[0][..., 0, :])
