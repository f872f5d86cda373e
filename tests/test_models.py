"""Reconstruction networks (anomaly.models) and the loss / anomaly-map recipes (anomaly.maps)."""

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from anomaly.maps import (
    anomaly_map,
    gaussian_blur,
    image_score,
    kl_divergence,
    l2_map,
    reconstruction_loss,
    ssim_loss,
    ssim_map,
)
from anomaly.models import VAE, ConvAE, UNet, build_model, check_signature, model_signature

torch.set_num_threads(1)


def recon_of(model, x):
    out = model(x)
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("method", ["ae", "unet", "vae"])
@pytest.mark.parametrize("size,channels", [(64, 1), (64, 3), (128, 1), (128, 3)])
def test_output_shape_and_range(method, size, channels):
    model = build_model(method, in_channels=channels, width=8, latent=16).eval()
    x = torch.rand(2, channels, size, size)
    with torch.no_grad():
        y = recon_of(model, x)
    assert y.shape == x.shape
    assert 0.0 <= y.min() and y.max() <= 1.0


@pytest.mark.parametrize(
    "cls,expected",
    [
        (UNet, lambda s: (2, 64, s // 8, s // 8)),  # 8 * width channels at H/8
        (ConvAE, lambda s: (2, 16, s // 16, s // 16)),  # latent channels at H/16
        (VAE, lambda s: (2, 16, s // 16, s // 16)),
    ],
)
@pytest.mark.parametrize("size", [64, 128])
def test_forward_features_shape(cls, expected, size):
    model = (
        cls(in_channels=1, width=8) if cls is UNet else cls(in_channels=1, width=8, latent=16)
    ).eval()
    with torch.no_grad():
        assert model.forward_features(torch.rand(2, 1, size, size)).shape == expected(size)


def test_autoencoder_encode_is_forward_features_and_rejects_bad_size():
    model = ConvAE(width=8, latent=16).eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.encode(x), model.forward_features(x))
    with pytest.raises(ValueError, match="divisible by 16"):
        model(torch.rand(1, 1, 72, 72))


def test_unet_transposed_upsampling_and_batch_norm():
    model = UNet(in_channels=1, width=8, bilinear=False, batch_norm=True).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 64, 64)).shape == (2, 1, 64, 64)


def test_vae_eval_deterministic_train_stochastic():
    torch.manual_seed(0)
    model = VAE(in_channels=1, width=8, latent=16)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        model.eval()
        a, mu, logvar = model(x)
        b, _, _ = model(x)
        assert torch.equal(a, b)
        assert torch.allclose(a, model.reconstruct(x))
        assert torch.equal(mu, model.forward_features(x))
        assert mu.shape == logvar.shape == (2, 16, 4, 4)
        model.train()
        c, _, _ = model(x)
        d, _, _ = model(x)
        assert not torch.allclose(c, d)


def test_kl_divergence():
    zero = torch.zeros(2, 4, 3, 3)
    assert kl_divergence(zero, zero).item() == 0.0
    mu, logvar = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    assert kl_divergence(mu, logvar).item() > 0.0
    # KL(N(1, 1) || N(0, 1)) = 1/2 per element
    assert kl_divergence(torch.ones(3), torch.zeros(3)).item() == pytest.approx(0.5)


@pytest.mark.parametrize(
    "method,loss", [("ae", "l2"), ("unet", "l2"), ("vae", "l2"), ("ae", "ssim")]
)
def test_loss_falls_when_overfitting_one_batch(method, loss):
    torch.manual_seed(0)
    model = build_model(method, in_channels=1, width=8, latent=16)
    criterion = reconstruction_loss(loss)
    # smooth blobs, so that a tiny network can learn them in a few steps
    x = gaussian_blur(torch.rand(4, 32, 32), 2.0)
    x = ((x - x.amin()) / (x.amax() - x.amin())).unsqueeze(1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        out = model(x)
        if method == "vae":
            recon, mu, logvar = out
            value = criterion(recon, x) + 1e-3 * kl_divergence(mu, logvar)
        else:
            value = criterion(out, x)
        opt.zero_grad()
        value.backward()
        opt.step()
        losses.append(value.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]


def test_ssim_matches_skimage():
    rng = np.random.default_rng(0)
    for channels in (1, 3):
        a = rng.random((channels, 40, 48))
        b = np.clip(a + 0.2 * rng.standard_normal(a.shape), 0, 1)
        ours = ssim_map(torch.tensor(a)[None], torch.tensor(b)[None])[0].numpy()
        per_channel = [
            structural_similarity(
                a[c],
                b[c],
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1,
                full=True,
            )
            for c in range(channels)
        ]
        reference_mean = np.mean([m for m, _ in per_channel])  # skimage crops 5 px borders
        reference_map = np.mean([s for _, s in per_channel], axis=0)
        assert ours[5:-5, 5:-5].mean() == pytest.approx(reference_mean, abs=1e-3)
        np.testing.assert_allclose(ours, reference_map, atol=1e-6)  # borders too


def test_ssim_identity_and_loss():
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(ssim_map(x, x), torch.ones(2, 32, 32))
    assert ssim_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert ssim_loss(x, torch.rand_like(x)).item() > 0.5


def test_anomaly_map_finds_the_defect():
    x = torch.full((1, 1, 32, 32), 0.5)
    recon = x.clone()
    recon[..., 10:14, 20:24] = 0.9
    for kind in ("l2", "ssim"):
        for sigma in (0.0, 2.0):
            m = anomaly_map(x, recon, kind=kind, sigma=sigma)
            assert m.shape == (1, 32, 32)
            row, col = divmod(int(m[0].argmax()), 32)
            assert 9 <= row <= 14 and 19 <= col <= 24
    assert torch.allclose(anomaly_map(x, recon, "l2", sigma=0), l2_map(x, recon))
    with pytest.raises(ValueError, match="unknown anomaly map kind"):
        anomaly_map(x, recon, kind="l1")


def test_gaussian_blur_preserves_constant_and_mass():
    const = torch.full((2, 20, 24), 0.3)
    assert torch.allclose(gaussian_blur(const, 2.0), const)
    assert torch.allclose(
        gaussian_blur(torch.full((1, 4, 4), 0.3), 3.0), torch.full((1, 4, 4), 0.3)
    )
    spike = torch.zeros(1, 31, 31)
    spike[0, 15, 15] = 1.0
    blurred = gaussian_blur(spike, 2.0)
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert blurred.max() < 0.1 and blurred[0, 15, 15] == blurred.max()
    assert gaussian_blur(spike, 0) is spike


def test_image_score_max_and_topk():
    maps = torch.zeros(2, 4, 5)  # 20 pixels
    maps[0, 0, 0], maps[0, 1, 1], maps[0, 2, 2], maps[0, 3, 3] = 1.0, 0.8, 0.6, 0.4
    maps[1] = 0.25
    assert image_score(maps).tolist() == [1.0, 0.25]
    # top 10% of 20 pixels = 2 pixels; top 20% = 4 pixels
    assert image_score(maps, topk=0.1).tolist() == pytest.approx([0.9, 0.25])
    assert image_score(maps, topk=0.2).tolist() == pytest.approx([0.7, 0.25])
    assert image_score(maps, topk=1e-6).tolist() == [1.0, 0.25]  # at least one pixel
    with pytest.raises(ValueError, match="fraction"):
        image_score(maps, topk=5)


def test_image_score_border_leaves_the_frame_out():
    maps = torch.zeros(2, 12, 12)
    maps[:, 0, 0] = 5.0  # an edge artefact on every image
    maps[1, 6, 6] = 1.0  # a defect in the middle of the second
    assert image_score(maps).tolist() == [5.0, 5.0]  # the maximum sees only the artefact
    assert image_score(maps, border=2).tolist() == [0.0, 1.0]
    assert image_score(maps, topk=1.0, border=1).tolist() == pytest.approx([0.0, 0.01])
    with pytest.raises(ValueError, match="leaves nothing"):
        image_score(maps, border=6)


def test_mean_of_the_unsmoothed_l2_map_is_the_per_image_mse():
    x, y = torch.rand(3, 1, 16, 16), torch.rand(3, 1, 16, 16)
    maps = anomaly_map(x, y, kind="l2", sigma=0.0)
    mse = ((x - y) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(image_score(maps, topk=1.0), mse)


def test_unet_original_size_and_raw_output():
    net = UNet(in_channels=1, width=64, sigmoid=False)
    assert sum(p.numel() for p in net.parameters()) == 7_781_761  # the original's network
    assert net.hparams["sigmoid"] is False
    assert "sigmoid" not in UNet(width=4).hparams  # older checkpoints keep their signature
    small = UNet(in_channels=1, width=4, sigmoid=False).eval()
    with torch.no_grad():
        small.head.bias.fill_(-3.0)  # pushes the raw output below 0
        out = small(torch.rand(1, 1, 16, 16))
    assert out.min() < 0  # no sigmoid: the raw 1x1 convolution, as the original


def test_reconstruction_loss_kinds():
    x = torch.rand(2, 1, 32, 32)
    for kind in ("l2", "ssim"):
        loss = reconstruction_loss(kind)
        assert loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
        assert loss(torch.rand_like(x), x).item() > 0.0
    with pytest.raises(ValueError, match="unknown reconstruction loss"):
        reconstruction_loss("l3")


def test_build_model_and_signature():
    model = build_model("unet", in_channels=3, width=8, latent=99)
    assert isinstance(model, UNet)
    assert model_signature(model) == {
        "class": "UNet",
        "in_channels": 3,
        "width": 8,
        "depth": 4,
        "bilinear": True,
        "batch_norm": False,
    }
    assert model_signature(build_model("vae", 1, 8, 16))["latent"] == 16
    check_signature(model_signature(model), model)
    with pytest.raises(ValueError, match="width: 16 in checkpoint vs 8 now"):
        check_signature({**model_signature(model), "width": 16}, model)
    with pytest.raises(ValueError, match="unknown reconstruction method 'gan'.*'ae'"):
        build_model("gan")


def test_denoising_training_feeds_corrupted_images_and_compares_with_clean():
    from anomaly.config import Config
    from anomaly.detectors.reconstruction import AutoEncoderDetector

    cfg = Config(method="ae", size=32, channels=3, width=4, latent=4, corrupt=1.0, loss="l2")
    det = AutoEncoderDetector(cfg)
    seen = []
    det.model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    images = torch.rand(4, 3, 32, 32)
    torch.manual_seed(0)
    det.model.train()
    loss = det.step(images)
    assert not torch.equal(seen[-1], images)  # every image got a synthetic anomaly
    recon = det.model(seen[-1])
    assert loss.item() == pytest.approx(((recon - images) ** 2).mean().item(), rel=1e-5)  # vs clean
    det.model.eval()
    det.step(images)
    assert torch.equal(seen[-1], images)  # validation sees clean images
    det.config = cfg.replace(corrupt=0.0)
    det.model.train()
    det.step(images)
    assert torch.equal(seen[-1], images)  # corrupt 0 = the plain auto-encoder


def test_corrupt_must_be_a_fraction():
    from anomaly.config import Config
    from anomaly.detectors.reconstruction import UNetDetector

    with pytest.raises(ValueError, match=r"in \[0, 1\]; got 1.5"):
        UNetDetector(Config(method="unet", corrupt=1.5))
