"""PatchCore-style patch nearest neighbours (`patchknn`) and the feature backbones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import Textures

from anomaly.config import Config
from anomaly.detectors.patchknn import PatchKNN, greedy_coreset, map_matrix, nearest_distances
from anomaly.features import FeatureExtractor, build_backbone
from anomaly.maps import gaussian_blur
from anomaly.metrics import image_auroc

SIZE = 64


@pytest.fixture(scope="module")
def fitted():
    config = Config(method="patchknn", size=SIZE, batch_size=8, coreset_ratio=0.1)
    return PatchKNN(config).fit(Textures(16, seed=1))


def test_backbone_shapes():
    backbone = build_backbone("efficientnet_lite0")
    maps = backbone(torch.rand(2, 1, SIZE, SIZE))
    assert [m.shape[1] for m in maps] == backbone.out_channels == [40, 112]
    assert [SIZE // m.shape[-1] for m in maps] == backbone.stride == [8, 16]
    feats = FeatureExtractor(backbone)(torch.rand(2, 3, SIZE, SIZE))
    assert feats.shape == (2, 152, SIZE // 8, SIZE // 8)


def test_defects_score_higher_and_maps_peak_on_them(fitted):
    test = Textures(12, defective=6, seed=2)
    pred = fitted.predict(test)
    assert pred.maps.shape == (12, SIZE, SIZE) and pred.scores.shape == (12,)
    assert image_auroc(pred.labels, pred.scores) == 1.0
    np.testing.assert_allclose(pred.scores, pred.maps.reshape(12, -1).max(1), rtol=1e-5)  # map max
    for m, mask in zip(pred.maps[6:], pred.masks[6:]):
        y, x = np.unravel_index(m.argmax(), m.shape)
        ys, xs = np.nonzero(mask)
        assert ys.min() - 8 <= y <= ys.max() + 8 and xs.min() - 8 <= x <= xs.max() + 8


def test_same_seed_same_bank_and_state_round_trip(fitted):
    again = PatchKNN(fitted.config).fit(Textures(16, seed=1))
    assert torch.equal(again.bank, fitted.bank)
    assert len(fitted.bank) == round(0.1 * 16 * (SIZE // fitted.extractor.stride) ** 2)

    restored = PatchKNN(fitted.config)
    restored.load_state_dict(fitted.state_dict())
    images = Textures(4, defective=2, seed=3).images
    assert torch.equal(restored.predict_batch(images)[0], fitted.predict_batch(images)[0])

    other = PatchKNN(fitted.config, layers=("blocks.4",))
    with pytest.raises(RuntimeError, match="memory bank"):
        other.load_state_dict(fitted.state_dict())


def test_greedy_coreset_covers_outliers_and_parts():
    gen = torch.Generator().manual_seed(0)
    points = torch.cat([torch.randn(500, 8, generator=gen) * 0.1, torch.full((1, 8), 5.0)])
    idx = greedy_coreset(points, 10, seed=0)
    assert 500 in idx.tolist() and len(set(idx.tolist())) == 10
    parts = greedy_coreset(points, 10, seed=0, max_part=200)  # three parts of about 167
    assert len(set(parts.tolist())) == 10 and torch.equal(
        parts, greedy_coreset(points, 10, 0, max_part=200)
    )


def test_nearest_distances_match_cdist():
    gen = torch.Generator().manual_seed(0)
    q, bank = torch.randn(50, 16, generator=gen), torch.randn(30, 16, generator=gen)
    d = torch.cdist(q, bank)
    sq = (bank * bank).sum(1)
    torch.testing.assert_close(nearest_distances(q, bank, sq, 1), d.amin(1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        nearest_distances(q, bank, sq, 3),
        d.topk(3, largest=False).values.mean(1),
        atol=1e-4,
        rtol=1e-4,
    )


def test_nearest_distances_same_across_chunk_sizes(monkeypatch):
    import anomaly.detectors.knn as pk

    gen = torch.Generator().manual_seed(1)
    q, bank = torch.randn(101, 8, generator=gen), torch.randn(40, 8, generator=gen)
    sq = (bank * bank).sum(1)
    whole = nearest_distances(q, bank, sq, 2)
    monkeypatch.setattr(pk, "CHUNK_ELEMENTS", 7 * 40)  # 7 rows per block: 15 blocks, a short last
    torch.testing.assert_close(pk.nearest_distances(q, bank, sq, 2), whole)


def test_map_matrices_equal_upsampling_then_blur():
    patches = torch.rand(2, 8, 10)
    want = gaussian_blur(
        torch.nn.functional.interpolate(
            patches[:, None], size=(64, 80), mode="bilinear", align_corners=False
        )[:, 0],
        4.0,
    )
    got = map_matrix(64, 8, 4.0) @ patches @ map_matrix(80, 10, 4.0).T
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_missing_torchvision_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        build_backbone("resnet18")
    message = str(err.value)
    assert str(tmp_path / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "weights='IMAGENET1K_V1'" in message


def test_torchvision_backbone_from_the_hub_cache(tmp_path, monkeypatch):
    torchvision = pytest.importorskip("torchvision")
    (tmp_path / "checkpoints").mkdir()
    net = torchvision.models.resnet18(weights=None).eval()  # random weights stand in for ImageNet's
    torch.save(net.state_dict(), tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    backbone = build_backbone("resnet18")
    x = torch.rand(2, 1, SIZE, SIZE)
    maps = backbone(x)
    assert backbone.out_channels == [128, 256] and backbone.stride == [8, 16]
    with torch.no_grad():  # batch norms folded into the convolutions give the same features
        y = backbone.normalise(x)
        y = net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(y))))))
    torch.testing.assert_close(maps[0], y, atol=1e-4, rtol=1e-4)
    reduced = FeatureExtractor(backbone, max_dim=64)
    assert reduced.dim == 64 and reduced(x).shape == (2, 64, SIZE // 8, SIZE // 8)


def test_encoder_module_as_backbone():
    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 6, 3, stride=4, padding=1)

        def forward_features(self, x):
            return self.conv(x)

    backbone = build_backbone("encoder:runs/ae", in_channels=1, module=Encoder())
    assert backbone.out_channels == [6] and backbone.stride == [4]
    config = Config(method="patchknn", backbone="encoder:runs/ae", coreset_ratio=0.5, size=32)
    scores, maps = (
        PatchKNN(config, module=Encoder()).fit(Textures(4)).predict_batch(torch.rand(2, 1, 32, 32))
    )
    assert scores.shape == (2,) and maps.shape == (2, 32, 32)


def test_mirrored_padding_flattens_the_edge_of_normal_maps():
    """Zero padding makes every edge patch look unusual; mirrored padding (feature_pad) does not."""
    ratios = {}
    for pad in (0, 16):
        config = Config(
            method="patchknn", size=SIZE, batch_size=8, coreset_ratio=0.1, feature_pad=pad
        )
        detector = PatchKNN(config).fit(Textures(16, seed=1))
        assert detector.extractor.pad == pad
        patches = detector.patch_scores(Textures(8, seed=2).images)
        edge = torch.cat([patches[:, 0], patches[:, -1], patches[:, :, 0], patches[:, :, -1]], 1)
        ratios[pad] = float(edge.mean() / patches[:, 2:-2, 2:-2].mean())
    assert ratios[0] > 1.05 and abs(ratios[16] - 1) < 0.02, ratios


def test_image_score_leaves_out_the_border(fitted):
    images = Textures(2, seed=4).images.clone()
    images[:, :, :3, :3] = 1.0  # a bright corner: a defect inside the left-out border
    plain = fitted.predict_batch(images)
    inside = PatchKNN(fitted.config.replace(score_border=8))
    inside.load_state_dict(fitted.state_dict())
    scores, maps = inside.predict_batch(images)
    torch.testing.assert_close(maps, plain[1])  # the map is unchanged, only the score differs
    torch.testing.assert_close(scores, maps[:, 8:-8, 8:-8].amax((1, 2)))
    assert (scores < plain[0]).all()


def test_padded_bank_refuses_an_unpadded_detector(fitted):
    padded = PatchKNN(fitted.config.replace(feature_pad=16)).fit(Textures(4, seed=1))
    assert padded.state_dict()["pad"] == 16
    with pytest.raises(RuntimeError, match="memory bank"):
        fitted.load_state_dict(padded.state_dict())
    old = fitted.state_dict()
    del old["pad"]  # a bank saved before padding existed loads as pad 0
    PatchKNN(fitted.config).load_state_dict(old)
