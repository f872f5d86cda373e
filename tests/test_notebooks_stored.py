"""The notebooks as committed: light enough to read on the web (at most 3 MB each), with no
stored widget state (executing notebook 05 stores its explorer's, 1.2 MB the widgets cannot run
from), and `scripts/build_notebooks.py --strip` drops that state."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 8


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_stored_notebook_is_light_and_holds_no_widget_state(path):
    assert path.stat().st_size <= 3_000_000
    book = nbformat.read(path, 4)
    assert "widgets" not in book.metadata
    assert book.metadata["kernelspec"]["name"] == "python3"
    views = [  # a view of a widget whose state is not stored: "model not found" in JupyterLab
        i
        for i, cell in enumerate(book.cells)
        for o in cell.get("outputs", [])
        if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    assert views == [], f"cells {views}: run scripts/build_notebooks.py --strip"


def test_strip_drops_the_widget_state_and_nothing_else(tmp_path):
    spec = importlib.util.spec_from_file_location("build", ROOT / "scripts/build_notebooks.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    book = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")])
    book.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    nbformat.write(book, tmp_path / "a.ipynb")
    nbformat.write(nbformat.v4.new_notebook(), tmp_path / "b.ipynb")
    assert build.strip_widget_state(tmp_path) == [tmp_path / "a.ipynb"]
    stripped = nbformat.read(tmp_path / "a.ipynb", 4)
    assert "widgets" not in stripped.metadata and stripped.cells[0].source == "1 + 1"
    assert build.strip_widget_state(tmp_path) == []
    view = nbformat.v4.new_output(
        "display_data",
        data={build.WIDGET_VIEW: {"model_id": "x"}, "text/plain": "a widget (run it)"},
    )
    book.cells[0].outputs = [view]
    nbformat.write(book, tmp_path / "a.ipynb")
    assert build.strip_widget_state(tmp_path) == [tmp_path / "a.ipynb"]
    kept = nbformat.read(tmp_path / "a.ipynb", 4).cells[0].outputs[0].data
    assert kept == {"text/plain": "a widget (run it)"}
