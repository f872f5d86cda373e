"""anomaly: unsupervised visual anomaly detection for industrial inspection.

The public names a notebook imports. They load lazily, so `import anomaly` stays fast and a
notebook pays only for what it uses.
"""

from __future__ import annotations

import os

from anomaly.lazy import lazy_exports

# OpenMP's idle threads sleep instead of spinning, unless the user chose otherwise. Set before
# torch loads OpenMP (every command imports this package first): on a machine that also runs
# other work, spinning threads made small tensor operations several times slower (decoding and
# resizing a test image cost 12-44 ms of CPU instead of 6, docs/measurements.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# onnxruntime (1.32) writes a persistent device id and a database under ~/.cache/Microsoft/ as
# it loads, for its telemetry: not without the user's asking (ORT_DISABLE_TELEMETRY=0 does)
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "anomaly.config",
    "AnomalyDataset": "anomaly.data",
    "DataError": "anomaly.data",
    "ExportError": "anomaly.onnx_checks",
    "make_cookies": "anomaly.data",
    "Predictions": "anomaly.detectors",
    "Detector": "anomaly.detectors",
    "get_detector": "anomaly.detectors",
    "register": "anomaly.detectors",
    "load_run": "anomaly.pipeline",
    "RunDir": "anomaly.runs",
    "RunError": "anomaly.runs",
    "InUse": "anomaly.safe_files",
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
