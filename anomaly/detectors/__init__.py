"""Every method, registered by name: importing this package registers them all."""

from anomaly.detectors import (  # noqa: F401
    auto,
    draem,
    flow,
    kmeans,
    meandiff,
    patchknn,
    reconstruction,
)
from anomaly.detectors.base import Detector, Predictions
from anomaly.detectors.registry import REGISTRY, get_detector, register

__all__ = ["REGISTRY", "Detector", "Predictions", "get_detector", "register"]
