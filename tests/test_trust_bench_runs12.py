"""A benchmark run folder a user worked in since (a threshold saved, a run scored again) is the
user's work: a rerun of the benchmark refuses to replace it rather than delete the change."""

from __future__ import annotations

import json

import pytest

from anomaly.benchmark import MARK, BenchmarkError, run_benchmark


@pytest.mark.slow  # trains through the benchmark's subprocesses (over 7 s)
def test_a_run_file_changed_since_the_benchmark_wrote_it_is_never_deleted(
    tiny_cookies, tmp_path, capsys
):
    out = tmp_path / "bench"

    def run():
        return run_benchmark(str(tiny_cookies), methods=["meandiff"], out=str(out), smoke=True)

    run()
    runs = out / "meandiff"
    mark = json.loads((runs / MARK).read_text())
    assert set(mark["sha256"]) == set(mark["files"]) and "model.pt" in mark["files"]
    model = runs / "model.pt"
    run()  # nothing changed by hand: replaced, as before
    threshold = runs / "threshold.json"
    saved = json.loads(threshold.read_text())
    threshold.write_text(json.dumps({**saved, "threshold": 1.2345}))  # as the explorer saves one
    trained = model.stat().st_mtime_ns
    with pytest.raises(BenchmarkError, match=r"changed since.*threshold\.json \(changed since\)"):
        run()
    assert json.loads(threshold.read_text())["threshold"] == 1.2345  # kept
    assert model.stat().st_mtime_ns == trained  # refused before anything ran
    threshold.rename(tmp_path / "my-threshold.json")  # the fix the message names: move it away
    run()
    assert (tmp_path / "my-threshold.json").is_file() and threshold.is_file()
    capsys.readouterr()


def test_a_run_sealed_before_hashes_were_recorded_is_replaced_as_then(tmp_path):
    from anomaly.benchmark_dirs import check_dir, claim_dir, seal_dir

    run = claim_dir(tmp_path / "run")
    (run / "model.pt").write_bytes(b"weights")
    seal_dir(run, below=True)
    (run / "model.pt").write_bytes(b"other weights")
    with pytest.raises(BenchmarkError, match=r"model\.pt \(changed since\)"):
        check_dir(run)
    (run / MARK).write_text(json.dumps({"made_by": "x", "files": ["model.pt"]}))  # an old mark
    check_dir(run)
    claim_dir(run)
    assert list(run.iterdir()) == [run / MARK]


def test_a_mark_that_is_a_link_is_never_written_through(tiny_cookies, tmp_path, capsys):
    out = tmp_path / "bench"
    out.mkdir()
    settings = tmp_path / "settings.json"
    settings.write_text('{"theme": "dark"}')
    (out / MARK).symlink_to(settings)
    with pytest.raises(BenchmarkError, match=r"not a mark the benchmark wrote \(a link"):
        run_benchmark(str(tiny_cookies), methods=["meandiff"], out=str(out), smoke=True)
    assert settings.read_text() == '{"theme": "dark"}' and not (out / "meandiff").exists()
    capsys.readouterr()
