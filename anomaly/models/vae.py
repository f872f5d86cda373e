"""Variational autoencoder with a spatial bottleneck, for reconstruction-based anomaly detection.

Kingma and Welling, "Auto-Encoding Variational Bayes", ICLR 2014; used for anomaly detection by
An and Cho, "Variational Autoencoder based Anomaly Detection using Reconstruction Probability"
(2015). The encoder and decoder are those of `ConvAE`; the encoder's last 1x1 convolution gives
`2 * latent` channels, split into the mean and log-variance of a Gaussian over a spatial code
[latent, H / 2**depth, W / 2**depth]. The KL term of the loss is `anomaly.maps.kl_divergence`.
"""

from __future__ import annotations

import torch
from torch import nn

from anomaly.models.autoencoder import Decoder, Encoder


class VAE(nn.Module):
    """Convolutional VAE: image [B, C, H, W] in [0, 1] -> (reconstruction, mu, logvar).

    `forward` always returns the tuple `(recon, mu, logvar)`. In training mode the code is sampled
    (z = mu + exp(logvar / 2) * noise, the reparameterisation trick); in eval mode z = mu, so the
    reconstruction is deterministic. `reconstruct(x)` returns decode(mu) in either mode, and
    `forward_features(x)` returns mu. The log-variance is clamped to [-10, 10] for stability.

    Args:
        in_channels: image channels (1 = grayscale, 3 = RGB); the output has the same number.
        width: channels of the first level; level i has `width * 2**min(i, 3)`.
        latent: channels of the code, which is [latent, H / 2**depth, W / 2**depth].
        depth: number of halvings; H and W must be divisible by 2**depth (16 for depth 4).
    """

    def __init__(
        self, in_channels: int = 1, width: int = 32, latent: int = 64, depth: int = 4
    ) -> None:
        super().__init__()
        self.hparams = {
            "in_channels": in_channels,
            "width": width,
            "latent": latent,
            "depth": depth,
        }
        self.encoder = Encoder(in_channels, width, 2 * latent, depth)
        self.decoder = Decoder(latent, width, in_channels, depth)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (mu, logvar), each [B, latent, H / 2**depth, W / 2**depth]."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-10.0, 10.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean mu, [B, latent, H / 2**depth, W / 2**depth]."""
        return self.encode(x)[0]

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """decode(mu): the deterministic reconstruction, whatever the mode."""
        return self.decoder(self.encode(x)[0])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return self.decoder(z), mu, logvar
