"""One rule drops a kept threshold's guarantee when the model changes (`threshold_file.
drop_guarantee`): a threshold that records its model (carried when model.pt is replaced) and one
from before that record (kept by train --resume) end the same."""

from __future__ import annotations

import json

from helpers import copy_run, tiny_config

from anomaly.calibration import set_threshold
from anomaly.pipeline import train_run
from anomaly.runs import RunDir
from anomaly.safe_files import sha256_file
from anomaly.threshold_file import MODEL_RECORD, REPLACED_RECORD, carried, drop_guarantee


def test_drop_guarantee_marks_only_what_had_one(tmp_path):
    params = {"alpha": 0.1, "n": 9, "guarantee": "false-reject rate <= 10%"}
    assert drop_guarantee(params) and params == {"alpha": 0.1, "n": 9, "earlier_model": True}
    assert not drop_guarantee(params) and params["earlier_model"]  # again: nothing to drop
    plain = {"q": 0.99}
    assert not drop_guarantee(plain) and plain == {"q": 0.99}
    assert not drop_guarantee(None) and not drop_guarantee(["guarantee"])  # not an object
    d = {"value": 1.0, "rule": "conformal", "params": {"guarantee": "x"}}
    assert carried(d, "ab" * 32, tmp_path / "none.pt")["params"] == {"earlier_model": True}


def test_recorded_and_older_thresholds_lose_their_guarantee_alike(tiny_cookies, tmp_path):
    run = tmp_path / "ae"
    train_run(tiny_config(tiny_cookies, "ae", epochs=1), run, progress=False)
    assert "guarantee" in set_threshold(run, "conformal", 0.5).params
    older = copy_run(run, tmp_path / "older")
    saved = json.loads(RunDir(older).file(RunDir.THRESHOLD).read_text())
    del saved[MODEL_RECORD]  # written before thresholds recorded their model
    RunDir(older).file(RunDir.THRESHOLD).write_text(json.dumps(saved))

    kept = {}
    for name in (run, older):
        train_run(tiny_config(tiny_cookies, "ae", epochs=2), name, resume=True, progress=False)
        d = json.loads(RunDir(name).file(RunDir.THRESHOLD).read_text())
        assert d.pop(MODEL_RECORD) == sha256_file(RunDir(name).file(RunDir.MODEL))  # the new one
        d.pop(REPLACED_RECORD, None)  # and the one it replaced, where it recorded that
        kept[name.name] = d
    assert kept["ae"] == kept["older"]
    assert "guarantee" not in kept["ae"]["params"] and kept["ae"]["params"]["earlier_model"]


def test_a_threshold_is_kept_for_no_model_when_the_run_has_none(tmp_path):
    """`saved_for` matched a record without a replaced model against a missing model.pt (None
    in (sha, None)), so the first model.pt written into such a folder took it over."""
    from anomaly.threshold_file import saved_for

    threshold, model = tmp_path / "threshold.json", tmp_path / "model.pt"
    threshold.write_text(json.dumps({"rule": "manual", "value": 1.0, MODEL_RECORD: "ab" * 32}))
    assert saved_for(threshold, model) is None
    model.write_bytes(b"another model")
    assert saved_for(threshold, model) is None
    threshold.write_text(json.dumps({"rule": "manual", MODEL_RECORD: sha256_file(model)}))
    assert saved_for(threshold, model)["rule"] == "manual"


def test_a_quantile_threshold_kept_for_a_resumed_model_is_not_called_edited(tiny_cookies, tmp_path):
    """train --resume keeps a user's normal-quantile threshold (chosen on the earlier model);
    checked against the new model's held-out scores it read as edited (review, session 30)."""
    run = tmp_path / "ae"
    train_run(tiny_config(tiny_cookies, "ae", epochs=1), run, progress=False)
    set_threshold(run, "normal-quantile", 0.9)
    train_run(tiny_config(tiny_cookies, "ae", epochs=2), run, resume=True, progress=False)
    kept = RunDir(run).threshold()
    assert kept.rule == "normal_quantile" and "scores_disagree" not in kept.params
