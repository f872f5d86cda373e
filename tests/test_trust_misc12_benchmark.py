"""The benchmark's own tables in its out folder: rewritten on a rerun, unless a user edited them."""

from __future__ import annotations

import json

import pytest

from anomaly.benchmark import MARK, BenchmarkError, run_benchmark


@pytest.mark.slow  # trains through the benchmark's subprocesses (over 7 s)
def test_rerun_refuses_to_overwrite_tables_edited_by_hand(tiny_cookies, tmp_path, capsys):
    """A rerun rewrote OUT/benchmark.md and benchmark.json even after a user had edited them,
    losing the edit; the benchmark now records the SHA-256 of what it wrote and refuses, before
    anything trains, a file edited since (or one it never wrote), naming it and the fix."""
    out = tmp_path / "bench"

    def run():
        return run_benchmark(str(tiny_cookies), methods=["meandiff"], out=str(out), smoke=True)

    run()
    mark = json.loads((out / MARK).read_text())
    assert sorted(mark["sha256"]) == ["benchmark-notes.md", "benchmark.json", "benchmark.md"]
    model = out / "meandiff" / "model.pt"
    first = model.stat().st_mtime_ns
    run()  # unedited: rewritten, as before
    assert model.stat().st_mtime_ns != first
    table = out / "benchmark.md"
    table.write_text(table.read_text() + "my notes\n")
    trained = model.stat().st_mtime_ns
    with pytest.raises(BenchmarkError, match=f"{table} was edited since.*Move it away"):
        run()
    assert table.read_text().endswith("my notes\n")
    assert model.stat().st_mtime_ns == trained  # refused before anything ran
    table.rename(tmp_path / "kept.md")  # the fix the message names
    run()
    assert "my notes" not in table.read_text()
    (out / "benchmark.json").unlink()
    (out / "benchmark.json").write_text("{}")  # another file in its place: never overwritten
    with pytest.raises(BenchmarkError, match="benchmark.json was edited since"):
        run()
    capsys.readouterr()


def test_a_file_the_benchmark_never_wrote_is_refused_and_old_marks_still_rewrite(tmp_path):
    """check_unedited on its own: a file of the out folder's names without a record is a user's,
    one listed by a mark from before hashes were recorded is rewritten as it was then."""
    from anomaly.benchmark_dirs import check_out, claim_out, seal_dir, write_out

    out = claim_out(tmp_path / "out")
    (out / "benchmark.md").write_text("mine")
    with pytest.raises(BenchmarkError, match="benchmark.md was not written by the benchmark"):
        check_out(out, writes=("benchmark.md",))
    with pytest.raises(BenchmarkError, match="not written by the benchmark"):
        write_out(out / "benchmark.md", "table")
    assert (out / "benchmark.md").read_text() == "mine"
    (out / MARK).write_text(json.dumps({"made_by": "x", "files": ["benchmark.md"]}))  # old mark
    write_out(out / "benchmark.md", "table")
    seal_dir(out)  # keeps the record
    write_out(out / "benchmark.md", "table 2")
    assert (out / "benchmark.md").read_text() == "table 2"
    (out / MARK).write_text("{damaged")
    with pytest.raises(BenchmarkError, match="is damaged"):
        check_out(out, writes=("benchmark.md",))
