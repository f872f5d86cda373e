"""What `auto` chose, as a run folder records it twice: inside model.pt, beside the model that
scores, and in selection.json, for people to read (`python -m anomaly train` points at it, the
notebooks show it).

A run folder from someone else is untrusted input: its selection.json may have been edited, or
copied from another run, and then names a choice the model never made. `selection_problem` says
so (`load_run` warns with it); `read_selection` is what display code shows: the record inside
model.pt, with that warning when selection.json disagrees or is not JSON, never an exception.
"""

from __future__ import annotations

import json
import warnings

from anomaly.runs import RunDir, RunError


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
        saved = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        return (
            f"{path} is not valid JSON ({err}); what auto chose is also recorded in {model}, "
            "which is what scores: delete selection.json, or restore it"
        )
    method = payload.get("method")
    if method != "auto":
        return (
            f"{path} describes a choice made by `--method auto`, but {model} holds a {method} "
            "model: it does not describe this run (copied from another?); delete it"
        )
    own = _model_record(payload)
    if own is None or _canonical(saved) == _canonical(own):
        return None  # a model.pt without its own record has nothing to check against
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
    scores), with a warning when selection.json disagrees with it or does not parse; an older
    model.pt without that record gives selection.json when it parses. None when neither holds
    one (a run of another method)."""
    run = RunDir(run)
    payload = run.checkpoint()
    problem = selection_problem(run, payload)
    if problem:
        warnings.warn(problem, stacklevel=2)
    own = _model_record(payload)
    if own is not None or problem or not run.file(run.SELECTION).is_file():
        return own
    try:
        return run._read_json(run.SELECTION)
    except RunError:
        return None
