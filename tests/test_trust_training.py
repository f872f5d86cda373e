"""What `train` checks about the images it holds out, and about a kmeans run's source run.

kmeans takes its source run's encoder: it refuses other channels before writing anything, and
holds out only images that encoder did not learn (its source's held-out ones, whatever its
seed). Held-out images that are copies of training images, and held-out scores with no spread
(the default threshold then equals them), are warned about by name.
"""

from __future__ import annotations

import pytest
from helpers import tiny_config

from anomaly.pipeline import train_run
from anomaly.runs import RunDir


@pytest.fixture(scope="module")
def unet_run(tiny_cookies, tmp_path_factory):
    run = tmp_path_factory.mktemp("trust-training") / "unet"
    train_run(tiny_config(tiny_cookies, "unet", epochs=1), run, progress=False)
    return run


def _kmeans(source, **overrides):
    """A kmeans config as `train --method kmeans --from RUN` makes it: the source's settings."""
    config = RunDir(source).config()
    return config.replace(method="kmeans", source_run=str(source), **overrides)


def test_kmeans_with_other_channels_than_its_source_is_refused_before_writing(unet_run, tmp_path):
    with pytest.raises(ValueError, match="use --channels 1"):
        train_run(_kmeans(unet_run, channels=3), tmp_path / "km", progress=False)
    assert not (tmp_path / "km").exists()
