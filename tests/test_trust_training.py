"""What `train` checks about the images it holds out, and about a kmeans run's source run.

kmeans takes its source run's encoder: it refuses other channels before writing anything, and
holds out only images that encoder did not learn (its source's held-out ones, whatever its
seed). Held-out images that are copies of training images, and held-out scores with no spread
(the default threshold then equals them), are warned about by name.
"""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
from helpers import tiny_config

from anomaly.pipeline import train_run
from anomaly.runs import RunDir
from anomaly.train import split_indices
from anomaly.train_guards import warn_degenerate


@pytest.fixture(scope="module")
def unet_run(tiny_cookies, tmp_path_factory):
    run = tmp_path_factory.mktemp("trust-training") / "unet"
    train_run(tiny_config(tiny_cookies, "unet", epochs=1), run, progress=False)
    return run


def _kmeans(source, **overrides):
    """A kmeans config as `train --method kmeans --from RUN` makes it: the source's settings."""
    config = RunDir(source).config()
    return config.replace(method="kmeans", source_run=str(source), **overrides)


def _split(run) -> dict:
    return json.loads((run / "split.json").read_text())


def test_kmeans_with_other_channels_than_its_source_is_refused_before_writing(unet_run, tmp_path):
    with pytest.raises(ValueError, match="use --channels 1"):
        train_run(_kmeans(unet_run, channels=3), tmp_path / "km", progress=False)
    assert not (tmp_path / "km").exists()


def test_kmeans_holds_out_its_source_runs_held_out_images_whatever_its_seed(unet_run, tmp_path):
    source = _split(unet_run)
    n, f = len(source["train"]) + len(source["val"]), RunDir(unet_run).config().val_fraction
    seeds = [s for s in range(20) if split_indices(n, f, s)[1] != split_indices(n, f, 3)[1]]
    for seed in seeds[:2]:  # seeds whose own split would hold out an image the encoder learned
        out = tmp_path / f"km{seed}"
        train_run(_kmeans(unet_run, seed=seed), out, progress=False)
        split = _split(out)
        assert split["val"] == source["val"]
        assert sorted(split["train"]) == sorted(source["train"])
    # its model still loads with its own channels; another number is refused by name
    from anomaly.detectors.kmeans import KMeansDetector

    state = RunDir(out).checkpoint()["state"]
    with pytest.raises(ValueError, match="use --channels 1"):
        KMeansDetector(_kmeans(unet_run, channels=3)).load_state_dict(state)


def test_kmeans_on_other_data_names_held_out_copies_of_what_its_encoder_learned(
    unet_run, tiny_cookies, tmp_path
):
    data = tmp_path / "renamed"  # the same images under other names: no path to match
    shutil.copytree(tiny_cookies / "train", data / "train")
    for p in sorted((data / "train" / "good").iterdir()):
        p.rename(p.with_name("x" + p.name))
    learned = {p.rsplit("/", 1)[1] for p in _split(unet_run)["train"]}
    names = sorted(p.name[1:] for p in (data / "train" / "good").iterdir())
    f = RunDir(unet_run).config().val_fraction
    seed = next(s for s in range(50) if names[split_indices(len(names), f, s)[1][0]] in learned)
    with pytest.warns(UserWarning, match="byte-identical copies.*learned by"):
        train_run(_kmeans(unet_run, data=str(data), seed=seed), tmp_path / "km", progress=False)


def test_held_out_copies_of_training_images_and_a_degenerate_threshold_are_named(
    tiny_cookies, tmp_path
):
    data = tmp_path / "same"
    shutil.copytree(tiny_cookies / "train", data / "train")
    images = sorted((data / "train" / "good").iterdir())
    for p in images[1:]:
        shutil.copy(images[0], p)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_run(tiny_config(data, "meandiff"), tmp_path / "md", progress=False)
    said = "\n".join(str(w.message) for w in caught)
    assert "byte-identical copies of training images" in said
    held_out = _split(tmp_path / "md")["val"][0]
    assert f"{held_out} = {images[0]}" in said  # named, with the training image it copies
    assert "degenerate" in said and "--good-images" in said
    assert 0 < json.loads((tmp_path / "md" / "threshold.json").read_text())["value"] < 1e-300


def test_varied_good_images_give_neither_warning(tiny_cookies, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_run(tiny_config(tiny_cookies, "meandiff"), tmp_path / "md", progress=False)
    said = "\n".join(str(w.message) for w in caught)
    assert "byte-identical" not in said and "degenerate" not in said


def test_degenerate_means_no_spread_among_several_or_one_exact_zero(tmp_path, recwarn):
    run = RunDir(tmp_path)
    warn_degenerate(run, np.array([0.3, 0.4]), 0.4)
    warn_degenerate(run, np.array([0.3]), 0.3)  # one held-out image: no spread to measure
    assert not recwarn.list
    with pytest.warns(UserWarning, match="all 3 held-out good images score exactly 0.5"):
        warn_degenerate(run, np.full(3, 0.5), 0.5)
    with pytest.warns(UserWarning, match="degenerate"):
        warn_degenerate(run, np.zeros(1), 0.0)


def test_auto_with_too_few_images_is_refused_before_the_run_folder_is_written(
    tiny_cookies, tmp_path
):
    data = tmp_path / "few"
    shutil.copytree(tiny_cookies / "train", data / "train")
    for p in sorted((data / "train" / "good").iterdir())[3:]:
        p.unlink()
    with pytest.raises(ValueError, match="auto needs at least"):
        train_run(tiny_config(data, "auto"), tmp_path / "auto", progress=False)
    assert not (tmp_path / "auto").exists()


@pytest.mark.parametrize("features", ["patch", "flat"])
def test_kmeans_k_above_the_training_images_is_said_and_recorded(unet_run, tmp_path, features):
    """--k 1000 on a handful of training images was capped without a word (model.pt said 1000)."""
    n = len(_split(unet_run)["train"])
    with pytest.warns(UserWarning, match=f"--k 1000 asks for more centres than the {n} training"):
        detector = train_run(
            _kmeans(unet_run, k=1000, kmeans_features=features), tmp_path / "km", progress=False
        )
    assert detector.k == n
