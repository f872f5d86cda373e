"""Reconstruction detectors: auto-encoder, UNet and VAE trained on normal images only.

Where the reconstruction of a test image fails, the difference map marks the defect: the
original project's method. The map is the L2 or SSIM difference (Bergmann et al., "Improving
Unsupervised Defect Segmentation by Applying Structural Similarity to Autoencoders", 2019),
Gaussian-smoothed; the image score is its maximum (or the mean of its top fraction).
"""

from __future__ import annotations

import torch

from anomaly.detectors.base import Detector, register
from anomaly.maps import anomaly_map, image_score, kl_divergence, reconstruction_loss
from anomaly.models import build_model


class ReconstructionDetector(Detector):
    """Shared recipe; subclasses only pick the network by their registered name."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.model = build_model(self.name, in_channels=config.channels, width=config.width,
                                 latent=config.latent)
        self._loss = reconstruction_loss(config.loss)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model}

    def step(self, images: torch.Tensor) -> torch.Tensor:
        """Training/validation loss of one batch (the reconstruction loss, plus KL for the VAE)."""
        out = self.model(images)
        if isinstance(out, tuple):  # VAE in training mode: (recon, mu, logvar)
            recon, mu, logvar = out
            return self._loss(recon, images) + self.config.kl_weight * kl_divergence(mu, logvar)
        return self._loss(out, images)

    def fit(self, train_data, val_data=None, run_dir=None, resume: bool = False, progress: bool = True):
        return self.train_steps(train_data, val_data, run_dir, resume=resume, progress=progress)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        out = self.model(images)
        return out[0] if isinstance(out, tuple) else out

    @torch.no_grad()
    def predict_batch(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        recon = self.reconstruct(images)
        maps = anomaly_map(images, recon, kind=self.config.loss, sigma=self.config.smooth_sigma)
        return image_score(maps, self.config.score_topk), maps

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The bottleneck feature map [B, C, h, w] (what the k-means detector clusters)."""
        self.model.eval()
        return self.model.forward_features(images)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])


@register("ae")
class AutoEncoderDetector(ReconstructionDetector):
    """Convolutional auto-encoder with a real bottleneck (no skip connections)."""

    defaults = {"size": 128, "channels": 1, "width": 32, "latent": 64, "epochs": 10}


@register("unet")
class UNetDetector(ReconstructionDetector):
    """The original project's UNet: skip connections make it sharp, and let it copy defects through.

    The original trained width 64 at 512 px for 1000 GPU epochs; on a 2-core CPU that costs
    about 50 s per image and step (benchmarks/unet_cost.py), so the default is width 16 at
    128 px, which keeps the architecture and trains in minutes.
    """

    defaults = {"size": 128, "channels": 1, "width": 16, "epochs": 8}


@register("vae")
class VAEDetector(ReconstructionDetector):
    """Variational auto-encoder; the map comes from the reconstruction of the mean."""

    defaults = {"size": 128, "channels": 1, "width": 32, "latent": 64, "epochs": 10}
