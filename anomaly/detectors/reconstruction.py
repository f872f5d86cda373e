"""Reconstruction detectors: auto-encoder, UNet and VAE trained on normal images only.

Where the reconstruction of a test image fails, the difference map marks the defect: the
original project's method. The map is the L2 or SSIM difference (Bergmann et al., "Improving
Unsupervised Defect Segmentation by Applying Structural Similarity to Autoencoders", 2019),
Gaussian-smoothed; the image score is its maximum, or the mean of its top fraction (all of it:
the per-image MSE, the UNet's default), optionally leaving a border out.
"""

from __future__ import annotations

import torch

from anomaly.detectors.base import Detector
from anomaly.detectors.registry import register
from anomaly.maps import anomaly_map, image_score, kl_divergence, reconstruction_loss
from anomaly.models import UNet, build_model
from anomaly.synthetic import synthesize


class ReconstructionDetector(Detector):
    """Shared recipe; subclasses only pick the network by their registered name."""

    def __init__(self, config) -> None:
        super().__init__(config)
        if not 0.0 <= config.corrupt <= 1.0:
            raise ValueError(
                f"corrupt is the fraction of training images given a synthetic "
                f"anomaly, in [0, 1]; got {config.corrupt}"
            )
        if self.name == "unet":  # output "raw": the last 1x1 convolution, as the original
            self.model = UNet(
                in_channels=config.channels, width=config.width, sigmoid=config.output == "sigmoid"
            )
        else:
            self.model = build_model(
                self.name, in_channels=config.channels, width=config.width, latent=config.latent
            )
        self._loss = reconstruction_loss(config.loss)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model}

    def step(self, images: torch.Tensor) -> torch.Tensor:
        """Training/validation loss of one batch (the reconstruction loss, plus KL for the VAE).

        With `config.corrupt` > 0, that fraction of the training images gets a synthetic anomaly
        (`anomaly.synthetic`, as DRAEM's) and the loss compares the output with the clean image:
        the network learns to replace what is not normal, not to copy it. Validation images stay
        clean, so the validation loss is the plain reconstruction error.
        """
        inputs = images
        if self.config.corrupt > 0 and self.model.training:
            inputs, _ = synthesize(images, p_anomaly=self.config.corrupt)
        out = self.model(inputs)
        if isinstance(out, tuple):  # VAE in training mode: (recon, mu, logvar)
            recon, mu, logvar = out
            return self._loss(recon, images) + self.config.kl_weight * kl_divergence(mu, logvar)
        return self._loss(out, images)

    def fit(
        self,
        train_data,
        val_data=None,
        *,
        progress: bool = True,
        resume: bool = False,
        checkpoints=None,
    ):
        return self.train_steps(
            train_data, val_data, checkpoints=checkpoints, resume=resume, progress=progress
        )

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        out = self.model(images)
        return out[0] if isinstance(out, tuple) else out

    @torch.no_grad()
    def predict_batch(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        recon = self.reconstruct(images)
        maps = anomaly_map(images, recon, kind=self.config.loss, sigma=self.config.smooth_sigma)
        return image_score(maps, self.config.score_topk, self.config.score_border), maps

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
    """Convolutional auto-encoder with a real bottleneck (no skip connections).

    Defaults, chosen on the cookie benchmark (image AUROC; one run each, seed 0): RGB, because
    colour defects fade in grayscale; SSIM loss and map (Bergmann et al.); denoising training
    (`corrupt` 0.5: half of the training images get a synthetic anomaly the network must remove,
    so it learns to replace what is not normal rather than copy it); 30 epochs; and the image
    score as the mean of the top 1 % of the map, which one hot pixel cannot decide. Together they
    rank far better than the plain grayscale L2 auto-encoder; width 32 instead of 16 gained
    little for twice the time (numbers in docs/measurements.md).
    """


@register("unet")
class UNetDetector(ReconstructionDetector):
    """The original project's UNet, at width 16 and 128 px, trained to reconstruct normal images.

    The original trained width 64 at 512 px for 1000 GPU epochs (`--recipe original` gives its
    settings at 128 px and 5 epochs); on a 2-core CPU width 16 keeps the architecture and trains
    in minutes. Chosen on the cookie benchmark (numbers in docs/measurements.md):

    - The output is the last 1x1 convolution as it is, as the original's (`output` "raw"): with
      a sigmoid the network reconstructed far worse and no image score ranked the images well.
    - The image score is the map's mean, i.e. the per-image MSE the network was trained on. The
      map's maximum lands on the bottom-left corner pixel of every image, normal or not (zero
      padding); leaving a frame out, or the mean of the top 10 %, still ranks worse than the
      mean. The maximum finds mustard and plastic but misses cracks.
    - The map (squared error, smoothed, sigma 2) localises well.

    Skip connections could let a UNet copy a defect through, but that is not what held it back:
    the squared error inside defects is several times the error elsewhere on the same images,
    more so for this default than for the old one, whose reconstruction was poor everywhere.
    """


@register("vae")
class VAEDetector(ReconstructionDetector):
    """Variational auto-encoder; the map comes from the reconstruction of the mean."""
