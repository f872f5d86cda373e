"""Reconstruction losses and anomaly maps: how far a reconstruction is from its input, per pixel.

Everything is batched torch: images are [B, C, H, W] in [0, 1], maps are [B, H, W].

- `l2_map`: squared error, averaged over channels (the original project's difference image).
- `ssim_map`: per-pixel structural similarity (Wang et al., "Image Quality Assessment: From Error
  Visibility to Structural Similarity", IEEE TIP 2004), with an 11x11 Gaussian window of sigma
  1.5, as used for anomaly maps by Bergmann et al., "Improving Unsupervised Defect Segmentation by
  Applying Structural Similarity to Autoencoders", VISAPP 2019. It matches
  `skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1, full=True)` to float precision, borders included
  (both mirror the image at its edges, scipy.ndimage's "reflect" mode).
- `anomaly_map`: 1 - SSIM or L2, then Gaussian smoothing; `image_score`: max or top-k mean,
  optionally leaving out a border.
- `kl_divergence`: the VAE's KL term.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

C1 = 0.01**2  # SSIM stabilisers for data_range = 1: (K1 * L)^2 and (K2 * L)^2
C2 = 0.03**2


def gaussian_kernel1d(sigma: float, radius: int, device=None, dtype=None) -> torch.Tensor:
    """Normalised 1-D Gaussian of 2 * radius + 1 taps."""
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype or torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _pad_symmetric(x: torch.Tensor, r: int) -> torch.Tensor:
    """Pad the last two dims by r, mirroring the edge pixel too (d c b a | a b c d | d c b a),
    which is scipy.ndimage's "reflect" mode; falls back to edge replication when r > size."""
    if r > min(x.shape[-2:]):
        return F.pad(x, (r, r, r, r), mode="replicate")
    x = torch.cat([x[..., :r].flip(-1), x, x[..., -r:].flip(-1)], dim=-1)
    return torch.cat([x[..., :r, :].flip(-2), x, x[..., -r:, :].flip(-2)], dim=-2)


def _separable(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Filter each channel of [B, C, H, W] with `kernel` along H and W; size kept, reflect pad."""
    c, r = x.shape[1], (len(kernel) - 1) // 2
    if r == 0:
        return x * kernel[0]
    x = _pad_symmetric(x, r)
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Smooth maps [B, H, W] (or [H, W]) with a Gaussian of `sigma` pixels; sigma 0 = unchanged.

    The kernel is cut at 4 sigma and borders are mirrored, as `scipy.ndimage.gaussian_filter`.
    """
    if sigma <= 0:
        return maps
    radius = int(4 * sigma + 0.5)
    kernel = gaussian_kernel1d(sigma, radius, maps.device, maps.dtype)
    shape = maps.shape
    out = _separable(maps.reshape(-1, 1, *shape[-2:]), kernel)
    return out.reshape(shape)


def ssim_map(
    x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Per-pixel SSIM of images [B, C, H, W] in [0, 1], averaged over channels: [B, H, W].

    Local means, variances and covariance use a `window`-tap Gaussian of `sigma` (population
    statistics, no sample correction); the output has the input's size (mirrored borders).
    """
    if x.shape != y.shape:
        raise ValueError(
            f"ssim_map needs images of one shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    kernel = gaussian_kernel1d(sigma, window // 2, x.device, x.dtype)
    c = x.shape[1]
    stats = _separable(torch.cat([x, y, x * x, y * y, x * y], dim=1), kernel)
    mx, my, mxx, myy, mxy = stats.split(c, dim=1)
    vx, vy, cxy = mxx - mx * mx, myy - my * my, mxy - mx * my
    s = ((2 * mx * my + C1) * (2 * cxy + C2)) / ((mx * mx + my * my + C1) * (vx + vy + C2))
    return s.mean(dim=1)


def ssim_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - mean SSIM over the batch (0 for identical images)."""
    return 1.0 - ssim_map(x, y).mean()


def l2_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared error per pixel, averaged over channels: [B, H, W]."""
    return ((x - y) ** 2).mean(dim=1)


def l2_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error."""
    return F.mse_loss(x, y)


def ssim_l1_loss(x: torch.Tensor, y: torch.Tensor, alpha: float = 0.84) -> torch.Tensor:
    """alpha * (1 - SSIM) + (1 - alpha) * L1, the mix of Zhao et al., "Loss Functions for Image
    Restoration with Neural Networks", IEEE TCI 2017. The L1 part keeps flat regions at the right
    brightness, where SSIM alone gives little gradient."""
    return alpha * ssim_loss(x, y) + (1 - alpha) * F.l1_loss(x, y)


def reconstruction_loss(kind: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss for `kind`: "l2" = mean squared error; "ssim" = `ssim_l1_loss`
    (0.84 (1 - SSIM) + 0.16 L1). Call it as loss(recon, images) -> scalar."""
    losses = {"l2": l2_loss, "ssim": ssim_l1_loss}
    if kind not in losses:
        raise ValueError(f"unknown reconstruction loss {kind!r}; choose one of {sorted(losses)}")
    return losses[kind]


def anomaly_map(
    x: torch.Tensor, recon: torch.Tensor, kind: str = "l2", sigma: float = 2.0
) -> torch.Tensor:
    """Per-pixel anomaly map [B, H, W] of images x and their reconstructions, higher = worse.

    Args:
        x, recon: images [B, C, H, W] in [0, 1].
        kind: "l2" = squared error (channel mean); "ssim" = 1 - SSIM (11x11 window, sigma 1.5).
        sigma: Gaussian smoothing of the map, in pixels (0 = none).
    """
    if kind == "l2":
        maps = l2_map(x, recon)
    elif kind == "ssim":
        maps = 1.0 - ssim_map(x, recon)
    else:
        raise ValueError(f"unknown anomaly map kind {kind!r}; choose 'l2' or 'ssim'")
    return gaussian_blur(maps, sigma)


def image_score(maps: torch.Tensor, topk: float = 0.0, border: int = 0) -> torch.Tensor:
    """One score per map [B, H, W] -> [B]: the maximum, or the mean of the top `topk` fraction
    of pixels when 0 < topk <= 1 (at least one pixel). Top-k is less sensitive to one hot pixel;
    topk = 1 is the map's mean (the per-image MSE for an unsmoothed L2 map).

    `border` pixels at each edge are left out: a network's zero padding leaves an error there
    on every image, normal or not, which a maximum would pick up instead of the defect.
    """
    if not 0.0 <= topk <= 1.0:
        raise ValueError(f"topk is a fraction of the pixels, in [0, 1]; got {topk}")
    if border < 0 or 2 * border >= min(maps.shape[-2:]):
        raise ValueError(
            f"border {border} leaves nothing of a {tuple(maps.shape[-2:])} map; "
            f"use at most {(min(maps.shape[-2:]) - 1) // 2} pixels"
        )
    if border:
        maps = maps[..., border:-border, border:-border]
    flat = maps.reshape(maps.shape[0], -1)
    if topk == 0.0:
        return flat.amax(dim=1)
    k = max(1, math.ceil(topk * flat.shape[1] - 1e-9))
    return flat.topk(k, dim=1).values.mean(dim=1)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)), averaged over all elements (0 when mu=0, logvar=0)."""
    return (-0.5 * (1 + logvar - mu * mu - logvar.exp())).mean()
