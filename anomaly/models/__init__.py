"""Pure torch reconstruction networks, and the factory that builds one by method name.

Nothing here knows about training, losses or anomaly maps (those are in `anomaly.maps` and the
detectors). Every model takes and returns images [B, C, H, W] in [0, 1], has
`forward_features(x)` for its deepest feature map, and keeps its constructor arguments in
`model.hparams` so a checkpoint can say which network it belongs to (`model_signature`).
"""

from __future__ import annotations

from torch import nn

from anomaly.models.autoencoder import ConvAE
from anomaly.models.unet import UNet
from anomaly.models.vae import VAE

MODELS: dict[str, type[nn.Module]] = {"ae": ConvAE, "unet": UNet, "vae": VAE}


def build_model(method: str, in_channels: int = 1, width: int = 32, latent: int = 64) -> nn.Module:
    """Build the network of a reconstruction method: "ae", "unet" or "vae".

    `latent` is the bottleneck size of "ae" and "vae"; the U-Net has no such bottleneck and
    ignores it. Depths are the defaults (4 levels), so sizes must be divisible by 16 for "ae"
    and "vae" and by 8 for "unet".
    """
    if method not in MODELS:
        raise ValueError(
            f"unknown reconstruction method {method!r}; choose one of {sorted(MODELS)}"
        )
    if method == "unet":
        return UNet(in_channels=in_channels, width=width)
    return MODELS[method](in_channels=in_channels, width=width, latent=latent)


def model_signature(model: nn.Module) -> dict:
    """What identifies a network's weights: its class name and constructor arguments."""
    return {"class": type(model).__name__, **getattr(model, "hparams", {})}


def check_signature(saved: dict, model: nn.Module, source: str = "checkpoint") -> None:
    """Raise a ValueError naming the differences if `saved` is not `model`'s signature."""
    current = model_signature(model)
    diff = {
        k: (saved.get(k), current.get(k))
        for k in sorted(set(saved) | set(current))
        if saved.get(k) != current.get(k)
    }
    if diff:
        details = ", ".join(f"{k}: {a!r} in {source} vs {b!r} now" for k, (a, b) in diff.items())
        raise ValueError(f"{source} was saved from a different network ({details})")


__all__ = ["MODELS", "VAE", "ConvAE", "UNet", "build_model", "check_signature", "model_signature"]
