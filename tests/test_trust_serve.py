"""The explorer server, the threshold rules and the train-size curve on awkward inputs."""

from __future__ import annotations

import socket

import pytest

from anomaly.explorer import server


def test_port_in_use_is_refused_before_serving(tmp_path):
    """Voila moved quietly to the next port while the printed URL (with its token) named the
    busy one; serve now refuses a busy port by name and tells Voila never to move."""
    with socket.socket() as busy:
        busy.bind((server.LOCAL, 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError, match=f"--port {port}: .* already in use.*--port {port + 1}"):
            server.check_port_free(port)
    server.check_port_free(port)  # free again once the other listener has gone
    for bad in (0, 70000):
        with pytest.raises(ValueError, match="from 1 to 65535"):
            server.check_port_free(bad)
    run = tmp_path / "run"
    run.mkdir()
    (run / "predictions.npz").write_bytes(b"")
    cmd, _ = server.voila_command(run, port=port)
    assert "--Voila.port_retries=0" in cmd
    assert f"--Voila.ip={server.LOCAL}" in cmd


def test_curve_never_repeats_a_subset_and_says_when_sizes_are_capped(tiny_cookies, capsys):
    """--seeds above the number of different subsets fitted the same subsets again (a billion
    times for --seeds 1000000000), narrowing the spread; a size above the training images
    became "all" without a word."""
    from anomaly.benchmark_curves import _subsets, train_size_curve

    assert len(_subsets(list(range(5)), 4, 10**9, 0)) == 5  # C(5, 4), each once
    picks = _subsets(list(range(20)), 2, 50, 0)
    assert len(picks) == 50 and len({tuple(p) for p in picks}) == 50
    rows = train_size_curve(tiny_cookies, "meandiff", sizes=[1, 1000], seeds=10**9, progress=False)
    n_all = max(r["n"] for r in rows)
    assert sum(r["n"] == 1 for r in rows) == n_all  # one point per single image, no repeats
    err = capsys.readouterr().err
    assert f"--sizes 1000: {tiny_cookies} has {n_all} training images" in err
    assert f"n=1: only {n_all} different subsets" in err


def test_f1_threshold_says_it_was_chosen_on_the_test_set(scored_ae_run, tmp_path):
    """--rule f1 printed only "no guarantee": not that the test images chose it (so its results
    there are optimistic), nor that with few defects it rests on one defect's score."""
    from helpers import copy_run

    from anomaly.calibration import set_threshold
    from anomaly.runs import RunDir
    from anomaly.threshold_text import calibration_words

    run = copy_run(scored_ae_run, tmp_path / "run")
    t = set_threshold(run, "f1")
    k = int((RunDir(run).predictions().labels > 0).sum())
    assert t.params["n_defective"] == k
    words = calibration_words(t)
    assert f"{k} defective" in words and "optimistic" in words
    assert ("lowest-scored defect" in words) == (k < 10)
    t.params.pop("n_defective")  # a threshold.json written before this still reads
    assert "optimistic" in calibration_words(t)


def test_serve_refuses_runs_it_cannot_show_before_starting(scored_ae_run, tmp_path, monkeypatch):
    """Runs scored on other images, or a damaged predictions.npz, started the server anyway and
    the page showed only a blank error; a damaged .npz gave numpy's advice to unpickle it."""
    from anomaly.explorer.runs import reindexed
    from anomaly.runs import RunDir

    def no_server(*args, **kwargs):
        raise AssertionError("the server was started")

    monkeypatch.setattr(server.subprocess, "Popen", no_server)
    with socket.socket() as probe:
        probe.bind((server.LOCAL, 0))
        port = probe.getsockname()[1]
    fewer = tmp_path / "fewer.npz"
    reindexed(RunDir(scored_ae_run).predictions(), [0, 1]).save(fewer)
    with pytest.raises(ValueError, match="were not scored on the same images"):
        server.serve([scored_ae_run, fewer], port=port)
    junk = tmp_path / "junk.npz"
    junk.write_text("junk")
    with pytest.raises(ValueError, match=f"{junk} is not a readable predictions.npz"):
        server.serve([junk], port=port)


def test_explorer_says_when_the_threshold_was_set_on_its_own_test_images(
    scored_ae_run, tiny_cookies, tmp_path
):
    """threshold --good-images DATA/test/good, then the explorer showed the false-reject rate
    measured on those same images as if it checked the guarantee."""
    from helpers import copy_run

    from anomaly.calibration import set_threshold
    from anomaly.explorer import ThresholdExplorer

    run = copy_run(scored_ae_run, tmp_path / "run")
    good = tiny_cookies / "test" / "good"
    set_threshold(run, "conformal", 0.45, good_images=good)
    n_good = len(list(good.glob("*.png")))
    ex = ThresholdExplorer(run)
    assert f"set on {n_good} of these images themselves" in ex.rule.value
    assert "not an independent check" in ex.report_html()
    set_threshold(run, "conformal", 0.5)  # on the held-out images: nothing to say
    assert "themselves" not in ThresholdExplorer(run).rule.value


def test_explore_exits_with_the_servers_failure(monkeypatch, tmp_path):
    """A Voila that fails to start (e.g. the port taken between the check and the start) made
    `explore` exit 0 all the same."""
    import anomaly.explorer
    from anomaly.cli import main

    monkeypatch.setattr(anomaly.explorer, "serve", lambda run, port: 1)
    assert main(["explore", "--run", str(tmp_path)]) == 1
    monkeypatch.setattr(anomaly.explorer, "serve", lambda run, port: 0)
    assert main(["explore", "--run", str(tmp_path)]) == 0
