"""Data: the folder reader (`AnomalyDataset`) and the synthetic cookie generator."""

from anomaly.data.cookies import GENERATOR_VERSION, make_cookies
from anomaly.data.folder import (
    IMAGE_EXTENSIONS,
    AnomalyDataset,
    DataError,
    Sample,
    load_image,
    load_mask,
)
from anomaly.data.photos import make_photos

__all__ = [
    "GENERATOR_VERSION",
    "IMAGE_EXTENSIONS",
    "AnomalyDataset",
    "DataError",
    "Sample",
    "load_image",
    "load_mask",
    "make_cookies",
    "make_photos",
]
