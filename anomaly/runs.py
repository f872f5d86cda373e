"""The run folder: every file a run holds, written atomically and read back safely (`RunDir`).

    runs/<name>/config.json  split.json  versions.json  model.pt  last.pt  history.csv
               val_scores.json  threshold.json  selection.json
               scores.csv  metrics.json  predictions.npz  overlays/  predict/   (from score/predict)
               scored/<data>/   (score --data OTHER: the same four, for another data folder)
               calibration_scores.json   (from `threshold --good-images FOLDER`)

`RunDir` is the only place that spells these names. A run folder is untrusted input (people share
them): nothing in it is unpickled (`torch.load(weights_only=True)`, `np.load(allow_pickle=False)`),
JSON that does not parse names its file, and every write goes to a temporary file that replaces
the old one, so a killed process never leaves a half-written file. A lock file (`.lock`, holding
the writer's PID; `anomaly.run_lock`) keeps two processes from writing one run at a time.

This module imports only `anomaly.config`, `anomaly.safe_files` (the atomic writes, the safe
loads and `RunError`, re-exported here), `anomaly.run_lock`, `anomaly.threshold_file` (what
threshold.json and val_scores.json may hold, and the model a threshold is for),
`anomaly.run_checkpoints` (model.pt and last.pt: `RunDir`'s checkpoint methods,
`CHECKPOINT_FORMAT`, `config_differences`, re-exported here), `anomaly.run_outputs` (what of
score's outputs is score's, and clearing them: `RunDir.clear_outputs`) and `anomaly.run_versions`
(what made the run: versions.json); building detectors from a run is `anomaly.build.load_run`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
from dataclasses import asdict
from pathlib import Path

from anomaly import threshold_file
from anomaly.config import Config
from anomaly.run_checkpoints import (  # noqa: F401 (re-exported)
    CHECKPOINT_FORMAT,
    SHAPE_FIELDS,
    UNSCORED_FIELDS,
    CheckpointFiles,
    config_differences,
)
from anomaly.run_lock import check_not_in_use, folder_lock
from anomaly.run_outputs import ScoreOutputs
from anomaly.run_versions import versions
from anomaly.safe_files import (
    RunError,
    _atomic,
    atomic_meanwhile,
    finite,
    load_record,
    read_record,
    write_json,
)
from anomaly.terminal import shell_word, spreadsheet_cell

MAP_LIMIT = 1e30  # map values a run's files may name: float32 maps scaled by them stay finite


class RunDir(CheckpointFiles, ScoreOutputs):
    """One run folder: its file names, and a reader and an atomic writer for each file."""

    CONFIG, SPLIT, VERSIONS = "config.json", "split.json", "versions.json"
    MODEL, LAST, HISTORY = "model.pt", "last.pt", "history.csv"
    VAL_SCORES, THRESHOLD, SELECTION = "val_scores.json", "threshold.json", "selection.json"
    CALIBRATION, REFUSED = "calibration_scores.json", "threshold.refused.json"
    SCORES, METRICS, PREDICTIONS = "scores.csv", "metrics.json", "predictions.npz"
    OVERLAYS, PREDICT, LOCK, SCORED = "overlays", "predict", ".lock", "scored"
    OVERLAYS_WRITTEN = ".written.json"  # in overlays/: the files `score` wrote, by SHA-256
    TOOL_FILES = (LOCK, ".made-by-benchmark")  # ours before config.json: lock, benchmark mark
    # what `score` writes (here for the run's data, in scored/<name>/ for other data): stale
    # once the model changes
    SCORE_OUTPUTS = (PREDICTIONS, SCORES, METRICS)
    SCORES_HEADER = ("file", "path", "label", "defect", "score")
    # val_scores.json's map_range: quantiles of the held-out good maps, the overlays' floor (a
    # typical good pixel) and pixel threshold
    MAP_RANGE_Q = (0.5, 0.999)
    EXPORT = "model.onnx"  # `export`'s default file
    NAMES = (CONFIG, SPLIT, VERSIONS, MODEL, LAST, HISTORY, VAL_SCORES, THRESHOLD, SELECTION)
    NAMES += (CALIBRATION, REFUSED, *SCORE_OUTPUTS, OVERLAYS, PREDICT, SCORED, EXPORT)

    def __init__(self, path: str | Path) -> None:
        self.path = Path(os.path.expanduser(path))  # "~/runs/pk" from a notebook; ~x kept

    def __fspath__(self) -> str:
        return str(self.path)

    __str__ = __fspath__

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def overlays(self) -> Path:
        return self.path / self.OVERLAYS

    @property
    def predict_dir(self) -> Path:
        return self.path / self.PREDICT

    # --- state ----------------------------------------------------------------------------
    def is_run(self) -> bool:
        return self.file(self.CONFIG).is_file()

    def has_model(self) -> bool:
        return self.file(self.MODEL).is_file()

    def has_last(self) -> bool:
        return self.file(self.LAST).is_file()

    def is_scored(self) -> bool:
        return self.file(self.PREDICTIONS).is_file()

    def has_metrics(self) -> bool:
        return self.file(self.METRICS).is_file()

    def has_current_metrics(self) -> bool:
        """Whether metrics.json is as `score` computes it now, recording `pixel_metrics_size`:
        before 2026-12-05 each method's pixel metrics were at its own size (a notebook showed a
        run's old numbers beside the README's new ones). (Its `mask_reading`, recorded since,
        is not asked for: it changed only soft-edged masks' metrics, which the benchmark's
        binary masks do not have, and its runs are not scored again for it.)"""
        try:
            return self.has_metrics() and "pixel_metrics_size" in self.metrics()
        except (RunError, ValueError, OSError):
            return False

    def require(self) -> RunDir:
        """Raise RunError unless this is a run folder."""
        if self.path.exists() and not self.path.is_dir():
            raise RunError(f"{self.path} is a file, not a run folder")
        if not self.is_run():
            if (self.path / "train").is_dir() or (self.path / "good").is_dir():  # data, not a run
                raise RunError(
                    f"{self.path} is a data set, not a run folder; train a run on it with "
                    f"`python -m anomaly train --data {shell_word(self.path)} --method patchknn --out RUN` "
                    "and give --run RUN"
                )
            raise RunError(
                f"{self.path} is not a run folder (no {self.CONFIG}); train one with "
                f"`python -m anomaly train --data ROOT --method patchknn --out {shell_word(self.path)}`"
            )
        return self

    def require_model(self, command: str) -> RunDir:
        """RunError unless the run has its model.pt (what a threshold is chosen for, and
        recorded with): one still training is named as in use."""
        if not self.has_model():
            self.check_not_in_use(command)
            fix = (  # without last.pt (patchknn, or before a first epoch) nothing to resume
                f"Finish the training (`python -m anomaly train --out {shell_word(self.path)} "
                f"--resume`), restore {self.MODEL} from a copy of the run, or train it again"
                if self.has_last()
                else f"Restore {self.MODEL} from a copy of the run, or train it again (its "
                "training stopped before it saved anything to resume from)"
            )
            raise RunError(
                f"{self.path} has no {self.MODEL} (its training never finished, or the file is "
                f"gone): a threshold is chosen for a model and records it. {fix}"
            )
        return self

    def create(self, config: Config, split: dict | None = None) -> RunDir:
        """Create (or reuse) the folder and write config.json, versions.json and split.json."""
        if self.path.exists() and not self.path.is_dir():
            raise RunError(
                f"--out {shell_word(self.path)} is a file; choose a folder name for the run"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        self.save_config(config)
        write_json(self.file(self.VERSIONS), versions(config.data))
        if split is not None:
            write_json(self.file(self.SPLIT), split)
        return self

    # --- JSON files -----------------------------------------------------------------------
    def refuse_not_a_run(self) -> None:
        """RunError when the folder is missing, or is a data set given as a run (a file it
        lacks is then not the problem)."""
        if not self.path.is_dir():
            raise RunError(f"{self.path}: no such run folder; check its name")
        if not self.is_run() and any((self.path / d).is_dir() for d in ("train", "good")):
            self.require()  # says it is a data set, and how to train a run on it

    def _read_json(self, name: str, what: str = "") -> dict:
        path = self.file(name)
        if not path.is_file():
            self.refuse_not_a_run()
            self.refuse_not_a_file(name)
            raise RunError(f"{self.path} has no {name}{what}")
        return load_record(path)  # RunError naming it when it is not JSON

    def refuse_not_a_file(self, name: str) -> None:
        """RunError when the run's `name` is there but not a file (a pipe, a device, a folder, a
        link to nothing): said as such, not as a file that is missing, whose fixes would not
        apply (a run folder from someone else is untrusted input)."""
        path = self.file(name)
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise RunError(
                f"{path} is not a file (a pipe, a device, a folder or a link to nothing), so it "
                "is not read; put the run's own file there (from a copy of the run), or train "
                "the run again"
            )

    def config(self) -> Config:
        self.require()
        try:
            return Config.load(self.file(self.CONFIG))
        except TypeError as err:
            raise RunError(f"{self.file(self.CONFIG)}: {err}") from None

    def save_config(self, config: Config) -> None:
        write_json(self.file(self.CONFIG), asdict(config))

    def split(self) -> dict | None:
        """split.json (which images trained, which were held out, their SHA-256s), or None
        when the run has none; RunError naming the file when it is not one."""
        if not self.file(self.SPLIT).exists():
            return None
        split = self._read_json(self.SPLIT)
        problem = "" if isinstance(split, dict) else "it is not a JSON object"
        for key in ("train", "val", "sha256") if not problem else ():
            paths = split.get(key, [] if key == "sha256" else None)  # no sha256: an older run
            if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                problem = f"its {key!r} is not a list of texts"
                break
        if not problem and split.get("sha256"):  # one digest per image, train then val
            n, digests = len(split["train"]) + len(split["val"]), len(split["sha256"])
            if digests != n:
                problem = f"{digests} SHA-256 digests for its {n} training and held-out images"
        if problem:
            raise RunError(
                f"{self.file(self.SPLIT)} is damaged ({problem}); restore it from a copy, or "
                "train the run again"
            )
        return split

    def val_scores(self) -> dict:
        """The held-out good images' `paths`, `scores` and `map_range`; RunError naming the file
        unless `check_held_out` accepts it (finite scores, one per path, of this model.pt)."""
        self.check_not_interrupted()  # its fix is --resume, not training again
        got = self._read_json(self.VAL_SCORES, "; train the run again to get held-out scores")
        try:
            return threshold_file.check_held_out(got, self.file(self.MODEL))
        except ValueError as err:
            raise RunError(
                f"{self.file(self.VAL_SCORES)} {err}; restore it, train a new run, or set the "
                "threshold on other good images: threshold --good-images FOLDER"
            ) from None

    def save_val_scores(self, paths: list[str], scores: list[float], map_range) -> None:
        write_json(
            self.file(self.VAL_SCORES),
            {
                "paths": list(paths),
                "scores": list(scores),
                "map_range": [float(x) for x in map_range],
                "map_range_q": list(self.MAP_RANGE_Q),  # older runs: 0.01 for the floor
                **threshold_file.model_record(self.file(self.MODEL)),  # the model that scored
            },
        )

    def calibration(self) -> dict:
        """The good images a threshold was last set on (`threshold --good-images`)."""
        return self._read_json(self.CALIBRATION, "; set a threshold with --good-images FOLDER")

    def save_calibration(self, paths: list[str], scores: list[float], record: dict) -> Path:
        """calibration_scores.json, recording the model.pt that scored the images."""
        return write_json(
            self.file(self.CALIBRATION),
            {
                **record,
                "paths": list(paths),
                "scores": [float(s) for s in scores],
                **threshold_file.model_record(self.file(self.MODEL)),
            },
        )

    def drop_stale_calibration(self) -> None:
        """Remove calibration_scores.json unless it records this model.pt as the model that
        scored its images: an earlier model's scores, or unrecorded ones (older versions), would
        be shown as this model's."""
        path = self.file(self.CALIBRATION)
        try:
            kept = load_record(path)
        except (OSError, ValueError):
            kept = None
        sha = threshold_file.model_sha256(self.file(self.MODEL))
        if not (sha and isinstance(kept, dict) and kept.get(threshold_file.MODEL_RECORD) == sha):
            path.unlink(missing_ok=True)

    def map_range(self) -> tuple[float, float]:
        """The colour scale of the run's overlays: that of its held-out normal images."""
        record = self.val_scores()  # a file that does not read, or bad scores: said as such
        try:
            lo, hi = record["map_range"]
            lo, hi = (float(x) if finite(x) else math.nan for x in (lo, hi))  # no text: "12"
        except (KeyError, TypeError, ValueError):
            lo = hi = math.nan
        if not math.isfinite(hi - lo) or lo > hi or max(abs(lo), abs(hi)) > MAP_LIMIT:
            raise RunError(  # NaN and inf fail the first; beyond MAP_LIMIT float32 maps overflow
                f"{self.file(self.VAL_SCORES)}: its map_range is not two finite numbers, low "
                "then high; train the run again to remake it"
            )
        return lo, hi

    def threshold(self):
        """threshold.json; RunError naming it when it does not parse, holds a field of the wrong
        kind or records another model than model.pt (`anomaly.threshold_file`). One that records
        no model (older, or the record deleted) is used without a guarantee (`UNRECORDED`)."""
        from anomaly.metrics import Threshold

        path = self.file(self.THRESHOLD)
        fix = f"python -m anomaly threshold --run {shell_word(self.path)}"
        raw = self._read_json(self.THRESHOLD, f"; set one with `{fix} --rule normal-quantile`")
        try:
            threshold = Threshold.from_json(json.dumps(raw), str(path))
        except threshold_file.NewerRule as err:  # another version's: not to be set over unseen
            raise RunError(f"{path} does not hold a threshold ({err})") from None
        except (KeyError, TypeError, ValueError) as err:
            msg = f"{path} does not hold a threshold ({err}); set one with `{fix} --rule ...`"
            raise RunError(msg) from None
        try:
            threshold_file.check_model(raw, self.file(self.MODEL))
        except ValueError as err:  # copied from another run
            raise RunError(f"{path} {err}. Set one for this model: `{fix} --rule ...`") from None
        if threshold_file.MODEL_RECORD not in raw and self.file(self.MODEL).is_file():
            threshold.params[threshold_file.UNRECORDED] = True  # older, or deleted from a copy
        carried = threshold_file.REPLACED_RECORD in raw  # kept for a resumed model: set before
        threshold_file.check_numbers(
            threshold, self.file, self.VAL_SCORES, self.CALIBRATION, carried=carried
        )
        return threshold

    def has_threshold(self) -> bool:
        return self.file(self.THRESHOLD).is_file()

    def save_threshold(self, threshold) -> Path:
        """Write threshold.json, recording the SHA-256 of the run's model.pt (the model it is
        chosen for); ValueError, and nothing written, for one `threshold()` would refuse."""
        path, d = self.file(self.THRESHOLD), json.loads(threshold.to_json())
        try:
            threshold_file.check_threshold(d)
        except (TypeError, ValueError) as err:
            raise ValueError(f"threshold not saved to {path}: {err}") from None
        return write_json(path, threshold_file.recorded(d, self.file(self.MODEL)))

    def save_fit_seconds(self, seconds: float) -> None:
        """Record how long fitting took in versions.json, beside the versions and the platform
        it took that long on (in the last "resumed" entry after a resume). Not in model.pt: the
        same data, seed and flags then give the same model.pt, and a threshold chosen for one is
        accepted by the other (`threshold_file.check_model`). A versions.json that does not
        read as a record is left alone."""
        record = self.versions_record()
        if record is None:
            return
        resumed = record.get("resumed")
        last = resumed[-1] if isinstance(resumed, list) and resumed else None
        (last if isinstance(last, dict) else record)["fit_seconds"] = round(float(seconds), 3)
        write_json(self.file(self.VERSIONS), record)

    def versions_record(self) -> dict | None:
        """versions.json as a dict, or None when it is missing or does not read as a record
        (what writes to it then leaves it alone)."""
        try:
            record = load_record(self.file(self.VERSIONS))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def save_selection(self, selection: dict) -> Path:
        return write_json(self.file(self.SELECTION), selection)

    def metrics(self) -> dict:
        return self._read_json(
            self.METRICS, f"; score it: python -m anomaly score --run {shell_word(self.path)}"
        )

    def save_metrics(self, metrics: dict) -> Path:
        return write_json(self.file(self.METRICS), metrics)

    # --- tables and arrays ----------------------------------------------------------------
    def history(self) -> list[dict]:
        """history.csv's rows (epoch, losses), [] without one; RunError naming the file when it
        is no regular file (`read_record`: a pipe would wait for ever) or a row is not numbers."""
        path = self.file(self.HISTORY)
        if not path.exists():
            return []
        rows = csv.DictReader(io.StringIO(read_record(path), newline=""))
        try:
            return [{k: float(v) if k != "epoch" else int(v) for k, v in r.items()} for r in rows]
        except (TypeError, ValueError) as err:
            raise RunError(f"{path} holds a row that is not numbers ({err}); train again") from None

    def save_history(self, rows: list[dict]) -> None:
        if not rows:
            return
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        _atomic(self.file(self.HISTORY), lambda f: f.write(buf.getvalue().encode()))

    def save_scores(self, pred) -> Path:
        """scores.csv in the original's spirit (file, score) plus label and defect kind, sorted
        as its table read: normal images first, then defective ones, each by score."""
        rows = sorted(
            zip(pred.paths, pred.labels, pred.defects, pred.scores),
            key=lambda r: (int(r[1]), r[2], float(r[3])),
        )
        buf = io.StringIO(newline="")
        writer = csv.writer(buf)
        writer.writerow(self.SCORES_HEADER)
        for p, label, defect, score in rows:
            stem, path, kind = map(spreadsheet_cell, (Path(p).stem, p, defect))  # no formula
            writer.writerow([stem, path, int(label), kind, repr(float(score))])
        text = buf.getvalue().encode("utf-8", "surrogateescape")  # a name's bytes as they are
        return _atomic(self.file(self.SCORES), lambda f: f.write(text))

    def scores(self) -> list[dict]:
        if not self.file(self.SCORES).is_file():
            self.refuse_not_a_run()
            raise RunError(
                f"{self.path} has not been scored; run "
                f"`python -m anomaly score --run {shell_word(self.path)}` first"
            )
        with open(
            self.file(self.SCORES), newline="", encoding="utf-8", errors="surrogateescape"
        ) as f:
            return list(csv.DictReader(f))

    def predictions_meanwhile(self, pred):
        """predictions.npz, written by a thread while the `with` block runs (`atomic_meanwhile`)"""
        return atomic_meanwhile(self.file(self.PREDICTIONS), pred.save)

    def predictions(self):
        from anomaly.detectors.base import Predictions

        path, again = (
            self.file(self.PREDICTIONS),
            f"python -m anomaly score --run {shell_word(self.path)}",
        )
        if not path.is_file():
            self.refuse_not_a_run()
            self.refuse_not_a_file(self.PREDICTIONS)
            raise RunError(f"{self.path} has not been scored; run `{again}` first")
        try:
            pred = Predictions.load(path)
        except Exception as err:  # noqa: BLE001  (truncated, empty, or not ours)
            msg = f"{path} is unreadable ({type(err).__name__}: {str(err)[:200]}); score "
            raise RunError(f"{msg}the run again: {again}") from None
        try:
            threshold_file.check_model(pred.meta, self.file(self.MODEL), "were made by")
        except ValueError as err:  # a model.pt put in since `score`
            raise RunError(f"{path} {err}; score the run again: {again}") from None
        return pred

    # --- checkpoints ----------------------------------------------------------------------
    # --- lock -----------------------------------------------------------------------------
    def lock(self, command: str = "train"):
        """Hold `.lock` (with this PID) while writing; refuse if a live process holds it
        (`run_lock.folder_lock`). A lock left by a process that no longer runs is taken over."""
        return folder_lock(self.path, self.LOCK, command)

    def lock_unless_outside(self, command: str, out=None):
        """`lock(command)`; but where all the command writes goes to `out`, a folder outside the
        run, and the run cannot be written (someone else's, a read-only disk), only a check that
        no live process holds it: the command reads the run, and taking its lock would fail."""
        outside = out is not None and not Path(out).resolve().is_relative_to(self.path.resolve())
        if outside and not os.access(self.path, os.W_OK):
            self.check_not_in_use(command)
            return contextlib.nullcontext(self.path)
        return self.lock(command)

    def check_not_in_use(self, command: str) -> None:
        """RunError when a live process holds the run's lock (a run still training)."""
        check_not_in_use(self.path, self.LOCK, command)


# --- the functions earlier code and notebooks call ------------------------------------------
def load_config(run_dir: str | Path) -> Config:
    return RunDir(run_dir).config()


def load_checkpoint(run_dir: str | Path, detector) -> dict:
    return RunDir(run_dir).load_checkpoint(detector)


def read_scores(run_dir: str | Path) -> list[dict]:
    return RunDir(run_dir).scores()


def read_history(run_dir: str | Path) -> list[dict]:
    return RunDir(run_dir).history()
