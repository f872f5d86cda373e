"""What `auto` chose, as a run folder records it twice: inside model.pt, beside the model that
scores, and in selection.json, for people to read (`python -m anomaly train` points at it, the
notebooks show it).

A run folder from someone else is untrusted input: its selection.json may have been edited, or
copied from another run, and then names a choice the model never made. `selection_problem` says
so (`load_run` warns with it); `read_selection` is what display code shows: the record inside
model.pt, with that warning when selection.json disagrees or is not JSON, never an exception.

How long each step took (`TIMINGS`) is kept in selection.json only: model.pt holds the record
`without_timings`, so the same data and seed give the same model.pt, and a threshold chosen for
one is accepted by the other (`threshold_file.check_model` compares the file's SHA-256). The two
records are compared without their timings; model.pt files written before hold them too.
"""

from __future__ import annotations

import json
import warnings

from anomaly.detectors.auto_grid import (
    ROW_TIMINGS,
    TIMINGS,
    row_without_timings,
    without_timings,
)
from anomaly.runs import RunDir, RunError
from anomaly.safe_files import load_record


def _with_timings(own: dict, saved) -> dict:
    """model.pt's record `own` with the times selection.json (`saved`) gives: a candidate's
    where its row otherwise equals model.pt's, the run's where the whole record does; None where
    it gives none (an older model.pt's own times stay). For reading only: nothing scores by them."""
    saved = saved if isinstance(saved, dict) else {}
    same = _canonical(without_timings(saved)) == _canonical(without_timings(own))
    merged = {**own, **{k: own.get(k, saved.get(k) if same else None) for k in TIMINGS}}
    rows, theirs = own.get("candidates"), saved.get("candidates")
    if isinstance(rows, list):
        theirs = theirs if isinstance(theirs, list) else []
        merged["candidates"] = [
            _row_with_timings(row, theirs[i] if i < len(theirs) else None)
            for i, row in enumerate(rows)
        ]
    return merged


def _row_with_timings(row, saved):
    """A candidate's `row` of model.pt's record, with the times of `saved` (its row in
    selection.json) when that row otherwise says the same."""
    if not isinstance(row, dict):
        return row
    saved = saved if isinstance(saved, dict) else {}
    same = _canonical(row_without_timings(row)) == _canonical(row_without_timings(saved))
    return {**row, **{k: row.get(k, saved.get(k) if same else None) for k in ROW_TIMINGS}}


def _model_record(payload: dict) -> dict | None:
    """The selection saved inside model.pt with the model (None for other methods)."""
    try:
        record = json.loads(payload["state"]["selection"])
    except (KeyError, TypeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _canonical(record) -> str:
    return json.dumps(record, sort_keys=True, default=str)  # NaN equals NaN here


def selection_problem(run: RunDir, payload: dict) -> str | None:
    """Why the run's selection.json does not describe the model in model.pt (`payload`, as
    `RunDir.checkpoint` reads it), or None when it does, or is absent."""
    path, model = run.file(run.SELECTION), run.file(run.MODEL)
    if not path.is_file():
        return None
    try:
        saved = load_record(path)
    except ValueError as err:  # RunError naming it
        return (
            f"{err}. What auto chose is also recorded in {model}, which is what scores: delete "
            "selection.json, or restore it"
        )
    method = payload.get("method")
    if method != "auto":
        return (
            f"{path} describes a choice made by `--method auto`, but {model} holds a {method} "
            "model: it does not describe this run (copied from another?); delete it"
        )
    own = _model_record(payload)
    if own is None:
        return None  # a model.pt without its own record has nothing to check against
    if isinstance(saved, dict) and _canonical(without_timings(saved)) == _canonical(
        without_timings(own)
    ):
        return None  # the same choice and scores; only selection.json has the times now
    said = saved.get("chosen") if isinstance(saved, dict) else None
    if said != own.get("chosen"):
        names = f"says auto chose {said!r}" if said is not None else "names no choice"
        what = f"{names}, but {model} holds {own.get('chosen')!r}"
    else:
        what = f"names the same choice as {model}, but its candidates or scores differ"
    return (
        f"{path} {what}; it was changed after training or comes from another run. The model "
        "in model.pt is what scores, and its own record of the choice is what is shown: "
        "delete selection.json, or restore it"
    )


def read_selection(run) -> dict | None:
    """auto's record of its choice, for display: the one inside model.pt (the model that
    scores), with a warning when selection.json disagrees with it or does not parse, and with
    the times selection.json gives for the candidates it agrees on (None where it gives none);
    an older model.pt without that record gives selection.json when it parses. None when
    neither holds one (a run of another method)."""
    run = RunDir(run)
    payload = run.checkpoint()
    problem = selection_problem(run, payload)
    if problem:
        warnings.warn(problem, stacklevel=2)
    saved = None
    if run.file(run.SELECTION).is_file():
        try:
            saved = run._read_json(run.SELECTION)
        except RunError:
            pass  # said by `problem`
    own = _model_record(payload)
    if own is not None:
        return _with_timings(own, saved)
    return None if problem else saved
