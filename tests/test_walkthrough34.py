"""Defects found in session 34 (walkthroughs and the "left" list of session 33), one test each."""

from __future__ import annotations

from helpers import tiny_config


def test_train_and_score_show_progress_for_held_out_images_and_overlays(
    tiny_cookies, tmp_path, capsys
):
    """Session 33's scale walkthrough: `train` showed one bar (features) and `score` one
    (predict); the held-out images' scoring and the overlays, most of `score` at camera sizes,
    ran without a word."""
    from anomaly.pipeline import score_run, train_run

    run = tmp_path / "run"
    train_run(tiny_config(tiny_cookies, "meandiff"), run, progress=True)
    assert "predict meandiff" in capsys.readouterr().err  # the held-out images, after fit
    score_run(run, progress=True)
    err = capsys.readouterr().err
    assert "predict meandiff" in err and "overlays" in err
    score_run(run)  # the API's default stays quiet
    assert "overlays" not in capsys.readouterr().err


def test_explore_prints_its_url_once_the_server_answers(monkeypatch, capsys):
    """Session 33's newcomer: `explore` printed the URL about 5 s before Voila answered, and
    a browser opened at once got "connection refused"; a Voila that failed to start had its
    URL printed all the same."""
    import socket
    import sys

    from anomaly.explorer import server

    with socket.socket() as probe:
        probe.bind((server.LOCAL, 0))
        port = probe.getsockname()[1]
    listens = (
        "import socket, time; time.sleep(0.5); s = socket.socket(); "
        f"s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(0.5)"
    )
    fails = "import sys; sys.exit(3)"
    monkeypatch.setattr("anomaly.explorer.runs.collect_runs", lambda runs: None)
    for child, code, shown in ((listens, 0, True), (fails, 3, False)):
        cmd = [sys.executable, "-c", child, f"--port={port}", "--token=t"]
        monkeypatch.setattr(
            server, "voila_command", lambda *a, c=cmd, **k: (c, {server.RUNS_ENV: "[]"})
        )
        assert server.serve(["RUN"], port=port) == code
        out = capsys.readouterr().out
        assert out.startswith(f"Threshold explorer: starting on 127.0.0.1:{port} ...")
        assert (f"http://127.0.0.1:{port}/" in out) is shown, out


def test_a_method_of_ones_own_says_what_it_reads_and_its_runs_say_how_to_load_them(
    tiny_cookies, tmp_path, monkeypatch, capsys
):
    """A researcher adding a method (helper): a plugin's settings were never said to be
    ignored, and a run of it scored without importing the plugin said "Unknown method" with no
    word of registering it."""
    import pytest

    import anomaly
    from anomaly import config
    from anomaly.cli import main
    from anomaly.detectors import REGISTRY
    from anomaly.detectors.meandiff import MeanDiff

    monkeypatch.setattr(config, "READ_BY", dict(config.READ_BY))
    monkeypatch.setattr(config, "_DECLARED", set())
    with pytest.raises(ValueError, match="'size' is not a setting that only some methods read"):
        anomaly.register("mine", reads=("size",))
    try:
        anomaly.register("mine", reads=("score_topk",))(type("Mine", (MeanDiff,), {}))
        out = tmp_path / "run"
        flags = ["--data", str(tiny_cookies), "--out", str(out), "--size", "64"]
        assert main(["train", "--method", "mine", *flags, "--score-topk", "0.1", "--lr", "1"]) == 0
        err = capsys.readouterr().err
        assert "ignores --lr" in err and "--score-topk" not in err.split("ignores")[1]
    finally:
        REGISTRY.pop("mine", None)
    assert main(["score", "--run", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Unknown method 'mine'" in err and "module that registers it" in err
