"""DRAEM: learn to find defects by removing and segmenting synthetic ones.

Zavrtanik, Kristan and Skočaj, "DRAEM - A Discriminatively Trained Reconstruction Embedding for
Surface Anomaly Detection", ICCV 2021 (https://arxiv.org/abs/2108.07610). Training sees normal
images only, but pastes synthetic anomalies into them on the fly (`anomaly.synthetic`: Perlin-noise
masks filled with jittered pieces of other training images or procedural noise). Two networks
train jointly (`anomaly.models.draem`):

- the reconstructive network maps the augmented image back to the clean one
  (loss: L2 + (1 - SSIM));
- the discriminative network reads [augmented, reconstruction] and segments the synthetic anomaly
  (loss: focal loss, gamma 2, Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017).

The anomaly map is the anomaly-class softmax of the segmentation, Gaussian-smoothed by
`config.smooth_sigma`; the image score is, as in the paper, the maximum of the (unsmoothed)
softmax after a mean filter of 21 x 21 pixels at 256 px (scaled with the image size: 11 at 128 px),
or the top-fraction mean of the map when `config.score_topk` > 0.

Config fields read: channels, width (of both networks), epochs, batch_size, lr, seed,
smooth_sigma, score_topk. The paper trains networks of 128/64 channels with BatchNorm for 700
epochs on a GPU; `METHOD_DEFAULTS["draem"]` (anomaly.config) is sized for a 2-core CPU instead:
width 8, batch 8, 15 epochs (the benchmark's training set trains in minutes), and GroupNorm,
which, unlike BatchNorm with batches of 8, gives the same outputs in training and evaluation, so
validation losses do not jump from epoch to epoch. At this budget it is under-trained: twice the
epochs ranked images better for twice the time, the loss still falling, and thin cracks are the
hardest kind (numbers in docs/measurements.md). The DRAEM-specific knobs are keyword arguments
of `DraemDetector` (module defaults below).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from anomaly.detectors.base import Detector
from anomaly.detectors.registry import register
from anomaly.maps import gaussian_blur, image_score, l2_loss, ssim_loss
from anomaly.models.draem import DiscriminativeNet, ReconstructiveNet
from anomaly.synthetic import P_ANOMALY, synthesize

DEPTH = 4  # 2x2 poolings in each network; images are padded to a multiple of 2**DEPTH
NORM = "group"  # normalisation of both networks: "group", or "batch" (the paper's)
FOCAL_GAMMA = 2.0
FOCAL_WEIGHT = 1.0  # weight of the segmentation loss against L2 + SSIM (1 in the paper)
POOL_AT_256 = 21  # the paper's mean-filter size for the image score, at 256 px


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, gamma: float = FOCAL_GAMMA
) -> torch.Tensor:
    """Mean focal loss -(1 - p_t)^gamma log p_t of logits [B, K, H, W] against classes [B, H, W]."""
    logp = F.log_softmax(logits, dim=1).gather(1, target[:, None].long())[:, 0]
    return (-((1 - logp.exp()) ** gamma) * logp).mean()


def pool_size(size: int) -> int:
    """The paper's 21 px score filter at 256 px, scaled to `size` and kept odd (11 at 128 px)."""
    return max(1, int(POOL_AT_256 * size / 256) // 2 * 2 + 1)


def _pad(x: torch.Tensor, multiple: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


@register("draem")
class DraemDetector(Detector):
    """DRAEM detector: a reconstructive and a discriminative network trained on synthetic anomalies.

    Args:
        config: the run's `Config` (see the module docstring for the fields read).
        recon_width: channels of the reconstructive network's first level (default config.width).
        disc_width: channels of the discriminative network's first level (default config.width).
        depth: 2x2 poolings in each network.
        p_anomaly: fraction of training samples that get a synthetic anomaly.
        focal_weight: weight of the focal (segmentation) loss.
        norm: normalisation layers, "group" or "batch" (see the module docstring).
    """

    def __init__(
        self,
        config,
        recon_width: int | None = None,
        disc_width: int | None = None,
        depth: int = DEPTH,
        p_anomaly: float = P_ANOMALY,
        focal_weight: float = FOCAL_WEIGHT,
        norm: str = NORM,
    ) -> None:
        super().__init__(config)
        self.p_anomaly, self.focal_weight = p_anomaly, focal_weight
        self._build(
            {
                "channels": config.channels,
                "recon_width": recon_width or config.width,
                "disc_width": disc_width or config.width,
                "depth": depth,
                "norm": norm,
            }
        )
        self._val_generator: torch.Generator | None = None

    def _build(self, hparams: dict) -> None:
        self.hparams = dict(hparams)
        c, depth, norm = hparams["channels"], hparams["depth"], hparams["norm"]
        self.reconstructive = ReconstructiveNet(c, hparams["recon_width"], depth, norm)
        self.discriminative = DiscriminativeNet(2 * c, hparams["disc_width"], depth, norm)
        self.to(self.device)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"reconstructive": self.reconstructive, "discriminative": self.discriminative}

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction [B, C, H, W], segmentation logits [B, 2, H, W]) of images of any size."""
        h, w = images.shape[-2:]
        x = _pad(images, 2 ** self.hparams["depth"])
        recon = self.reconstructive(x)
        logits = self.discriminative(torch.cat([x, recon], dim=1))
        return recon[..., :h, :w], logits[..., :h, :w]

    def step(self, images: torch.Tensor) -> torch.Tensor:
        """One batch's loss: L2 + SSIM of the reconstruction, focal loss of the segmentation.

        Training batches draw their anomalies from the global torch generator (seeded and restored
        on resume by the training loop); validation batches from a generator reset to the seed at
        the start of every validation pass, so every epoch is validated on the same anomalies.
        """
        if self.reconstructive.training:
            self._val_generator, generator = None, None
        else:
            if self._val_generator is None:
                self._val_generator = torch.Generator().manual_seed(int(self.config.seed) + 1)
            generator = self._val_generator
        augmented, masks = synthesize(images, generator=generator, p_anomaly=self.p_anomaly)
        recon, logits = self.forward(augmented)
        return (
            l2_loss(recon, images)
            + ssim_loss(recon, images)
            + self.focal_weight * focal_loss(logits, masks)
        )

    def fit(
        self,
        train_data,
        val_data=None,
        *,
        progress: bool = True,
        resume: bool = False,
        checkpoints=None,
    ):
        self._val_generator = None
        return self.train_steps(
            train_data, val_data, checkpoints=checkpoints, resume=resume, progress=progress
        )

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """The reconstructive network's output for images [B, C, H, W] (eval mode)."""
        self.reconstructive.eval()
        h, w = images.shape[-2:]
        x = _pad(images.to(self.device), 2 ** self.hparams["depth"])
        return self.reconstructive(x)[..., :h, :w]

    @torch.no_grad()
    def predict_batch(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for module in self.modules().values():
            module.eval()
        _, logits = self.forward(images.to(self.device))
        prob = logits.softmax(dim=1)[:, 1]
        maps = gaussian_blur(prob, self.config.smooth_sigma)
        if self.config.score_topk > 0:
            return image_score(maps, self.config.score_topk), maps
        k = pool_size(max(prob.shape[-2:]))
        pooled = F.avg_pool2d(prob[:, None], k, stride=1, padding=k // 2, count_include_pad=False)
        return pooled.flatten(1).amax(dim=1), maps

    def state_dict(self) -> dict:
        return {
            "hparams": dict(self.hparams),
            "reconstructive": self.reconstructive.state_dict(),
            "discriminative": self.discriminative.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Load networks saved by `state_dict`; networks of other widths, depth or normalisation
        are rebuilt to fit (the state says what they are), other image channels are refused."""
        saved = state["hparams"]
        if saved["channels"] != self.hparams["channels"]:
            raise RuntimeError(
                f"DRAEM networks for {saved['channels']}-channel images do not fit "
                f"this detector's {self.hparams['channels']}-channel config"
            )
        if saved != self.hparams:
            self._build(saved)
        self.reconstructive.load_state_dict(state["reconstructive"])
        self.discriminative.load_state_dict(state["discriminative"])
