"""Notebooks write data and runs under $ANOMALY_HOME or the working folder, never next to the
installed package (issue 16 item 7)."""

from __future__ import annotations

from pathlib import Path

import anomaly
from anomaly import notebook as nb


def test_data_and_runs_go_under_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(nb.HOME_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    s = nb.settings(smoke=True)
    assert s.data_dir == tmp_path.resolve() / "data" / "smoke"
    assert s.runs_dir == tmp_path.resolve() / "runs" / "smoke"
    package = Path(anomaly.__file__).resolve().parent.parent
    assert package not in s.runs_dir.parents or package == tmp_path.resolve()


def test_a_notebooks_folder_means_its_parent(tmp_path, monkeypatch):
    monkeypatch.delenv(nb.HOME_ENV, raising=False)
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert nb.settings(smoke=False).runs_dir == tmp_path.resolve() / "runs" / "benchmark"


def test_anomaly_home_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(nb.HOME_ENV, str(tmp_path / "elsewhere"))
    s = nb.settings(smoke=True)
    assert s.data_dir == (tmp_path / "elsewhere").resolve() / "data" / "smoke"
