"""Session 31's fixes: each test fails without its fix."""

from __future__ import annotations

import pytest

from anomaly.config import Config


def test_predict_onnx_says_when_trains_threshold_rests_on_a_handful(tiny_cookies, tmp_path, capsys):
    """`predict --run` repeated train's note that its threshold rests on a handful of held-out
    images (session 30); `predict --onnx` of the same run's export said nothing: the export
    left out the params that tell train's threshold (set_by, on_training_images)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from anomaly.cli import main
    from anomaly.pipeline import train_run

    run = tmp_path / "pk"
    config = Config.for_method("patchknn", data=str(tiny_cookies), size=64, device="cpu")
    train_run(config, run, progress=False)
    assert main(["export", "--run", str(run)]) == 0
    image = str(min((tiny_cookies / "test" / "good").glob("*.png")))
    assert main(["predict", "--run", str(run), "--no-overlays", image]) == 0
    said = capsys.readouterr().err.splitlines()
    assert main(["predict", "--onnx", str(run / "model.onnx"), "--no-overlays", image]) == 0
    err = capsys.readouterr().err
    note = next(line for line in said if "quantile of only" in line)
    assert f"{note}; then export the run again: python -m anomaly export --run {run}" in err
