"""anomaly: unsupervised visual anomaly detection for industrial inspection.

The public names a notebook imports. They load lazily, so `import anomaly` stays fast and a
notebook pays only for what it uses.
"""

from __future__ import annotations

from anomaly.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "anomaly.config",
    "AnomalyDataset": "anomaly.data",
    "DataError": "anomaly.data",
    "make_cookies": "anomaly.data",
    "Predictions": "anomaly.detectors",
    "Detector": "anomaly.detectors",
    "get_detector": "anomaly.detectors",
    "load_run": "anomaly.pipeline",
    "RunDir": "anomaly.runs",
    "RunError": "anomaly.runs",
    "train_run": "anomaly.pipeline",
    "score_run": "anomaly.pipeline",
    "predict_images": "anomaly.predict",
    "set_threshold": "anomaly.calibration",
    "evaluate": "anomaly.metrics",
    "Threshold": "anomaly.metrics",
    "ThresholdExplorer": "anomaly.explorer",
    "seed_everything": "anomaly.train",
    "select_device": "anomaly.train",
}

__all__ = [*sorted(_EXPORTS), "__version__"]  # noqa: PLE0604  (the lazy names are strings)
__getattr__, __dir__ = lazy_exports("anomaly", _EXPORTS, __all__)
