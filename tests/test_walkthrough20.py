"""Session 20's fixes, each with the check that failed before it."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from anomaly import notebook_benchmark
from anomaly.notebook_setup import Settings


def _fake_benchmark(data, methods, out, seed, smoke):
    Path(out).mkdir(parents=True)
    (Path(out) / "benchmark.json").write_text(json.dumps({"rows": [], "table": ""}))


def test_smoke_benchmarks_stay_beside_the_smoke_runs(tmp_path, monkeypatch):
    """Notebook 06's smoke benchmarks were written to fresh folders in the system's temporary
    folder, which nothing cleared: every `make test` left two there. They go under the smoke
    runs' folder now (inside ANOMALY_HOME, which `make test` removes)."""
    import anomaly.benchmark
    import anomaly.data.photos

    monkeypatch.setattr(anomaly.benchmark, "run_benchmark", _fake_benchmark)
    monkeypatch.setattr(anomaly.data.photos, "make_photos", lambda *a, **k: None)
    monkeypatch.setattr(notebook_benchmark, "ensure_cookies", lambda s: tmp_path / "cookies")
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    s = Settings(True, "tiny", 64, 1, tmp_path / "data", tmp_path / "home" / "runs" / "smoke")
    notebook_benchmark.benchmark_result(s)
    notebook_benchmark.photos_result(s)
    assert list(system_tmp.iterdir()) == []
    made = sorted(p.name.split("-")[1] for p in s.runs_dir.iterdir())
    assert made == ["bench", "photos"]
