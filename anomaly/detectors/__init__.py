"""Every method, registered by name: importing this package registers them all."""

from anomaly.detectors.base import REGISTRY, Detector, Predictions, get_detector, register

from anomaly.detectors import reconstruction  # noqa: F401,E402  (ae, unet, vae)
from anomaly.detectors import kmeans  # noqa: F401,E402

for _optional in ("patchknn", "draem", "flow"):
    try:
        __import__(f"anomaly.detectors.{_optional}")
    except ModuleNotFoundError as _err:  # a method still being written must not break the rest
        if _err.name != f"anomaly.detectors.{_optional}":
            raise

__all__ = ["REGISTRY", "Detector", "Predictions", "get_detector", "register"]
