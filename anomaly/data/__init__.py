"""Data: the folder reader (`AnomalyDataset`) and the synthetic cookie generator.

The names load lazily, so that `anomaly.data.files` (finding image files, no torch) can be
imported alone.
"""

from __future__ import annotations

from anomaly.lazy import lazy_exports

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
__getattr__, __dir__ = lazy_exports("anomaly.data", _EXPORTS, __all__)
