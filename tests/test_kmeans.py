"""k-means on encoder patch features ("patch", the default), the per-cell k-means and the k rule."""

import numpy as np
import pytest
import torch
from torch import nn

from anomaly.config import Config
from anomaly.detectors import get_detector
from anomaly.detectors.kmeans import (
    KMeansDetector,
    cell_kmeans,
    choose_k,
    encoder_maps,
    span_coordinates,
)


def _images(n: int, seed: int, size: int = 32) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    images = 0.5 + 0.05 * torch.randn(n, 1, size, size, generator=g)
    return [
        {"image": x, "mask": torch.zeros(size, size), "label": 0, "defect": "good", "path": str(i)}
        for i, x in enumerate(images)
    ]


def _unet(width: int = 4):
    torch.manual_seed(0)
    return get_detector("unet")(Config.for_method("unet", width=width, size=32, device="cpu"))


def test_cell_kmeans_finds_each_cells_own_clusters():
    g = torch.Generator().manual_seed(0)
    noise = 0.1 * torch.randn(3, 40, 2, generator=g)
    where = torch.tensor([[3.0, 3.0], [5.0, 0.0], [0.0, -7.0]])  # the second cluster, per cell
    cells = noise.clone()
    cells[:, 20:] += where[:, None]
    centers = cell_kmeans(cells, 2, seed=1)
    assert centers.shape == (3, 2, 2)
    for m in range(3):
        got = sorted(centers[m].tolist())
        want = sorted([cells[m, :20].mean(0).tolist(), cells[m, 20:].mean(0).tolist()])
        assert np.allclose(got, want, atol=1e-5)
    assert torch.allclose(cell_kmeans(cells, 1), cells.mean(1, keepdim=True))


def test_span_coordinates_keep_every_distance_of_long_vectors():
    x = torch.randn(12, 70_000, dtype=torch.float64)  # longer than one Gram chunk
    z = torch.as_tensor(span_coordinates(x))
    assert z.shape == (12, 12)
    assert torch.allclose(torch.cdist(z, z), torch.cdist(x, x), atol=1e-6)


def test_k_rule_reads_clusters_in_long_vectors():
    rng = np.random.default_rng(1)
    blob = rng.normal(size=(45, 3000))
    assert choose_k(blob) == 1
    two = blob + np.repeat([[0.0], [40.0]], [20, 25], axis=0)
    assert choose_k(two) == 2


def test_encoder_maps_are_the_unets_levels():
    det = _unet()
    x = torch.rand(2, 1, 32, 32)
    found = encoder_maps(det.model.eval(), x)
    levels = det.model._encode(x)
    assert sorted(found) == [4, 8, 16, 32]
    for level in levels:
        assert torch.equal(found[level.shape[-1]], level)


def test_patch_kmeans_finds_and_localises_a_small_defect():
    config = Config(method="kmeans", size=32, seed=0, batch_size=8, smooth_sigma=1.0)
    km = KMeansDetector(config, source=_unet()).fit(_images(40, 0))
    assert km.kind == "patch" and km.k == 1  # unstructured normal images: the rule picks 1
    assert km.centers.shape == (16 * 16, 1, 4 * 2 + 4 * 4)  # cells at 1/2 size; levels 1 and 2
    test = torch.stack([d["image"] for d in _images(6, 3)])
    test[2, :, 12:15, 20:23] = 1.0  # a bright 3x3 spot
    scores, maps = km.predict_batch(test)
    assert maps.shape == (6, 32, 32)
    assert int(scores.argmax()) == 2
    assert torch.allclose(scores, maps.flatten(1).amax(1))
    peak = divmod(int(maps[2].argmax()), 32)
    assert 10 <= peak[0] <= 17 and 18 <= peak[1] <= 25


def test_patch_kmeans_with_k_two_clusters_every_cell():
    config = Config(method="kmeans", size=32, seed=0, batch_size=8, k=2)
    km = KMeansDetector(config, source=_unet()).fit(_images(20, 0))
    assert km.k == 2 and km.centers.shape[:2] == (256, 2)
    assert not torch.allclose(km.centers[:, 0], km.centers[:, 1])


class _Pooling(nn.Module):
    def forward_features(self, x):
        return nn.functional.avg_pool2d(x, 8)


class _PoolingRun:
    name = "ae"
    config = Config(method="ae")
    model = _Pooling()

    def features(self, images):
        return self.model.forward_features(images)

    def to(self, device):
        return self


def test_patch_kmeans_refuses_an_encoder_without_the_finer_maps():
    km = KMeansDetector(Config(method="kmeans", batch_size=8), source=_PoolingRun())
    with pytest.raises(ValueError, match="kmeans-features cell"):
        km.fit(_images(4, 0))


def test_kmeans_at_another_size_than_its_encoder_is_refused_with_the_fix(
    scored_ae_run, tmp_path, capsys
):
    """`train --method kmeans --from RUN --size OTHER` trained without a word, on features of
    an encoder that learned every part at another scale; it is refused, naming --size to use."""
    from anomaly.cli import main
    from anomaly.runs import RunDir

    km = tmp_path / "km"
    argv = ["train", "--method", "kmeans", "--from", str(scored_ae_run), "--out", str(km)]
    assert main([*argv, "--size", "32"]) == 2
    err = capsys.readouterr().err
    assert "images at 64 px and takes only those, not 1-channel ones at 32 px" in err
    assert "another scale" in err and "use --size 64 (or leave it out" in err
    assert "Traceback" not in err and not km.exists()
    assert main([*argv, "--size", "64"]) == 0  # its own size, or none, trains as before
    # a config.json edited to another size is refused by the checkpoint's own record
    config = RunDir(km).file(RunDir.CONFIG)
    config.write_text(config.read_text().replace('"size": 64', '"size": 128'))
    assert main(["score", "--run", str(km), "--no-overlays"]) == 2
    assert "config.json disagrees with" in capsys.readouterr().err


def test_a_kmeans_run_trained_at_another_size_before_the_check_still_scores(
    scored_ae_run, tmp_path, capsys, monkeypatch
):
    """A kmeans run trained at another size than its encoder before that was refused (as
    `--backbone encoder:RUN` runs): it loads with a warning and scores, instead of an error
    cut off at 300 characters that called its weights unfit and told score to take --size."""
    from anomaly.cli import main
    from anomaly.detectors import kmeans

    km = tmp_path / "km"
    argv = ["train", "--method", "kmeans", "--from", str(scored_ae_run), "--out", str(km)]
    with monkeypatch.context() as old_code:
        old_code.setattr(kmeans, "check_source", lambda *args, **kwargs: None)
        assert main([*argv, "--size", "32"]) == 0
    capsys.readouterr()
    assert main(["score", "--run", str(km), "--no-overlays"]) == 0
    err = capsys.readouterr().err
    assert (
        "warning: this kmeans run was trained before this was refused, and scores as it did" in err
    )
    assert "not 1-channel ones at 32 px" in err
