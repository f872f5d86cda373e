"""Every method, registered by name: importing this package registers them all."""

from anomaly.detectors import draem, flow, kmeans, patchknn, reconstruction  # noqa: F401
from anomaly.detectors import meandiff  # noqa: F401  (the per-pixel mean baseline)
from anomaly.detectors import auto  # noqa: F401  (label-free choice among the others)
from anomaly.detectors.base import REGISTRY, Detector, Predictions, get_detector, register

__all__ = ["REGISTRY", "Detector", "Predictions", "get_detector", "register"]
