"""DRAEM: Perlin masks, anomaly synthesis, the two networks, training, the detector contract."""

from __future__ import annotations

import pytest
import torch
from helpers import Blobs

from anomaly.config import Config
from anomaly.detectors.draem import DraemDetector, focal_loss, pool_size
from anomaly.detectors.inputs import unchecked
from anomaly.models.draem import DiscriminativeNet, ReconstructiveNet
from anomaly.runs import RunDir
from anomaly.synthetic import fractal_texture, image_texture, perlin_mask, perlin_noise, synthesize


@pytest.fixture(autouse=True)
def one_thread():
    """These networks are tiny: one thread is faster than two fighting over a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_perlin_noise_shape_range_and_any_size():
    n = perlin_noise((40, 24), (4, 3), _gen(0))
    assert n.shape == (40, 24)
    assert n.abs().max() <= 1.5 and n.std() > 0.05


@pytest.mark.parametrize(
    ("shape", "res"), [((40, 24), (4, 3)), ((64, 64), (1, 1)), ((37, 100), (5, 8))]
)
def test_perlin_noise_is_the_textbook_formula(shape, res):
    """Each pixel blends its cell's four corner gradients (dotted with its offsets) by the fade:
    written out pixel grid by pixel grid, the same numbers to the last bit."""
    import math

    h, w = shape
    angles = 2 * math.pi * torch.rand(res[0] + 1, res[1] + 1, generator=_gen(5))
    grads = torch.stack([torch.cos(angles), torch.sin(angles)], -1)
    y = torch.arange(h, dtype=torch.float32) * (res[0] / h)
    x = torch.arange(w, dtype=torch.float32) * (res[1] / w)
    yi, xi = y.floor().long(), x.floor().long()
    fy, fx = (y - yi)[:, None].expand(h, w), (x - xi)[None, :].expand(h, w)
    dot = [
        [
            (g := grads[(yi + dy)[:, None], (xi + dx)[None, :]])[..., 0] * (fy - dy)
            + g[..., 1] * (fx - dx)
            for dx in (0, 1)
        ]
        for dy in (0, 1)
    ]
    fade = lambda t: t * t * t * (t * (t * 6 - 15) + 10)
    top, bottom = (torch.lerp(row[0], row[1], fade(fx)) for row in dot)
    expected = math.sqrt(2) * torch.lerp(top, bottom, fade(fy))
    assert torch.equal(perlin_noise(shape, res, _gen(5)), expected)


def test_perlin_masks_binary_mostly_two_valued_and_seeded():
    masks = perlin_mask(40, (32, 32), _gen(3))
    assert masks.shape == (40, 32, 32)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    two_valued = [(m.min() == 0) & (m.max() == 1) for m in masks]
    assert sum(bool(t) for t in two_valued) >= 0.75 * len(masks)
    assert torch.equal(masks, perlin_mask(40, (32, 32), _gen(3)))
    assert not torch.equal(masks, perlin_mask(40, (32, 32), _gen(4)))


def test_textures_in_range():
    x = torch.rand(4, 3, 32, 32)
    for t in (image_texture(x, _gen(0)), fractal_texture(4, 3, (32, 32), _gen(0))):
        assert t.shape == x.shape and t.min() >= 0 and t.max() <= 1


def test_synthesis_changes_only_masked_pixels_and_is_seeded():
    x = torch.rand(16, 3, 32, 32)
    aug, masks = synthesize(x, _gen(1))
    assert aug.shape == x.shape and masks.shape == (16, 32, 32)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    outside = (masks == 0)[:, None].expand_as(x)
    assert torch.equal(aug[outside], x[outside])
    has = masks.flatten(1).amax(dim=1) > 0
    assert 0 < has.sum() < 16  # some samples altered, some left normal
    assert (aug[has] != x[has]).any()
    aug2, masks2 = synthesize(x, _gen(1))
    assert torch.equal(aug, aug2) and torch.equal(masks, masks2)
    aug_all, masks_all = synthesize(x[:1], _gen(2), p_anomaly=1.0)  # one image: procedural texture
    assert masks_all.sum() > 0 and aug_all.min() >= 0 and aug_all.max() <= 1


@pytest.mark.parametrize("norm", ["group", "batch"])
def test_network_shapes(norm):
    x = torch.rand(2, 3, 32, 32)
    recon = ReconstructiveNet(3, width=4, depth=3, norm=norm)(x)
    assert recon.shape == x.shape and recon.min() >= 0 and recon.max() <= 1
    logits = DiscriminativeNet(6, width=4, depth=3, norm=norm)(torch.cat([x, recon], 1))
    assert logits.shape == (2, 2, 32, 32)
    with pytest.raises(ValueError, match="divisible"):
        ReconstructiveNet(3, width=4, depth=3)(torch.rand(1, 3, 36, 36))


def test_focal_loss_and_pool_size():
    target = torch.randint(0, 2, (2, 8, 8))
    good = torch.stack([1 - target, target], 1).float() * 20 - 10
    assert focal_loss(good, target) < 1e-6 < focal_loss(-good, target)
    assert pool_size(256) == 21 and pool_size(128) == 11 and pool_size(32) % 2 == 1


def test_loss_falls_on_one_batch():
    torch.manual_seed(0)
    det = DraemDetector(Config(size=32, channels=1, width=8, seed=0))
    images = torch.stack([Blobs(8)[i]["image"] for i in range(8)])
    params = [p for m in det.modules().values() for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    losses = []
    for _ in range(8):
        torch.manual_seed(1)  # the same synthetic anomalies each step
        loss = det.step(images)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0]


def test_fit_predict_and_state_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = Config(method="draem", size=32, channels=1, width=8, epochs=2, batch_size=4, seed=0)
    det = DraemDetector(cfg).fit(
        Blobs(8), Blobs(4, seed=1), checkpoints=RunDir(tmp_path), progress=False
    )
    assert len(det.history) == 2 and (tmp_path / "model.pt").exists()
    pred = det.predict(Blobs(6, seed=2))
    assert pred.scores.shape == (6,) and pred.maps.shape == (6, 32, 32)
    assert ((pred.maps >= 0) & (pred.maps <= 1)).all()

    images = torch.stack([Blobs(3, seed=3)[i]["image"] for i in range(3)])
    scores, maps = det.predict_batch(images)
    assert scores.shape == (3,) and maps.shape == (3, 32, 32)
    other = DraemDetector(cfg)
    other.load_state_dict(det.state_dict())
    scores2, maps2 = other.predict_batch(images)
    assert torch.equal(scores, scores2) and torch.equal(maps, maps2)
    with unchecked():  # an untrained network: only the shape of its score matters here
        topk, _ = DraemDetector(cfg.replace(score_topk=0.01)).predict_batch(images)
    assert topk.shape == (3,)
    narrow = DraemDetector(cfg.replace(width=4))
    narrow.load_state_dict(det.state_dict())  # rebuilt from the saved hyperparameters
    assert torch.equal(narrow.predict_batch(images)[0], scores)
    with pytest.raises(RuntimeError, match="do not fit"):
        DraemDetector(cfg.replace(channels=3)).load_state_dict(det.state_dict())


def test_validation_anomalies_repeat_each_epoch():
    det = DraemDetector(Config(size=32, channels=1, width=4, seed=0))
    for m in det.modules().values():
        m.eval()
    images = torch.stack([Blobs(4)[i]["image"] for i in range(4)])
    weights = {k: v.clone() for k, v in det.reconstructive.state_dict().items()}
    with torch.no_grad():
        first = det.step(images)
        det.reconstructive.train()
        det.step(images)  # a training step in between resets the validation generator
        det.reconstructive.load_state_dict(weights)  # (undo any BatchNorm statistics)
        det.reconstructive.eval()
        assert torch.equal(first, det.step(images))


def test_odd_image_size_is_padded():
    det = DraemDetector(Config(size=40, channels=3, width=4))
    with unchecked():  # untrained, and not square: the network's padding alone
        scores, maps = det.predict_batch(torch.rand(2, 3, 40, 36))
    assert scores.shape == (2,) and maps.shape == (2, 40, 36)


def test_a_size_too_small_for_its_anomalies_is_refused(tiny_cookies, tmp_path, capsys):
    """At 1 px no synthetic anomaly comes out, so DRAEM learned nothing and said nothing (a
    walkthrough trained it at --size 1); at 8 px nearly all do. train refuses below 8 px."""
    from anomaly.cli import main

    def made(size: int) -> float:
        x = torch.rand(16, 3, size, size, generator=_gen(0))
        _, masks = synthesize(x, generator=_gen(1), p_anomaly=1.0)
        return float(masks.flatten(1).amax(1).mean())

    assert made(1) == 0 and made(8) >= 0.9
    out = tmp_path / "run"
    args = ["train", "--method", "draem", "--data", str(tiny_cookies), "--out", str(out)]
    assert main([*args, "--size", "4", "--epochs", "1"]) == 2
    assert "--size 4 is too small for draem" in capsys.readouterr().err and not out.exists()
