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


def test_predict_onnx_draws_the_overlay_predict_run_draws(tiny_cookies, tmp_path):
    """`predict --onnx` drew a bare heat map at the model's size (48 px here), without the
    verdict, score, name or colour bar of `predict --run`'s overlay at the image's own size;
    its module said they were the same overlays. A pixel threshold the run saved (the
    explorer's) colours both alike: the export carries it in map_range."""
    import numpy as np
    from PIL import Image

    from anomaly.cli import main
    from anomaly.config import Config
    from anomaly.metrics import Threshold
    from anomaly.pipeline import train_run
    from anomaly.runs import RunDir

    run = tmp_path / "run"
    config = Config.for_method("patchknn", data=str(tiny_cookies), size=48, device="cpu")
    train_run(config, run, progress=False)
    rd = RunDir(run)
    low, high = rd.map_range()
    saved = rd.threshold()
    params = {**saved.params, "pixel_threshold": low + 0.5 * (high - low)}
    rd.save_threshold(Threshold(saved.value, saved.rule, params))
    wide = tmp_path / "wide.png"  # another size and aspect than the model's 48 x 48
    first = min((tiny_cookies / "test" / "crack").glob("*.png"))
    Image.open(first).convert("RGB").resize((90, 60)).save(wide)
    assert main(["export", "--run", str(run)]) == 0
    assert main(["predict", "--run", str(run), "--out", str(tmp_path / "r"), str(wide)]) == 0
    onnx = ["predict", "--onnx", str(run / "model.onnx"), "--out", str(tmp_path / "o")]
    assert main([*onnx, str(wide)]) == 0
    by_run = np.asarray(Image.open(tmp_path / "r" / "wide_overlay.png"), np.int16)
    by_onnx = np.asarray(Image.open(tmp_path / "o" / "wide_overlay.png"), np.int16)
    assert by_onnx.shape == by_run.shape  # own size, enlarged alike, with head and colour bar
    assert np.mean(np.abs(by_onnx - by_run) > 8) < 0.002
