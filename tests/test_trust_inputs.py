"""Trust gaps closed: a benchmark rerun that loses nothing, scores of other data kept apart from a
run's own, images unlike the training images named, a run's selection.json checked against its
model."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from anomaly.runs import RunDir


def _suite(root: Path, sets, data: Path) -> Path:
    root.mkdir()
    for name in sets:
        (root / name).symlink_to(data, target_is_directory=True)
    (root / "manifest.json").write_text(json.dumps({"sets": list(sets)}))
    return root


def test_a_benchmark_rerun_checks_first_and_keeps_a_failed_methods_earlier_run(
    tiny_cookies, tmp_path, monkeypatch, capsys
):
    from anomaly import benchmark

    failing, calls = set(), []

    def worker(cmd, **kwargs):  # the subprocess, in this process (meandiff fits in a second)
        method, data, out, seed = cmd[3], cmd[4], cmd[5], int(cmd[6])
        calls.append(Path(data).name)
        if Path(data).name in failing:
            return subprocess.CompletedProcess(cmd, 1, "", "DataError: a broken image")
        row = benchmark._worker(method, data, out, seed, smoke=True)
        return subprocess.CompletedProcess(cmd, 0, json.dumps(row, default=float) + "\n", "")

    monkeypatch.setattr(benchmark, "subprocess", SimpleNamespace(run=worker))
    suite, out = _suite(tmp_path / "suite", ["a", "b"], tiny_cookies), tmp_path / "bench"

    def run():
        return benchmark.run_benchmark([str(suite)], ["meandiff"], str(out), smoke=True)

    run()
    a, b = out / "a" / "meandiff", out / "b" / "meandiff"
    before = {p: (p / "model.pt").read_bytes() for p in (a, b)}

    (b / "notes.txt").write_text("mine")  # a user's file: the rerun refuses before anything
    calls.clear()
    with pytest.raises(benchmark.BenchmarkError, match=r"did not make \(notes.txt\), so nothing"):
        run()
    assert calls == [] and (b / "notes.txt").read_text() == "mine"
    assert all((p / "model.pt").read_bytes() == m for p, m in before.items())

    (b / "notes.txt").unlink()
    failing.add("b")  # set b's method fails: its earlier run stays, complete
    rows = run()
    assert [("error" in r) for r in rows] == [False, True]
    assert (b / "model.pt").read_bytes() == before[b] and RunDir(b).predictions() is not None
    assert "the earlier run in" in capsys.readouterr().err
    assert RunDir(a).has_model() and not list((out / "b").glob(".*.new"))
    assert sorted(p.name for p in (out / "a").iterdir()) == [benchmark.MARK, "meandiff"]
