"""Which run folders the notebooks show and train (`anomaly.notebook_setup.Settings.run_folder`,
`ensure_run`): the benchmark's when it made one, else their own, never inside the benchmark's."""

from __future__ import annotations

from dataclasses import replace

from anomaly.config import Config
from anomaly.notebook_setup import Settings, ensure_run
from anomaly.pipeline import score_run, train_run


def _full(tmp_path) -> Settings:
    """Full (not smoke) settings under tmp_path, as `settings()` makes them under its home."""
    return Settings(
        False,
        "benchmark",
        None,
        None,
        tmp_path / "data" / "cookies",
        tmp_path / "runs" / "benchmark",
    )


def test_a_notebook_trains_what_the_benchmark_lacks_in_its_own_folder(tiny_cookies, tmp_path):
    s = _full(tmp_path)
    run = ensure_run(s, "meandiff", data=tiny_cookies)
    assert run == tmp_path / "runs" / "notebooks" / "meandiff"
    assert (run / "metrics.json").is_file()
    # runs/benchmark stays the benchmark's alone: `make benchmark` refuses folders it did not make
    assert not (tmp_path / "runs" / "benchmark").exists()
    assert ensure_run(s, "meandiff", data=tiny_cookies) == run  # found again, not retrained


def test_a_notebook_shows_the_benchmarks_run_when_there_is_one(tiny_cookies, tmp_path, capsys):
    s = replace(_full(tmp_path), data_dir=tiny_cookies)  # the benchmark's data
    made = s.runs_dir / "meandiff"
    train_run(Config.for_method("meandiff", data=str(tiny_cookies)), made, progress=False)
    assert s.run_folder("meandiff") == s.own_runs / "meandiff"  # not scored yet: not shown
    score_run(made, overlays=False)
    assert s.run_folder("meandiff") == made
    assert ensure_run(s, "meandiff", data=tiny_cookies) == made
    assert "using the trained run" in capsys.readouterr().out
    assert not s.own_runs.exists()


def test_smoke_runs_keep_one_folder(tmp_path):
    s = Settings(True, "tiny", 64, 1, tmp_path / "data" / "smoke", tmp_path / "runs" / "smoke")
    assert s.own_runs == s.runs_dir
