"""Mean difference: the simplest baseline, how far each pixel is from the average normal image.

Fitting keeps the per-pixel mean and standard deviation of the training images at the run's
size (no network, no training loop: one pass over the data). A test image's map is its
standardised distance to that mean, averaged over channels,

    map = mean_c |x - mean| / (std + STD_FLOOR),

smoothed with `anomaly.maps.gaussian_blur` (`config.smooth_sigma`). The image score is the
smoothed map's maximum (or its top-fraction mean when `config.score_topk` > 0, as every method).

It is a yardstick, not a method to use: it knows nothing about texture or shape, only the
brightness and colour a normal image has at each pixel. Where normal images are aligned (the same
object, placed the same way) the mean is sharp and the baseline finds anything new; on a texture
cropped at random the mean is flat, and it finds only what is darker, brighter or more coloured
than the texture ever is. A learned method that scores below it on some data has a problem there.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from anomaly.detectors.base import Detector
from anomaly.detectors.registry import register
from anomaly.maps import gaussian_blur, image_score

STD_FLOOR = 0.02  # added to the std (images in [0, 1]): pixels that never vary do not explode


@register("meandiff")
class MeanDiff(Detector):
    """Distance of each pixel to the per-pixel mean of the training images, in its std's units.

    Args:
        config: the run's `Config`. Reads size, channels, batch_size, smooth_sigma, score_topk.
    """

    def __init__(self, config) -> None:
        super().__init__(config)
        self.mean: torch.Tensor | None = None  # [C, H, W]
        self.std: torch.Tensor | None = None

    def to(self, device) -> MeanDiff:
        super().to(device)
        if self.mean is not None:
            self.mean, self.std = self.mean.to(self.device), self.std.to(self.device)
        return self

    @torch.no_grad()
    def fit(
        self,
        train_data,
        val_data=None,
        *,
        progress: bool = False,
        resume: bool = False,
        checkpoints=None,
    ) -> MeanDiff:
        """One pass over the training images: per-pixel mean and standard deviation."""
        self.refuse_resume(resume)
        from tqdm.auto import tqdm

        loader = train_data if isinstance(train_data, DataLoader) else self.loader(train_data)
        total = total_sq = None
        n = 0
        for batch in tqdm(loader, desc="meandiff", disable=not progress, leave=False):
            x = batch["image"].to(self.device, torch.float64)
            total = x.sum(0) if total is None else total + x.sum(0)
            total_sq = (x * x).sum(0) if total_sq is None else total_sq + (x * x).sum(0)
            n += len(x)
        if n == 0:
            raise ValueError("fit() got an empty data set: there are no images to learn from")
        mean = total / n
        var = (total_sq / n - mean * mean).clamp_(min=0)
        self.mean, self.std = mean.float(), var.sqrt().float()
        return self

    @torch.no_grad()
    def predict_batch(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mean is None:
            raise RuntimeError("meandiff: call fit() (or load a run) before predicting")
        images = images.to(self.device, torch.float32)
        if images.shape[1:] != self.mean.shape:
            raise ValueError(
                f"meandiff was fitted on images {tuple(self.mean.shape)} "
                f"(channels, height, width), got {tuple(images.shape[1:])}; use the "
                "run's size and channels"
            )
        maps = ((images - self.mean).abs() / (self.std + STD_FLOOR)).mean(1)
        maps = gaussian_blur(maps, self.config.smooth_sigma)
        return image_score(maps, self.config.score_topk), maps

    def state_dict(self) -> dict:
        if self.mean is None:
            raise RuntimeError("meandiff: nothing to save before fit()")
        return {"mean": self.mean.cpu(), "std": self.std.cpu()}

    def load_state_dict(self, state: dict) -> None:
        mean, std = state["mean"], state["std"]
        want = (self.config.channels, self.config.size, self.config.size)
        if tuple(mean.shape) != want or tuple(std.shape) != want:
            raise ValueError(
                f"meandiff state holds images {tuple(mean.shape)}, this config "
                f"makes {want} (channels, size, size)"
            )
        self.mean = mean.to(self.device, torch.float32)
        self.std = std.to(self.device, torch.float32)
