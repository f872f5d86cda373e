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
