"""A run folder's model.pt and last.pt: the checkpoint format, which config fields a checkpoint
must agree on, and `CheckpointFiles`, the part of `anomaly.runs.RunDir` that reads and writes
them (nothing in them is unpickled: `safe_files.safe_torch_load`).

model.pt holds the model and nothing that changes from one identical training to the next (how
long fitting took goes to versions.json: `RunDir.save_fit_seconds`), so the same data, seed
and flags give the same file (its bytes depend on its contents alone, `safe_files.canonical`: a
config read back from config.json pickles as the defaults do; a model.pt written before
2026-12-04 may hold the same model in other bytes), and a threshold chosen for one is accepted by the other
(`threshold_file.check_model` compares the file's SHA-256). The file holds the run's config,
so runs whose weights agree but whose config.json differs (the data folder's path, --workers,
--device) are other models to it. Older model.pt files still hold
their `fit_seconds`; nothing reads it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, fields
from pathlib import Path

from anomaly import threshold_file
from anomaly.config import RESUMABLE_FIELDS, Config
from anomaly.safe_files import (
    RunError,
    atomic_bytes,
    atomic_save,
    load_record,
    safe_torch_load,
    torch_bytes,
    write_json,
)
from anomaly.terminal import shell_word

CHECKPOINT_FORMAT = "anomaly-checkpoint/1"
# what to do with a run stopped before its first epoch was saved (no last.pt: nothing to resume)
TRAIN_AGAIN = "train it again: the same `python -m anomaly train ... --out {out}` (its flags)"
SPLIT_KEY = "split_sha256"  # model.pt's record of its split.json (`split_digest`)


def split_digest(run) -> str | None:
    """The SHA-256 of which images `run`'s split.json says were trained on and held out, by
    their contents (each image's SHA-256, in order, and how many trained), not their paths or
    times: the same data and seed give the same, so model.pt stays the same bytes. None where
    split.json is missing, damaged or from before its digests (nothing to compare)."""
    try:
        split = run.split()
    except (RunError, OSError):
        return None
    if not split or not split.get("sha256"):
        return None
    text = json.dumps([len(split["train"]), split["sha256"]])
    return hashlib.sha256(text.encode()).hexdigest()


def check_split_of_model(run, recorded) -> str:
    """Why `run`'s split.json is not the split its model.pt was trained with (`recorded`: its
    `SPLIT_KEY`, None in one from before), or "": a model.pt copied into another run (a
    rollback or a deployment by hand) beside that run's split, whose test images are then, in
    part, the images this model learned. split.json is read only where model.pt records one."""
    if not isinstance(recorded, str) or (now := split_digest(run)) is None or now == recorded:
        return ""
    return (
        f"{run.file(run.SPLIT)} is not the split {run.file(run.MODEL)} was trained with (a "
        "model.pt copied from another run?): its test images would include images this model "
        "learned. Copy split.json from the run model.pt came from (or use that run's folder)"
    )


# Config fields that change the shape of what a method learns: a checkpoint only loads into a
# detector that agrees on all of them.
SHAPE_FIELDS = ("method", "size", "channels", "width", "latent", "backbone", "k")
# Config fields that may differ between config.json and the checkpoint without changing a score:
# where the data and the device are (score --data and --device choose them per call).
UNSCORED_FIELDS = ("data", "device", "runtime", "workers")  # same scores whatever they are


def config_differences(a: dict, b: dict, skip=UNSCORED_FIELDS) -> list[str]:
    """Names of the Config fields on which two saved configs disagree (ignoring `skip`); a field
    one of them lacks (saved before it existed) counts as its default (`decode`: "full")."""
    defaults = asdict(Config())
    a, b = {**defaults, **a}, {**defaults, **b}
    return [
        f.name
        for f in fields(Config)
        if f.name not in skip and f.name in a and f.name in b and a[f.name] != b[f.name]
    ]


class CheckpointFiles:
    """model.pt and last.pt of a run folder: a base of `anomaly.runs.RunDir`, which names the
    files and gives `path`, `file(name)` and `config()`."""

    path: Path
    MODEL: str
    LAST: str
    THRESHOLD: str

    def checkpoint(self) -> dict:
        """model.pt, loaded without unpickling anything, after checking its header."""
        path = self.file(self.MODEL)
        if not path.exists():
            self.check_not_in_use("read")  # still training, before its first model: in use
            made = [n for n in (self.THRESHOLD, self.VAL_SCORES) if self.file(n).exists()]
            if made:  # trained and scored once: the file went missing (a copy without it?)
                raise RunError(
                    f"{self.path} has no {self.MODEL}, but its {' and '.join(made)} say it was "
                    f"trained: the file is gone (a copy of the run without it?). Restore "
                    f"{self.MODEL} from a copy of the run; training again would replace the "
                    "model its threshold was set for"
                )
            resume = " (or continue it with --resume)" if self.has_last() else ""
            raise RunError(
                f"{self.path} has no {self.MODEL}: its training never finished an "
                f"epoch; train it again{resume}"
            )
        payload = safe_torch_load(path)
        found = payload.get("format") if isinstance(payload, dict) else None
        if (
            isinstance(found, str)
            and found.startswith("anomaly-checkpoint/")
            and found != CHECKPOINT_FORMAT
        ):
            raise RunError(
                f"{path} is in format {found[:40]!r}, this anomaly reads {CHECKPOINT_FORMAT!r}: "
                "it was written by another version of anomaly (versions.json says which); "
                "use that version, or train the run with this one"
            )
        if found != CHECKPOINT_FORMAT:
            raise RunError(
                f"{path} was not written by anomaly (no '{CHECKPOINT_FORMAT}' header); "
                "load it into your own model, or train a run with "
                "`python -m anomaly train`"
            )
        for key in ("config", "state"):
            if not isinstance(payload.get(key), dict):
                raise RunError(
                    f"{path} is damaged: its {key!r} is {type(payload.get(key)).__name__}, not a "
                    "mapping of names to values; restore it from a copy, or train the run again"
                )
        return payload

    def save_checkpoint(self, detector, complete: bool = False, **extra) -> None:
        """Write model.pt: the method, the config it was trained with (all of it: scoring
        refuses a config.json that disagrees), its learned state, and whether training finished
        (False for the best-so-far checkpoints written during training). A threshold chosen for
        the model.pt it replaces (training resumed) is kept for the new one, less its guarantee
        (`threshold_file.carried`)."""
        kept = threshold_file.saved_for(self.file(self.THRESHOLD), self.file(self.MODEL))
        payload = {
            "format": CHECKPOINT_FORMAT,
            "method": detector.name,
            "config": asdict(detector.config),
            "state": plain_state(detector.state_dict(), detector.name),
            "complete": bool(complete),
            **extra,
        }
        if digest := split_digest(self):  # which images it learned: `check_split_of_model`
            payload[SPLIT_KEY] = digest
        if kept is None:
            atomic_save(payload, self.file(self.MODEL))
            return
        # the threshold first, for both models: a kill between the two writes keeps it
        data = torch_bytes(payload)
        new_sha = hashlib.sha256(data).hexdigest()
        write_json(
            self.file(self.THRESHOLD), threshold_file.carried(kept, new_sha, self.file(self.MODEL))
        )
        atomic_bytes(data, self.file(self.MODEL))

    def check_not_interrupted(self) -> None:
        """RunError when the run's model.pt is not the one its held-out images were scored by
        (no val_scores.json, or one of another model.pt: a `--resume` rewrote it), and it is
        unfinished or still being written: in use by another process; in the middle of its
        training (`--resume` continues it; killed before its first epoch was saved, plain
        `train` starts again); or after it, before scoring (`--resume` finishes it). model.pt is
        read with torch only then: a finished run's threshold is set without it."""
        if not self.has_model() or self._scored_by_this_model():
            return
        self.check_not_in_use("read")  # still training in another process: in use, not stopped
        done = bool(self.checkpoint().get("complete", True))
        if done and self.file(self.VAL_SCORES).exists():
            return  # a finished model with another's held-out scores: their check says so
        if not done and not self.has_last():  # `--resume` would refuse: nothing to continue
            raise RunError(
                f"{self.path} was interrupted before its first epoch was saved whole; train it "
                f"again: `python -m anomaly train --out {shell_word(self.path)}`"
            )
        what = (
            "after training, before its held-out images were scored"
            if done
            else "in the middle of its training, so model.pt holds a model from the middle of it"
        )
        raise RunError(
            f"{self.path} was interrupted {what}; finish it with `python -m anomaly train "
            f"--out {shell_word(self.path)} --resume`, then set the threshold"
        )

    def _scored_by_this_model(self) -> bool:
        """Whether val_scores.json records the SHA-256 of the run's model.pt (or, from an older
        version, no model at all)."""
        path = self.file(self.VAL_SCORES)
        if not path.is_file():
            return False
        try:
            threshold_file.check_model(load_record(path), self.file(self.MODEL))
        except (ValueError, RunError):  # another model's, or not a record: read model.pt
            return False
        return True

    def stopped_before_threshold(self) -> bool:
        """Whether the run finished training (a complete model.pt) but stopped before scoring
        its held-out images or saving its threshold (no val_scores.json or threshold.json):
        Ctrl-C, or a failure such as a full disk, between the two."""
        try:
            return (
                self.has_model()
                and not (self.file(self.VAL_SCORES).exists() and self.has_threshold())
                and bool(self.checkpoint().get("complete", True))
            )
        except (RunError, ValueError, OSError):
            return False

    def training_now(self) -> bool:
        """Whether the run's lock names `train` (whether its process lives: `check_not_in_use`):
        a resume replaces model.pt and then its threshold, so a reader meanwhile would pair the
        new model with the earlier threshold."""
        try:
            return load_record(self.file(self.LOCK)).get("command") == "train"
        except (OSError, ValueError, AttributeError):
            return False

    def refuse_stopped(self, command: str) -> None:
        """RunError naming `train --resume` for a run `stopped_before_threshold` with no
        threshold.json (`score` wrote into it and `predict` said to set a threshold, which said
        to resume); one still training: in use."""
        if self.has_model() and not self.has_threshold() and self.stopped_before_threshold():
            self.check_not_in_use(command)
            raise RunError(
                f"{self.path} stopped after training, before its threshold was set; finish it, "
                f"without training again: `python -m anomaly train --out {shell_word(self.path)} "
                "--resume`"
            )

    def load_checkpoint(self, detector) -> dict:
        """Load model.pt into `detector`, after checking it was made for the same shape."""
        payload = self.checkpoint()
        self.check_compatible(payload["config"], detector.config)
        try:
            detector.load_state_dict(payload["state"])
        except ValueError as err:  # a detector's own check: its words, whole
            raise RunError(f"{self.file(self.MODEL)}: {err}") from None
        # torch's, or a state of other types (someone else's file): its first line, shortened
        except (RuntimeError, KeyError, TypeError, AttributeError, IndexError) as err:
            first = str(err).strip().splitlines()[0][:300]
            raise RunError(
                f"The weights in {self.file(self.MODEL)} do not fit the {detector.name} "
                f"detector with this config ({first}); train a new run"
            ) from None
        return payload

    def check_compatible(self, saved: dict, config: Config) -> None:
        """Raise RunError naming the run and every shape-deciding field that differs."""
        diffs = [
            f"{f}: checkpoint has {saved.get(f)!r}, asked for {getattr(config, f)!r}"
            for f in SHAPE_FIELDS
            if saved.get(f) != getattr(config, f)
        ]
        if diffs:
            raise RunError(
                f"The checkpoint in {self.path} does not fit this detector ("
                + "; ".join(diffs)
                + "). Train a new run with these settings, or load "
                "the run with its own config (anomaly.load_run)."
            )

    def trained_config(self) -> Config:
        """The config model.pt was trained with; RunError if config.json disagrees on any field
        that changes scores (someone edited it: the scores and the threshold would silently
        change)."""
        config = self.config()
        saved = self.checkpoint()["config"]
        diffs = config_differences(saved, asdict(config))
        if diffs:
            written = self._read_json(self.CONFIG)  # a field it lacks reads as the default
            detail = "; ".join(
                f"{f}: config.json has "
                + (
                    f"{getattr(config, f)!r}"
                    if f in written
                    else f"no {f} (so the default {getattr(config, f)!r})"
                )
                + f", the model was trained with {saved.get(f, getattr(Config(), f))!r}"
                for f in diffs
            )
            if set(diffs) <= set(RESUMABLE_FIELDS) and self.has_last():
                self.check_not_in_use("read")  # a resume writing its first epoch: in use
                raise RunError(  # `train --resume --epochs N` writes config.json first
                    f"{self.file(self.CONFIG)} asks for more training than {self.file(self.MODEL)} "
                    f"has had ({detail}): a `train --resume` was stopped before it saved an "
                    f"epoch. Continue it: `python -m anomaly train --out {shell_word(self.path)} --resume`"
                )
            raise RunError(
                f"{self.file(self.CONFIG)} disagrees with {self.file(self.MODEL)} "
                f"({detail}). Scores would not be what the model learned: restore "
                "config.json, or train a new run with the new settings."
            )
        return config

    def save_last(self, state: dict) -> None:
        """last.pt: what resuming needs (tensors, numbers and lists only)."""
        atomic_save(state, self.file(self.LAST))

    def load_last(self) -> dict:
        if self.file(self.LAST).exists() and not self.file(self.LAST).is_file():
            self.refuse_not_a_file(self.LAST)
        if not self.has_last():
            self.check_not_in_use("train")  # still training, before its first epoch: in use
            raise RunError(
                f"Cannot resume: {self.path} has no {self.LAST} (the run never "
                "finished an epoch, or its method does not train by epochs); "
                f"train it again without --resume: the same `python -m anomaly train ... --out "
                f"{shell_word(self.path)}` (its flags), as its config.json records them"
            )
        last = safe_torch_load(self.file(self.LAST))
        if not isinstance(last, dict) or "epoch" not in last:
            raise RunError(f"{self.file(self.LAST)} is damaged; restore it, or train a new --out")
        return last


def plain_state(state, method: str, where: str = "state_dict()"):
    """`state` (a detector's `state_dict()`), or RunError naming the first value in it that a
    model.pt cannot hold: only tensors and plain values (numbers, strings, None, and lists,
    tuples, sets and dicts of them) load back, since loading refuses Python objects (they could
    run code); a numpy array or number (np.float64, a str or int subclass) saved would make
    every later load of the run fail. Types are compared exactly, as loading does."""
    import collections

    import torch

    kind = type(state)
    if kind in (dict, collections.OrderedDict):
        for key, value in state.items():
            if type(key) not in (str, int):
                raise RunError(f"{method}: its {where} has a key {key!r:.60} that is not a string")
            plain_state(value, method, f"{where}[{key!r:.60}]")
    elif kind in (list, tuple, set, torch.Size):
        for i, value in enumerate(state):
            plain_state(value, method, f"{where}[{i}]")
    elif not isinstance(state, torch.Tensor) and kind not in (
        bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device
    ):  # fmt: skip
        raise RunError(
            f"{method}: its {where} is a {kind.__module__}.{kind.__name__}, which a model.pt "
            "cannot hold: keep tensors (torch.from_numpy(a) for a numpy array) and plain values "
            "(float(x) for a numpy number; numbers, strings, lists, dicts) only"
        )
    return state
