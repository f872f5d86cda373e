"""The original project's recipe (`--recipe original`), the image scores and k-means features."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_config

from anomaly.cli import main
from anomaly.config import Config
from anomaly.detectors import get_detector
from anomaly.detectors.inputs import unchecked
from anomaly.detectors.kmeans import KMeansDetector, choose_k
from anomaly.original import original_overlay
from anomaly.pipeline import load_run, train_run


def test_original_recipe_is_the_original_settings():
    c = Config.for_method("unet", recipe="original")
    assert (c.width, c.channels, c.loss, c.lr, c.batch_size) == (64, 1, "l2", 1e-3, 8)
    assert (c.smooth_sigma, c.score_topk, c.score_border, c.corrupt) == (0.0, 1.0, 0, 0.0)
    net = get_detector("unet")(c).model
    assert sum(p.numel() for p in net.parameters()) == 7_781_761  # the original's UNet
    assert net.sigmoid is False  # its output is the raw 1x1 convolution
    assert get_detector("unet")(Config.for_method("unet")).model.sigmoid is False  # default too
    assert get_detector("unet")(Config(method="unet")).model.sigmoid is True  # older runs
    assert Config.for_method("unet", recipe="original", width=8).width == 8  # flags still win
    with pytest.raises(ValueError, match="not for ae"):
        Config.for_method("ae", recipe="original")


def test_original_image_score_is_the_per_image_mse():
    det = get_detector("unet")(Config.for_method("unet", recipe="original", width=4)).to("cpu")
    x = torch.rand(3, 1, 32, 32)
    with unchecked():  # untrained, at 32 px: the score's arithmetic alone
        scores, maps = det.predict_batch(x)
    mse = ((det.reconstruct(x) - x) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(scores, mse, rtol=1e-5)
    assert torch.allclose(maps, ((det.reconstruct(x) - x) ** 2)[:, 0])  # unsmoothed


class FakeSource:
    """A stand-in for a trained run: its 'bottleneck' is the image average-pooled 4x4."""

    name = "unet"
    config = Config(method="unet", size=32)

    def features(self, images):
        return F.avg_pool2d(images, 4).repeat(1, 3, 1, 1) * torch.tensor([1.0, 10.0, 100.0]).view(
            1, 3, 1, 1
        )

    def to(self, device):
        return self

    def modules(self):
        return {}


def _data(n, seed, size=32):
    g = torch.Generator().manual_seed(seed)
    images = 0.5 + 0.05 * torch.randn(n, 1, size, size, generator=g)
    return [
        {
            "image": img,
            "mask": torch.zeros(size, size),
            "label": 0,
            "defect": "good",
            "path": str(i),
        }
        for i, img in enumerate(images)
    ]


def test_original_kmeans_uses_the_max_pooled_bottleneck_unstandardised():
    config = Config(method="kmeans", recipe="original", seed=0, batch_size=8, size=32)
    km = KMeansDetector(config, source=FakeSource()).fit(_data(40, 0))
    assert (km.kind, km.k) == ("original", 2)
    x = torch.stack([d["image"] for d in _data(5, 1)])
    vectors = F.max_pool2d(FakeSource().features(x), 2).flatten(1)
    assert km.centers.shape == (2, vectors.shape[1])
    expected = torch.cdist(vectors, km.centers).min(dim=1).values
    scores, maps = km.predict_batch(x)
    assert torch.allclose(scores, expected, rtol=1e-4)
    assert maps.shape == (5, 32, 32)


def test_flat_kmeans_standardises_each_element():
    config = Config(method="kmeans", kmeans_features="flat", k=1, seed=0, batch_size=8, size=32)
    train = _data(40, 0)
    km = KMeansDetector(config, source=FakeSource()).fit(train)
    feats = FakeSource().features(torch.stack([d["image"] for d in train])).flatten(1)
    z = (feats - feats.mean(0)) / feats.std(0)
    assert torch.allclose(km.centers[0], z.mean(0), atol=1e-4)  # k = 1: the standardised mean
    x = torch.stack([d["image"] for d in _data(4, 2)])
    zx = (FakeSource().features(x).flatten(1) - feats.mean(0)) / feats.std(0)
    assert torch.allclose(km.predict_batch(x)[0], zx.norm(dim=1), rtol=1e-3)


def test_cell_kmeans_finds_and_localises_a_small_defect():
    config = Config(
        method="kmeans", kmeans_features="cell", seed=0, batch_size=8, smooth_sigma=0.0, size=32
    )
    km = KMeansDetector(config, source=FakeSource()).fit(_data(40, 0))
    assert km.kind == "cell" and km.k == 1  # unstructured normal data: the rule picks 1
    test = torch.stack([d["image"] for d in _data(6, 3)])
    test[3, :, 20:24, 4:8] = 1.0  # a bright 4x4 spot: one bottleneck cell
    scores, maps = km.predict_batch(test)
    assert int(scores.argmax()) == 3
    peak = divmod(int(maps[3].argmax()), 32)
    assert 18 <= peak[0] <= 25 and 2 <= peak[1] <= 9


def test_k_rule_finds_clusters_only_where_there_are_some():
    rng = np.random.default_rng(0)
    blob = rng.normal(size=(60, 5))
    assert choose_k(blob) == 1
    three = np.concatenate([blob[:20], blob[20:40] + 20, blob[40:] - 20])
    assert choose_k(three) == 3


def test_original_overlay_paints_only_where_the_reconstruction_is_brighter():
    image = np.full((8, 8), 0.5, np.float32)
    recon = image.copy()
    recon[:, :4] += 0.1  # reconstruction brighter: painted
    recon[:, 4:] -= 0.1  # input brighter (a bright defect): the original left it grey
    out = original_overlay(image, recon).astype(int)
    assert (out[:, :4, 0] > out[:, :4, 1] + 100).all()
    assert (out[:, 4:, 0] == out[:, 4:, 1]).all()


def test_original_recipe_runs_end_to_end_through_the_cli(tiny_cookies, tmp_path, capsys):
    unet, km = tmp_path / "unet", tmp_path / "km"
    flags = [
        "--data",
        str(tiny_cookies),
        "--size",
        "32",
        "--epochs",
        "1",
        "--width",
        "4",
        "--device",
        "cpu",
    ]
    assert (
        main(["train", "--method", "unet", "--recipe", "original", *flags, "--out", str(unet)]) == 0
    )
    assert main(["train", "--method", "kmeans", "--from", str(unet), "--out", str(km)]) == 0
    assert main(["score", "--run", str(km), "--no-overlays"]) == 0
    detector = load_run(km, device="cpu")
    assert (detector.kind, detector.k, detector.config.recipe) == ("original", 2, "original")
    assert detector.source.model.sigmoid is False


def test_project_kmeans_run_defaults_to_patch_cells(tiny_cookies, tmp_path):
    run = tmp_path / "unet"
    train_run(tiny_config(tiny_cookies, method="unet", epochs=1), run, progress=False)
    train_run(
        tiny_config(tiny_cookies, method="kmeans", source_run=str(run), k=0, kmeans_features=""),
        tmp_path / "km",
        progress=False,
    )
    km = load_run(tmp_path / "km", device="cpu")
    assert km.kind == "patch" and km.k >= 1
    assert km.centers.shape[0] == (64 // 2) ** 2  # one set of centroids per cell at 1/2 size
