"""What `train` checks before it writes into a run folder, and how `train --resume` writes.

`train` never writes into a folder of the user's or over a trained run (`refuse_existing`).
A resume that fails must leave the run as it was: `check_last` reads everything in last.pt (as
`anomaly.train.restore` will) before anything is written, and `ResumeWrites`, the checkpoints
object the resumed training is given, writes config.json (more epochs, another device, the
data's new place) and the resuming versions only with the first new epoch's files.
`anomaly.pipeline.train_run` is the entry point; this module keeps pipeline.py readable.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

from anomaly.config import Config
from anomaly.runs import RunDir, RunError, versions
from anomaly.safe_files import write_json
from anomaly.train import DamagedState, check_resumable


def refuse_existing(run: RunDir) -> None:
    """RunError when `run` is a file, a folder of the user's, or holds a (maybe interrupted)
    trained run: `train` (without --resume) writes only into a new folder or an unfinished one."""
    if run.path.exists() and not run.path.is_dir():
        raise RunError(f"--out {run} is a file; choose a folder name for the run")
    if run.path.is_dir() and not _is_ours(run):  # a folder of the user's: never write into it
        theirs = sorted(p.name for p in run.path.iterdir() if p.name not in RunDir.TOOL_FILES)
        if theirs:
            raise RunError(
                f"--out {run} is a folder that holds files that are not a run's "
                f"({', '.join(theirs[:3])}{', ...' if len(theirs) > 3 else ''}), so nothing is "
                "written there; choose a new folder name for the run"
            )
    if run.has_model():
        if run.checkpoint().get("complete", True):
            raise RunError(
                f"{run} already holds a trained run; choose another --out, or delete "
                "the folder to train it again"
            )
        raise RunError(
            f"{run} holds an interrupted run; continue it with `python -m anomaly "
            f"train --out {run} --resume`, or delete the folder to start again"
        )


def _is_ours(run: RunDir) -> bool:
    """Whether the folder is a run (its config.json reads as one), maybe an unfinished one."""
    try:
        return run.is_run() and run.config() is not None
    except (RunError, ValueError, TypeError):
        return False


def check_last(run: RunDir, detector) -> dict:
    """last.pt, read and loaded into `detector` as resuming will; RunError naming last.pt and
    the fix when it is damaged (anything torch would only notice during training)."""
    last = run.load_last()
    try:
        check_resumable(detector, last)
    except DamagedState as err:
        raise RunError(
            f"{run.file(run.LAST)} is damaged ({err}), so the run cannot continue from it; "
            "nothing in the run was changed. Restore the file from a copy of the run, or train "
            "afresh into a new --out"
        ) from None
    return last


def moved(split: dict | None, old: str, new: str) -> dict | None:
    """The run's split with each image's path under the data root `old` moved under `new`."""
    if split is None:
        return None
    old, new = os.path.abspath(old), os.path.abspath(new)

    def move(path: str) -> str:
        inside = os.path.commonpath([old, os.path.abspath(path)]) == old
        return os.path.join(new, os.path.relpath(path, old)) if inside else path

    return {**split, **{k: [move(p) for p in split.get(k, [])] for k in ("train", "val")}}


class ResumeWrites:
    """The run's checkpoints (`anomaly.train.Checkpoints`) for a resumed training: the first
    write of a new epoch first saves config.json as resumed (`config`) and adds the versions
    that resume to versions.json, so until then the run is untouched. When that epoch does not
    improve on model.pt, model.pt is marked as from an unfinished training of the new config
    (as a fresh run's is): config.json and model.pt never disagree, and `score` says to finish
    the training rather than to restore config.json."""

    def __init__(self, run: RunDir, config: Config, from_epoch: int) -> None:
        self.run, self.config, self.from_epoch, self.started = run, config, from_epoch, False

    def _start(self, new_model: bool) -> None:
        if self.started:
            return
        self.started = True
        self.run.save_config(self.config)
        self._record_versions()
        if not new_model and self.run.has_model():
            payload = self.run.checkpoint()
            kept = {
                k: v
                for k, v in payload.items()
                if k not in ("format", "method", "config", "state", "complete")
            }
            same = SimpleNamespace(
                name=payload["method"], config=self.config, state_dict=lambda: payload["state"]
            )
            self.run.save_checkpoint(same, complete=False, **kept)

    def _record_versions(self) -> None:
        """versions.json keeps what made the run and lists each resume's versions under
        "resumed"; one that does not read as a record is left alone."""
        path = self.run.file(self.run.VERSIONS)
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        if not isinstance(record, dict):
            return
        earlier = record.get("resumed") if isinstance(record.get("resumed"), list) else []
        record["resumed"] = [*earlier, {"from_epoch": self.from_epoch, **versions()}]
        write_json(path, record)

    def save_checkpoint(self, detector, **extra) -> None:
        self._start(new_model=True)
        self.run.save_checkpoint(detector, **extra)

    def save_history(self, rows: list[dict]) -> None:
        self._start(new_model=False)
        self.run.save_history(rows)

    def save_last(self, state: dict) -> None:
        self._start(new_model=False)
        self.run.save_last(state)

    def load_last(self) -> dict:
        return self.run.load_last()

    def checkpoint(self) -> dict:
        return self.run.checkpoint()
