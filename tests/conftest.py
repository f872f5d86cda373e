"""Shared fixtures: a tiny cookie data set in the MVTec AD layout, made once per session."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_cookies(tmp_path_factory):
    """The `tiny` preset at 64 px: a few train/good, test/good and defect images with masks."""
    from anomaly.data import make_cookies

    root = tmp_path_factory.mktemp("cookies") / "tiny"
    make_cookies(root, preset="tiny", seed=0, size=64)
    return root
