"""Trust gaps closed: a benchmark rerun that loses nothing, scores of other data kept apart from a
run's own, images unlike the training images named, a run's selection.json checked against its
model."""

from __future__ import annotations

import json
import re
import shutil
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


def test_scoring_other_data_never_replaces_the_runs_own_scores(
    scored_ae_run, tiny_cookies, tmp_path, capsys
):
    from helpers import copy_run

    from anomaly.calibration import set_threshold
    from anomaly.cli import main
    from anomaly.explorer.runs import collect_runs, prepare
    from anomaly.metrics import threshold_f1
    from anomaly.pipeline import train_run

    run = copy_run(scored_ae_run, tmp_path / "ae")
    other = tmp_path / "other"
    shutil.copytree(tiny_cookies, other)
    shutil.rmtree(other / "test" / "crack")
    shutil.rmtree(other / "ground_truth" / "crack")
    own = {n: (run / n).read_bytes() for n in RunDir.SCORE_OUTPUTS}
    n_own = len(RunDir(run).predictions())

    assert main(["score", "--run", str(run), "--data", str(other), "--no-overlays"]) == 0
    assert f"wrote {run / 'scored' / 'other'}" in capsys.readouterr().out
    assert {n: (run / n).read_bytes() for n in RunDir.SCORE_OUTPUTS} == own
    elsewhere = RunDir(run / "scored" / "other")
    assert len(elsewhere.predictions()) < n_own and elsewhere.has_metrics()
    # what reads the run's scores still reads its own: f1 threshold, explorer
    own = RunDir(run).predictions()
    assert set_threshold(run, "f1").value == threshold_f1(own.labels, own.scores).value
    assert len(collect_runs([run])[0]["ae"]) == n_own
    prepare("other", elsewhere.predictions(), elsewhere.path)  # no threshold there: no crash

    mine = tmp_path / "mine"  # a user's folder is never written into
    mine.mkdir()
    (mine / "scores.csv").write_text("my table")
    assert main(["score", "--run", str(run), "--data", str(other), "--out", str(mine)]) == 2
    assert "does not write (scores.csv)" in capsys.readouterr().err
    assert (mine / "scores.csv").read_text() == "my table"

    assert main(["score", "--run", str(run), "--data", str(other), "--out", str(run)]) == 0
    assert len(RunDir(run).predictions()) < n_own  # asked for by name: the run's own replaced

    config = RunDir(run).config().replace(epochs=3)  # a new model: every score of it goes
    train_run(config, run, resume=True, progress=False)
    assert not RunDir(run).is_scored() and not (run / "scored").exists()


def _png16_rgb(path: Path, width: int = 64, height: int = 64) -> Path:
    """A 16-bit RGB PNG (Pillow reads these as 8-bit RGB, so it cannot write one)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    rows = b"".join(  # a pattern, not one flat colour (which predict names as such)
        b"\x00" + bytes((x * 7 + y * 3) % 256 for x in range(width * 6)) for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return path


def test_images_unlike_the_training_images_are_named_and_still_scored(
    tiny_cookies, tmp_path, capsys
):
    import numpy as np
    from helpers import tiny_config
    from PIL import Image

    from anomaly.cli import main
    from anomaly.pipeline import score_run, train_run

    data, run = tmp_path / "data", tmp_path / "md"
    shutil.copytree(tiny_cookies, data)
    train_run(tiny_config(data, "meandiff", channels=3), run, progress=False)
    split = json.loads((run / "split.json").read_text())
    assert split["images"] == {
        "colour": [True],
        "bits": [8],
        "aspect": [1.0, 1.0],
        "side": [64, 64],
        "transparent": [False],
    }

    good = min((data / "test" / "good").glob("*.png"))
    rgb = Image.open(good).convert("RGB")
    files = {"alike": tmp_path / "alike.png", "grey": tmp_path / "grey.png"}
    rgb.save(files["alike"])
    rgb.convert("L").save(files["grey"])
    files["deep"] = tmp_path / "deep.png"  # 16-bit greyscale
    Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257).save(files["deep"])
    files["deep_rgb"] = _png16_rgb(tmp_path / "deep_rgb.png")
    files["wide"] = tmp_path / "wide.png"
    rgb.resize((200, 40)).save(files["wide"])
    files["small"] = tmp_path / "small.png"  # a thumbnail: enlarged 4x more than the others
    rgb.resize((16, 16)).save(files["small"])
    files["half"] = tmp_path / "half.png"  # half their side: not named
    rgb.resize((32, 32)).save(files["half"])
    assert main(["predict", "--run", str(run), *map(str, files.values())]) == 0
    out = capsys.readouterr()
    assert len(out.out.strip().splitlines()) == len(files)  # every file scored
    warned = {line.split(": ")[1]: line for line in out.err.splitlines() if "warning" in line}
    named = ("grey", "deep", "deep_rgb", "wide", "small")
    assert sorted(warned) == sorted(str(files[k]) for k in named)
    assert "shorter side 16 px, the training images' 64 px" in warned[str(files["small"])]
    assert "greyscale, converted to RGB for a run trained on colour" in warned[str(files["grey"])]
    assert "16-bit, the run was trained on 8-bit" in warned[str(files["deep_rgb"])]
    assert "aspect ratio 5.00" in warned[str(files["wide"])] and "stretched" in out.err

    Image.open(good).convert("L").save(good)  # one grey test image: score names it, and scores
    pred, _ = score_run(run, overlays=False)
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and f"warning: {good}: greyscale" in err and len(pred) > 1

    del split["images"]  # a run from before the record: no check, no failure
    (run / "split.json").write_text(json.dumps(split))
    assert main(["predict", "--run", str(run), str(files["grey"])]) == 0
    assert "warning" not in capsys.readouterr().err


def test_a_selection_json_that_disagrees_with_model_pt_is_named_and_not_shown(
    tiny_cookies, tmp_path, monkeypatch, capsys
):
    import warnings

    from helpers import tiny_config

    from anomaly.cli import main
    from anomaly.config import Config
    from anomaly.detectors import auto
    from anomaly.notebook_photos import selection_table, synthetic_vs_real
    from anomaly.pipeline import load_run, score_run, train_run

    fast = {"method": "patchknn", "size": 48, "coreset_ratio": 0.1}
    monkeypatch.setattr(auto, "CANDIDATES", [fast, {**fast, "score_topk": 0.05}])
    run = tmp_path / "auto"
    config = Config.for_method("auto", data=str(tiny_cookies), size=48, batch_size=8)
    train_run(config, run, progress=False)
    score_run(run, overlays=False)
    path = run / "selection.json"
    honest = json.loads(path.read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an untouched run loads without a word
        load_run(run)
        shown = selection_table(run)

    lie = 1 - honest["chosen_index"]  # the other candidate, as if auto had chosen it
    row = honest["candidates"][lie]
    path.write_text(json.dumps({**honest, "chosen_index": lie, "chosen": row["name"]}))
    with pytest.warns(UserWarning, match=f"says auto chose '{row['name']}', but .*model.pt holds"):
        load_run(run)
    with pytest.warns(UserWarning, match="changed after training"):
        assert selection_table(run) == shown  # the model's own record, not the file's
    image = str(min((tiny_cookies / "test" / "good").glob("*.png")))
    capsys.readouterr()
    shown_before = warnings.showwarning
    assert main(["predict", "--run", str(run), image]) == 0  # it still scores
    err = capsys.readouterr().err  # the CLI prints the package's warnings as one line each
    said = [line for line in err.splitlines() if "selection.json says auto chose" in line]
    assert len(said) == 1 and said[0].startswith("warning: ") and "UserWarning" not in err
    assert warnings.showwarning is shown_before  # put back for whoever called main()

    path.write_text("{not json")
    times = re.compile(r"fit +\S+ s  predict +\S+ ms/image")  # kept in selection.json only
    with pytest.warns(UserWarning, match="selection.json is not valid JSON"):
        assert selection_table(run) == times.sub("fit     - s  predict    - ms/image", shown)
    with pytest.warns(UserWarning, match="not valid JSON"):
        assert synthetic_vs_real(run).startswith(f"auto chose {honest['chosen']}:")

    other = tmp_path / "md"  # an auto run's selection.json copied into another run
    train_run(tiny_config(tiny_cookies, "meandiff"), other, progress=False)
    path.write_text(json.dumps(honest))
    shutil.copy(path, other / "selection.json")
    with pytest.warns(UserWarning, match="but .*model.pt holds a meandiff model"):
        load_run(other)
    with pytest.warns(UserWarning, match="holds a meandiff model"):
        assert "records no choice by auto" in selection_table(other)
