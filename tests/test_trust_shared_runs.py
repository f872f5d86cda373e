"""A run folder from someone else is untrusted input: what it says is checked before it is
shown, and it chooses nothing on this machine that the user did not."""

from __future__ import annotations

import json

import pytest
from helpers import copy_run

from anomaly.cli import main
from anomaly.threshold_file import guarantee_words


def _threshold(run, rule, **params):
    d = json.loads((run / "threshold.json").read_text())
    d["rule"], d["params"] = rule, params
    (run / "threshold.json").write_text(json.dumps(d))


def _predict(run, tiny_cookies, capsys):
    image = min((tiny_cookies / "test/good").glob("*.png"))
    code = main(["predict", "--run", str(run), str(image)])
    return code, capsys.readouterr()


def test_a_guarantee_with_control_characters_is_refused(
    scored_ae_run, tiny_cookies, tmp_path, capsys
):
    run = copy_run(scored_ae_run, tmp_path / "run")
    _threshold(run, "conformal", alpha=0.1, n=9, guarantee="\x1b[2Jfalse-reject rate <= 10%")
    code, said = _predict(run, tiny_cookies, capsys)
    assert code == 2 and "params.guarantee" in said.err and "printable" in said.err
    assert "\x1b" not in said.out + said.err.replace(repr("\x1b")[1:-1], "")


@pytest.mark.parametrize(
    "rule, params, shown",
    [
        # a rule that guarantees nothing cannot print a guarantee
        (
            "normal_quantile",
            {"q": 0.99, "guarantee": "false-reject rate <= 0.001% (certified)"},
            "no guarantee on the false-reject rate",
        ),
        # words that do not state the file's own alpha are made again from alpha and n
        (
            "conformal",
            {"alpha": 0.1, "n": 9, "guarantee": "false-reject rate <= 0.001% (certified)"},
            "guarantee: false-reject rate <= 10% for new good parts exchangeable with the 9 good",
        ),
    ],
)
def test_only_a_conformal_threshold_shows_a_guarantee_and_only_its_own(
    scored_ae_run, tiny_cookies, tmp_path, capsys, rule, params, shown
):
    run = copy_run(scored_ae_run, tmp_path / "run")
    _threshold(run, rule, **params)
    code, said = _predict(run, tiny_cookies, capsys)
    assert code in (0, 2) and shown in said.out and "certified" not in said.out


def test_guarantee_words_keep_a_folders_name_when_they_state_the_alpha():
    text = "false-reject rate <= 5% for new good parts exchangeable with the 40 good images in /x"
    assert guarantee_words("conformal", {"alpha": 0.05, "n": 20, "guarantee": text}) == text
    assert guarantee_words("conformal", {"alpha": 0.05}).endswith("the good images it was set on")
    assert guarantee_words("conformal", {"alpha": 5, "guarantee": text}) is None
    assert guarantee_words("f1", {"alpha": 0.05, "guarantee": text}) is None
