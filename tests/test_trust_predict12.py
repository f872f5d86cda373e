"""Detector.predict over a loader it must iterate once, including one of unknown length; what
`predict` imports."""

from __future__ import annotations

import numpy as np
from helpers import tiny_config
from torch.utils.data import DataLoader, IterableDataset

from anomaly.data.folder import AnomalyDataset
from anomaly.detectors import get_detector


def test_predict_takes_a_loader_of_unknown_length(tiny_cookies):
    config = tiny_config(tiny_cookies, "meandiff")
    train = AnomalyDataset(tiny_cookies, split="train", size=64, channels=1)
    test = AnomalyDataset(tiny_cookies, split="test", size=64, channels=1)
    detector = get_detector("meandiff")(config)
    detector.fit(train, progress=False)

    class Stream(IterableDataset):  # no __len__: a camera feed, say
        def __iter__(self):
            return (test[i] for i in range(len(test)))

    streamed = detector.predict(DataLoader(Stream(), batch_size=3), progress=True)
    listed = detector.predict(test)
    assert len(streamed.scores) == len(test)
    assert np.allclose(streamed.scores, listed.scores)


def test_predict_without_overlays_never_imports_matplotlib(scored_ae_run, tiny_cookies, tmp_path):
    """Drawing nothing, `predict --no-overlays` skips matplotlib's import (0.1 s of its
    start-up, a one-image command's cost)."""
    from helpers import cli_in_fresh_python, copy_run

    run = copy_run(scored_ae_run, tmp_path / "run")
    image = min((tiny_cookies / "test" / "good").iterdir())
    rc, modules = cli_in_fresh_python("predict", "--run", run, "--no-overlays", image)
    assert rc == 0 and "matplotlib" not in modules and "anomaly" in modules
