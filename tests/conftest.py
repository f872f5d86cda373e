"""Shared fixtures: a tiny cookie data set in the MVTec AD layout, made once per session."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
# the tests' ONNX exports are kept in a folder of their own, not in the user's cache
os.environ["ANOMALY_CACHE"] = tempfile.mkdtemp(prefix="anomaly-test-cache-")
atexit.register(shutil.rmtree, os.environ["ANOMALY_CACHE"], ignore_errors=True)
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_cookies(tmp_path_factory):
    """The `tiny` preset at 64 px: a few train/good, test/good and defect images with masks."""
    from anomaly.data import make_cookies

    root = tmp_path_factory.mktemp("cookies") / "tiny"
    make_cookies(root, preset="tiny", seed=0, size=64)
    return root


@pytest.fixture(scope="session")
def scored_ae_run(tiny_cookies, tmp_path_factory):
    """A tiny auto-encoder run (2 epochs), trained and scored once; copy it before damaging it
    (`helpers.copy_run`)."""
    from helpers import tiny_config

    from anomaly.pipeline import score_run, train_run

    run = tmp_path_factory.mktemp("runs") / "ae"
    train_run(tiny_config(tiny_cookies), run, progress=False)
    score_run(run, overlays=False)
    return run
