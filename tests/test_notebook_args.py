"""The notebook helpers take what a notebook user types (one run, a list of runs, a data set
that is not the cookies) or say what to give, instead of a TypeError from inside a loop."""

from __future__ import annotations

import shutil

import matplotlib
import numpy as np
import pytest
from PIL import Image

from anomaly import notebook as nb
from anomaly.data import DataError

matplotlib.use("Agg")


def test_tables_take_one_run_a_list_or_a_dict(scored_ae_run):
    as_dict = nb.metrics_table({"ae": scored_ae_run})
    assert nb.metrics_table(scored_ae_run) == as_dict  # the folder's name is the run's name
    assert nb.metrics_table(str(scored_ae_run)) == as_dict
    assert nb.metrics_table([scored_ae_run]) == as_dict
    assert "image_auroc" in nb.metrics_table_keys(scored_ae_run)


@pytest.mark.parametrize(
    "runs, error, words",
    [
        ({}, ValueError, "no runs given"),
        ([], ValueError, "no runs given"),
        (5, TypeError, "{name: run folder}"),
        ({"ae": 5}, TypeError, "{name: run folder}"),
        ([1, 2], TypeError, "{name: run folder}"),
    ],
)
def test_tables_name_what_to_give(runs, error, words):
    with pytest.raises(error, match=words.replace("{", r"\{").replace("}", r"\}")):
        nb.metrics_table_keys(runs)


def test_two_runs_with_one_folder_name_must_be_named(scored_ae_run, tmp_path):
    other = tmp_path / "x" / scored_ae_run.name
    shutil.copytree(scored_ae_run, other)
    with pytest.raises(ValueError, match="share a folder name"):
        nb.metrics_table([scored_ae_run, other])
    assert nb.metrics_table({"a": scored_ae_run, "b": other}).count("\n") == 2


@pytest.mark.parametrize("n", [0, -1, 1.5, True])
def test_counts_of_images_must_be_whole_and_positive(scored_ae_run, n):
    with pytest.raises(ValueError, match=r"per_kind must be a whole number of at least 1"):
        nb.evidence_figure(scored_ae_run, per_kind=n)
    with pytest.raises(ValueError, match=r"\bn must be a whole number of at least 1"):
        nb.reconstructions_figure({"ae": scored_ae_run}, n=n)


def test_defect_areas_come_from_the_masks_of_any_data_set(tiny_cookies, tmp_path):
    own = tmp_path / "own"  # a user's data: no generator manifest
    shutil.copytree(tiny_cookies, own)
    (own / "manifest.json").unlink()
    fig = nb.defect_area_figure(own)
    bars = sum(len(c) for c in fig.axes[0].containers)
    assert bars > 0
    # the areas are the masks' own: one mask redrawn as a quarter of its image moves the largest
    kind = min(p.name for p in (own / "ground_truth").iterdir())
    mask = min((own / "ground_truth" / kind).iterdir())
    w, h = Image.open(mask).size
    quarter = np.zeros((h, w), np.uint8)
    quarter[: h // 2, : w // 2] = 255
    Image.fromarray(quarter).save(mask)
    fig = nb.defect_area_figure(own)
    right = max(p.get_x() + p.get_width() for c in fig.axes[0].containers for p in c)
    assert right == pytest.approx(100 * (h // 2) * (w // 2) / (h * w), abs=1e-6)


def test_defect_areas_of_a_suite_name_its_sets(tiny_cookies, tmp_path):
    suite = tmp_path / "suite"
    shutil.copytree(tiny_cookies, suite / "one")
    with pytest.raises(DataError, match="pass one of them"):
        nb.defect_area_figure(suite)


def test_defect_areas_without_masks_say_so(tiny_cookies, tmp_path):
    own = tmp_path / "own"
    shutil.copytree(tiny_cookies, own)
    shutil.rmtree(own / "ground_truth")
    with pytest.raises(DataError, match="no defective test image has a mask"):
        nb.defect_area_figure(own)
