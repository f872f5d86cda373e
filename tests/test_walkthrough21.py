"""Session 21's fixes, each with the check that failed before it."""

from __future__ import annotations


def test_an_export_of_an_earlier_model_is_named_at_train_and_at_predict(
    tiny_cookies, tmp_path, capsys
):
    """A run trained again (its model.pt deleted) kept the model.onnx of its earlier model
    without a word, and `predict --onnx` on it said nothing either (or, when the threshold had
    changed, "export again", which a meandiff run cannot). Exports record their model.pt now;
    the same model trained again is no news."""
    import shutil

    from helpers import tiny_config

    from anomaly.cli import main
    from anomaly.pipeline import train_run

    run = tmp_path / "run"
    train_run(tiny_config(tiny_cookies, method="patchknn"), run, progress=False)
    assert main(["export", "--run", str(run)]) == 0
    image = str(min((tiny_cookies / "test" / "crack").glob("*.png")))
    onnx = ["predict", "--onnx", str(run / "model.onnx"), "--no-overlays", image]
    capsys.readouterr()
    assert main(onnx) == 0
    assert "another model" not in capsys.readouterr().err  # the run's own model: no warning
    same = tmp_path / "same"
    shutil.copytree(run, same)
    (same / "model.pt").unlink()
    train_run(tiny_config(tiny_cookies, method="patchknn"), same, progress=False)
    assert "model.onnx" not in capsys.readouterr().out  # the same model.pt again: nothing to say
    (run / "model.pt").unlink()
    train_run(tiny_config(tiny_cookies, method="meandiff"), run, progress=False)
    out = capsys.readouterr().out
    assert "model.onnx holds another model, kept as it is" in out
    assert f"predict --run {run}" in out
    assert (run / "model.onnx").is_file()  # never deleted: it may be deployed
    assert main(onnx) == 0
    err = capsys.readouterr().err
    assert "was exported from another model than" in err and f"predict --run {run}" in err


def test_reading_a_threshold_imports_no_scipy(tiny_cookies, tmp_path):
    """`predict` reads the run's threshold through anomaly.metrics, whose pixel metrics imported
    scipy.ndimage at the top: 0.3 s of every predict's start-up for a function it never calls."""
    import subprocess
    import sys

    from helpers import tiny_config

    from anomaly.pipeline import train_run

    run = tmp_path / "run"
    train_run(tiny_config(tiny_cookies, method="meandiff"), run, progress=False)
    code = (
        "import sys; from anomaly.runs import RunDir; "
        f"RunDir({str(run)!r}).threshold(); print('scipy.ndimage' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
