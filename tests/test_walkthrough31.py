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


def test_onnx_predict_py_runs_from_the_shell_without_the_package(tiny_cookies, tmp_path):
    """Deployed without the package, the copied file had no command line: a user wrote a
    script to score a folder. `python onnx_predict.py MODEL FOLDER` prints a row per image,
    and a damaged file is a row of its own (ERROR) with why on stderr, and exit status 2."""
    import shutil
    import subprocess
    import sys

    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import anomaly.onnx_checks
    import anomaly.onnx_predict
    from anomaly.export import export_onnx, predict_onnx
    from anomaly.pipeline import train_run

    run = tmp_path / "pk"
    config = Config.for_method("patchknn", data=str(tiny_cookies), size=64, device="cpu")
    train_run(config, run, progress=False)
    model = export_onnx(run, run / "model.onnx")
    deployed = tmp_path / "deployed"
    deployed.mkdir()
    shutil.copy(anomaly.onnx_predict.__file__, deployed / "onnx_predict.py")
    shutil.copy(anomaly.onnx_checks.__file__, deployed / "onnx_checks.py")
    folder = tmp_path / "to check"
    folder.mkdir()
    files = sorted((tiny_cookies / "test" / "good").glob("*.png"))[:2]
    for f in files:
        shutil.copy(f, folder / f.name)
    (folder / "zz cut.png").write_bytes(files[0].read_bytes()[:60])
    code = (
        "import sys, runpy; sys.modules['anomaly'] = None; "
        f"sys.argv = ['onnx_predict.py', {str(model)!r}, {str(folder)!r}]; "
        "runpy.run_path('onnx_predict.py', run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=deployed, check=False
    )
    rows = [line.split("\t") for line in done.stdout.splitlines()]
    scores, _ = predict_onnx(model, files)
    threshold = anomaly.onnx_predict.OnnxDetector(model).threshold
    want = [
        [str(folder / f.name), f"{s:.6g}", "REJECT" if s >= threshold else "PASS"]
        for f, s in zip(files, scores)
    ]
    assert done.returncode == 2, done.stderr
    assert rows == [*want, [str(folder / "zz cut.png"), "ERROR", "-"]]
    assert f"threshold {threshold:.6g} (normal_quantile" in done.stderr
    assert "zz cut.png: cannot read this image" in done.stderr
