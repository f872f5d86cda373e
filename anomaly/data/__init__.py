"""Data: the folder reader (`AnomalyDataset`) and the synthetic cookie generator.

The names load lazily, so that `anomaly.data.files` (finding image files, no torch) can be
imported alone.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "GENERATOR_VERSION": "anomaly.data.cookies",
    "make_cookies": "anomaly.data.cookies",
    "IMAGE_EXTENSIONS": "anomaly.data.files",
    "DataError": "anomaly.data.files",
    "AnomalyDataset": "anomaly.data.folder",
    "Sample": "anomaly.data.folder",
    "load_image": "anomaly.data.folder",
    "load_mask": "anomaly.data.folder",
    "make_photos": "anomaly.data.photos",
}

__all__ = [*sorted(_EXPORTS)]  # noqa: PLE0604  (the lazy names are strings)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'anomaly.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
