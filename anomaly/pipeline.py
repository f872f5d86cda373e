"""The jobs a user runs, each a few calls: train a run, score it, set its threshold (predicting
on new files is `anomaly.predict`).

The CLI and the notebooks both call these, so a notebook cell and a shell command do the same.
This layer joins the others: it builds detectors through `anomaly.build` (which resolves
`--from RUN` and `encoder:RUN` into the modules a detector is given; `build_detector` and
`load_run` are re-exported here), and it alone decides what goes into a run folder (`RunDir`).
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from anomaly import threshold_file
from anomaly import train_guards as guards
from anomaly.build import build_detector, check_size, load_run, split_names, trained_images
from anomaly.config import RESUMABLE_FIELDS, Config
from anomaly.data import AnomalyDataset
from anomaly.data.files import check_not_in_data, on_disk
from anomaly.data.image_kind import draft_size, read_kinds
from anomaly.data.image_kind import summarize as summarize_images
from anomaly.data.image_unlike import warn_unlike
from anomaly.data.masks import forget_said
from anomaly.decision import HELD_OUT_FIX, far_above_words, warn_outside
from anomaly.detectors import Detector, Predictions, get_detector
from anomaly.detectors.inputs import frames_named
from anomaly.pixel_eval import EVAL_SIZE, MASK_READING_KEY
from anomaly.run_lock import check_not_in_use, folder_lock
from anomaly.runs import RunDir, RunError, config_differences
from anomaly.safe_files import available_memory, check_path_above, output_folder, sha256_file
from anomaly.terminal import printable, shell_word
from anomaly.threshold_text import choose_again
from anomaly.train import seed_everything, select_device
from anomaly.train_guards import moved as _moved
from anomaly.train_images import file_stamps, warn_changed_training


class AlreadyTrained(RunError):
    """`train --resume` on a finished run with nothing new to do (not an error: nothing done)."""


# --- train ---------------------------------------------------------------------------------------
def _datasets(config: Config, split: dict | None = None):
    """train/good as (train, validation) subsets, split by the run's seed (or its saved split).
    In the plain layout the training images are the split's (kmeans: its --from run's), not
    four fifths of good/ anew: a good image added since would move the fifths."""
    pool = split if split is not None else guards.source_pool(config)
    data = AnomalyDataset(
        config.data,
        "train",
        size=config.size,
        channels=config.channels,
        decode=config.decode,
        trained=None if pool is None else set(split_names(pool, config.data)),
    )
    if split is not None:
        index = {p: i for i, p in enumerate(data.paths)}
        missing = [p for p in split["train"] + split["val"] if on_disk(p) not in index]
        if missing:
            raise RunError(
                f"the run's split names {len(missing)} images that are not in "
                f"{config.data} (first: {printable(missing[0])}); the data changed since the run "
                "was made"
            )
        train_idx = [index[on_disk(p)] for p in split["train"]]  # (a Mac's copy: pièce as
        val_idx = [index[on_disk(p)] for p in split["val"]]  # e + a combining accent)
        if "sha256" in split:  # split.json records each image's digest (since 2026-12-02)
            paths = split["train"] + split["val"]
            changed = [p for p, d in zip(paths, split["sha256"]) if sha256_file(on_disk(p)) != d]
            if changed:
                raise RunError(
                    f"{len(changed)} of the run's {len(paths)} images changed since it was "
                    f"trained (first: {printable(changed[0])}), so training on them would learn from other "
                    "images than the run did; restore them, or train a new run"
                )
    else:  # kmeans holds out its --from run's held-out images
        train_idx, val_idx = guards.new_split(config, data.paths)
    return data.subset(train_idx), data.subset(val_idx) if val_idx else None


def train_run(
    config: Config | None,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    split: dict | None = None,
) -> Detector:
    """Train `config.method` on train/good of `config.data` into the run folder `out`.

    Writes config.json, split.json, versions.json, model.pt, history.csv and last.pt (methods
    trained by epochs), val_scores.json and threshold.json (a quantile of the held-out normal
    scores: held-out images far above the rest are named), selection.json (method auto). The
    folder is locked while training. `resume=True` continues an interrupted run with its own
    config and split; `config` may then be None, or the run's config with `RESUMABLE_FIELDS`
    changed (more epochs); any other change is refused by name, and a finished run with nothing
    to add raises `AlreadyTrained`. A threshold the user set is kept. `split`: another run's
    split.json, whose images (each checked against its SHA-256) train and are held out instead
    of a new split (`anomaly.rerun.train_like`)."""
    run = RunDir(out)
    if resume:
        return _resume(run, config, progress)
    config.validate()
    for name in ("data", "source_run"):  # saved absolute, as the CLI saves them: the run works
        if (value := getattr(config, name)).strip():  # from any folder ("" is refused below)
            config = config.replace(**{name: str(Path(value).resolve())})
    if config.backbone.startswith("encoder:"):  # saved absolute: the run works from any folder
        encoder = os.path.abspath(config.backbone.split(":", 1)[1])
        config = config.replace(backbone=f"encoder:{encoder}")
    guards.refuse_existing(run)
    check_not_in_data(run.path, "--out", config.data)
    check_path_above(run.path)
    seed_everything(config.seed)
    detector = build_detector(config)
    check_size(detector, config, again=split is not None)  # --like: a run as it was trained
    device = select_device(config.device)
    if not config.data.strip():  # the working folder would be read as the data set
        raise ValueError(
            "config.data is empty: name the data set's folder, for example "
            f"Config.for_method({config.method!r}, data='data/cookies')"
        )
    train, val = _datasets(config, split)  # data errors come before anything is written
    split = {"train": list(train.paths), "val": list(val.paths) if val is not None else []}
    split |= file_stamps(split["train"] + split["val"])  # before hashing: an edit meanwhile too
    split["sha256"] = [sha256_file(p) for p in split["train"] + split["val"]]  # for --resume
    read = read_kinds(split["train"] + split["val"])  # each file's kind once, for both:
    split["images"] = summarize_images(split["train"] + split["val"], read)  # predict compares
    guards.check_split(run, config, split, read)  # auto: enough images; held-out copies
    if val is not None:
        val.check()  # decoded (and cached) now: a damaged one would fail only after training
    with run.lock("train"):
        guards.refuse_existing(run)  # again: another process may have finished it meanwhile
        run.create(config, split)
        _clear_outputs(run)  # of a model whose model.pt is gone
        detector.to(device)
        _fit(run, detector, train, val, progress, resume=False)
        _default_threshold(run, detector, train, val, False, progress)
    return detector


def _resume(run: RunDir, wanted: Config | None, progress: bool) -> Detector:
    """Continue `run`; everything that can fail is done before anything in it is written."""
    run.check_not_in_use("train")  # still training: "in use", not what its epochs say
    config = run.config()
    wanted = wanted or config
    changed = config_differences(asdict(config), asdict(wanted), skip=())
    refused = [f for f in changed if f not in RESUMABLE_FIELDS + ("data",)]
    if refused:
        raise RunError(
            f"--resume continues {run} with its own settings; these flags would change "
            f"what it learns: {', '.join('--' + f.replace('_', '-') for f in refused)}."
            " Train a new run (another --out) for new settings"
        )
    split, moved_split = run.split(), None
    if wanted.data and os.path.abspath(wanted.data) != os.path.abspath(config.data):
        split = moved_split = _moved(split, config.data, wanted.data)  # the same images, moved
        config = config.replace(data=wanted.data)
    wanted = config.replace(**{f: getattr(wanted, f) for f in RESUMABLE_FIELDS}).validate()
    if run.stopped_before_threshold():
        return _finish(run, config, split, progress)
    if not run.has_last():
        kind = get_detector(config.method)
        if run.has_model() and not hasattr(kind, "step"):
            raise RunError(
                f"{run} is a {config.method} run: it does not train by epochs, so "
                "there is nothing to resume (its training is finished)"
            )
        run.load_last()  # raises: the run never finished an epoch
    device = select_device(wanted.device)
    seed_everything(wanted.seed)
    detector = build_detector(wanted, run=run)
    if not run.has_model():
        raise RunError(
            f"{run} has no {run.MODEL} (the best model so far, which resuming ends with), so it "
            f"cannot continue; restore it from a copy of the run, or train afresh into a new --out"
        )
    run.load_checkpoint(detector)  # the best model so far: resuming ends by loading it
    last = guards.check_last(run, detector)
    done = int(last["epoch"])
    if wanted.epochs < done:
        raise RunError(
            f"{run} has already trained {done} epochs; --resume continues it up to --epochs, "
            f"so give more than {done} (got {wanted.epochs})"
        )
    stopped = bool(config.patience) and int(last["stale"]) >= config.patience
    finished = run.checkpoint().get("complete", False)
    if finished and (done >= wanted.epochs or (stopped and wanted.patience == config.patience)):
        why = (
            f"early stopping ended it after epoch {done}"
            if stopped and done < wanted.epochs
            else f"it trained all {done} epochs"
        )
        raise AlreadyTrained(
            f"{run} is already trained ({why}); nothing to do. To train longer, "
            f"resume with a larger --epochs (and --patience 0 to turn off early "
            "stopping)"
        )
    with run.lock("train"):
        train, val = _datasets(wanted, split)
        detector.to(device)
        # config.json (and a moved split.json) are written with the first epoch
        writes = guards.ResumeWrites(run, wanted, from_epoch=done, split=moved_split)
        _fit(run, detector, train, val, progress, resume=True, checkpoints=writes)
        _default_threshold(run, detector, train, val, True, progress)
    return detector


def _finish(run: RunDir, config: Config, split: dict, progress: bool) -> Detector:
    """`--resume` of a run stopped after training, before its held-out images were scored:
    score them and set the default threshold (a threshold the user set is kept); no training."""
    seed_everything(config.seed)
    detector = build_detector(config, run=run)
    run.load_checkpoint(detector)
    with run.lock("train"):
        train, val = _datasets(config, split)
        detector.to(select_device(config.device))
        _save_selection(run, detector)  # auto: stopped before selection.json was written
        _default_threshold(run, detector, train, val, True, progress)
    print(f"{run}: finished: its held-out images are scored and its threshold is set")
    return detector


def _fit(
    run: RunDir, detector: Detector, train, val, progress: bool, resume: bool, checkpoints=None
) -> None:
    checkpoints = checkpoints or run  # resume: `ResumeWrites`, which writes config.json too
    t0 = time.perf_counter()
    try:
        detector.fit(train, val, progress=progress, resume=resume, checkpoints=checkpoints)
    except (MemoryError, RuntimeError) as err:  # torch's "can't allocate memory": a RuntimeError
        if (said := guards.out_of_memory(err, detector.config, len(train), run)) is None:
            raise  # another error, as it was
        raise said from None
    seconds = time.perf_counter() - t0
    checkpoints.save_checkpoint(detector, complete=True)  # no timing: the same training, the
    run.save_fit_seconds(seconds)  # same model.pt (a threshold chosen for one fits the other)
    _clear_outputs(run)
    _note_export(run)
    _save_selection(run, detector)


def _save_selection(run: RunDir, detector: Detector) -> None:
    """auto's choice and every candidate's score (model.pt holds them too) as selection.json."""
    selection = getattr(detector, "selection", None)
    if isinstance(selection, dict):
        run.save_selection(selection)


def _clear_outputs(run: RunDir) -> None:
    """`RunDir.clear_outputs`, saying what it removed."""
    removed = run.clear_outputs()
    if removed:
        print(
            f"{run}: removed the outputs of the earlier model ({', '.join(removed)}); "
            f"score it again: python -m anomaly score --run {shell_word(run)}"
        )


def _note_export(run: RunDir) -> None:
    """A model.onnx that `export` wrote from another model than the new model.pt is kept (it
    may be deployed somewhere); say so, and what to do."""
    export = run.file("model.onnx")
    if not export.is_file() or export.is_symlink():
        return
    from anomaly.export import exported_model, use_the_run

    made_by = exported_model(export)
    if made_by and made_by != threshold_file.model_sha256(run.file(run.MODEL)):
        print(f"{run}: model.onnx holds another model, kept as it is; {use_the_run(run)}")


def _default_threshold(run: RunDir, detector, train, val, keep_own: bool, progress: bool) -> None:
    held_out = val if val is not None else train
    if val is None:
        guards.warn_no_split(run, detector.config)
    from anomaly.viz import dataset_range

    with frames_named():  # empty frames are named below, and left out of the threshold
        pred = detector.predict(held_out, progress=progress)
    keep = guards.without_empty_frames(run, pred)  # empty frames: left out of everything below
    paths, scores = [p for p, k in zip(pred.paths, keep) if k], pred.scores[keep]
    if not (np.isfinite(pred.scores).all() and np.isfinite(pred.maps).all()):  # no threshold
        msg = "gives NaN or infinite scores or maps on its held-out images: its training diverged"
        raise RunError(f"{run}: the model {msg}; train a new --out (another --seed, a lower --lr)")
    run.save_val_scores(paths, scores.tolist(), dataset_range(pred.maps[keep], run.MAP_RANGE_Q))
    if words := far_above_words([Path(p).name for p in paths], scores, HELD_OUT_FIX):
        warnings.warn(f"{run}'s held-out good images: {words}", stacklevel=3)  # slipped in?
    if keep_own and run.has_threshold():  # the user's threshold, kept
        try:
            old = run.threshold()
        except RunError as err:  # damaged, or set for another model: kept aside, not used
            aside = run.file(run.THRESHOLD).replace(run.file(run.REFUSED))
            print(f"{err}\nIt is kept as {aside}; the run gets the default threshold.")
            old = None
        if old is not None and old.params.get("set_by") != "train":
            print(
                f"{run}: kept your threshold {old.value:.6g} ({old.rule}), which was chosen on "
                f"the earlier model; choose it again with `{choose_again(old, run)}`"
            )
            # its guarantee went with the model.pt replaced (`threshold_file.carried`; or here)
            if threshold_file.drop_guarantee(old.params):
                run.save_threshold(old)
            return
    from anomaly.calibration import attach, distinct_held_out  # as `threshold --rule` does
    from anomaly.metrics import threshold_normal_quantile  # sklearn: not for predict

    scores, record = distinct_held_out(run, scores) if val is not None else (scores, None)
    threshold = threshold_normal_quantile(scores, q=detector.config.threshold_quantile)
    threshold = attach(threshold, record) if record is not None else threshold
    threshold.params["set_by"] = "train"
    if val is None:  # none held out: the scores of images the model learned (`few_held_out`)
        threshold.params["on_training_images"] = True
    guards.warn_degenerate(run, scores, threshold.value, held_out=val is not None)
    if removed := run.replace_threshold(threshold)[1]:  # score's overlays of an earlier one
        print(removed)


# --- score, threshold, predict ---------------------------------------------------------------------
def score_run(
    run: str | Path,
    data: str | Path | None = None,
    overlays: bool = True,
    progress: bool = False,
    out: str | Path | None = None,
    workers: int | None = None,
    pixel_size: int | str = EVAL_SIZE,
) -> tuple[Predictions, dict]:
    """Score test/ of the run's data (or `data`): scores.csv, metrics.json, predictions.npz and
    overlays/, in the run folder for its own data. Other data's go to `out`, by default
    RUN/scored/<data folder name>/ (`score_folder`): the run's own, which `threshold`, the
    explorer and the notebooks read, are never replaced by another folder's. `pred.meta["out"]`
    says where they went. `workers` processes decode the images for this call only (default the
    run's `workers`; its config.json is not changed). The pixel metrics compare maps and masks
    at `pixel_size` x `pixel_size`, or at the masks' own size for "full" (`anomaly.pixel_eval`)."""
    from anomaly.metrics import evaluate
    from anomaly.overlays import run_scale, save_overlays
    from anomaly.pixel_eval import (
        FULL,
        at_eval_size,
        check_memory,
        full_size,
        parse_pixel_size,
        ran_out_of_memory,
    )

    rd = RunDir(run).require()
    rd.refuse_stopped("score")  # it would score with no threshold, into an unfinished run
    forget_said()  # warnings of a file or mask folder: once this call, not once the process
    # --out elsewhere: a run of someone else's read; the folder written locked too (`held`)
    with rd.lock_unless_outside("score", out), contextlib.ExitStack() as held:
        detector = load_run(rd)
        # what can fail comes before the first write (a damaged threshold.json: scores kept)
        threshold = rd.threshold() if rd.has_threshold() else None
        config = detector.config
        data = os.path.abspath(data or config.data)
        dest = score_folder(rd, data, out)
        check_path_above(dest.path)  # before the scoring, not after
        test = AnomalyDataset(
            data,
            "test",
            size=config.size,
            channels=config.channels,
            trained=detector.trained_in(data),
            decode=config.decode,
        )
        if test.layout != "mvtec" and rd.split() is None:  # good/ would be split anew
            raise RunError(
                f"{rd.file(rd.SPLIT)} is missing: in the plain layout (good/ and defect folders, "
                "no train/ or test/) it is the record of which good images the model learned "
                "and which it is tested on; without it images it learned would be scored as "
                "test images. Restore it from a copy, or train the run again"
            )
        warn_unlike(test.paths, trained_images(rd), config.channels, config.size)
        guards.warn_test_copies(rd, list(test.paths))
        if os.path.realpath(data) == os.path.realpath(config.data):  # others matched by bytes
            warn_changed_training(rd, data)
        pixel_size = parse_pixel_size(str(pixel_size))  # "512" from the API is 512
        mask_of = {s.path: s.mask_path for s in test.samples}
        sizes = (list(mask_of.values()), list(mask_of))  # several: refused before any work
        hw = full_size(*sizes) if pixel_size == FULL else (pixel_size, pixel_size)
        if hw is not None and any(mask_of.values()):  # and more pixels than memory holds
            check_memory(len(test), hw, available_memory(), maps=config.size)
        where = dest.overlays  # a link, a file or a pipe there: refused before any work
        if overlays and (where.is_symlink() or (where.exists() and not where.is_dir())):
            output_folder(where)  # nothing written at all
        t0 = time.perf_counter()
        pred = detector.predict(decoding_loader(test, config, workers=workers), progress=progress)
        seconds = time.perf_counter() - t0
        if not (np.isfinite(pred.scores).all() and np.isfinite(pred.maps).all()):
            raise RunError(
                f"{rd}: its model gives NaN or infinite scores or maps, so nothing was written; "
                "its model.pt is damaged or its training diverged: train the run again"
            )
        warn_outside(rd, threshold, pred.scores, below_only=True)  # a changed camera: low scores
        at = os.path.abspath(dest.path)  # with run: found again where both moved together
        pred.meta.update(run=os.path.abspath(run), data=data, out=str(dest), at=at)
        pred.meta.update(threshold_file.model_record(rd.file(rd.MODEL)))  # the model that scored
        earlier = None if dest is rd else _scored_data(dest.path)  # --out: other data's?
        if dest is not rd:  # made now, never through a link, and one score at a time
            held.enter_context(folder_lock(output_folder(dest.path), RunDir.LOCK, "score"))
        with dest.predictions_meanwhile(pred):  # in place once the metrics are made
            paths = [mask_of.get(p) for p in pred.paths]  # pixel metrics at one size
            try:
                pixels = at_eval_size(pred, paths, pixel_size)
                metrics = evaluate(pixels)
            except (MemoryError, RuntimeError) as err:  # a limit MemAvailable does not show
                if (said := ran_out_of_memory(err, pixel_size)) is None:
                    raise  # another error, as it was
                raise said from None
            metrics |= {k: pixels.meta.get(k) for k in ("pixel_metrics_size", MASK_READING_KEY)}
            del pixels  # at full size, the largest arrays of the command
            scale = run_scale(rd, pred.maps, pred.labels) if overlays else None  # pixel threshold
        metrics["predict_images_per_s"] = len(pred) / seconds
        metrics["threshold"] = threshold.value if threshold is not None else None
        dest.save_scores(pred)
        dest.save_metrics(metrics)
        if overlays:
            t = metrics["threshold"] if metrics["threshold"] is not None else float("inf")
            draft = draft_size(config.decode, config.size)  # the scale predict draws JPEGs at
            save_overlays(pred, dest.overlays, scale, t, draft=draft, progress=progress)
    if earlier not in (None, data):  # said, not saved: the CLI prints it
        pred.meta["replaced"] = earlier
    return pred, metrics


def score_folder(rd: RunDir, data: str, out: str | Path | None = None) -> RunDir:
    """Where `score` writes the scores of `data`: the run for its own data (or `out` naming the
    run: its data moved); else `out`, by default RUN/scored/<the data folder's name>/ (-2, -3,
    ... where that holds another's scores), tried by writing; one holding files of the user's
    (anything `score` does not write) is refused."""
    own = os.path.abspath(data) == os.path.abspath(rd.config().data)
    if (out is None and own) or (out is not None and Path(out).resolve() == rd.path.resolve()):
        return rd
    if out is None:
        scored = rd.file(rd.SCORED)
        if scored.is_symlink():
            output_folder(scored)  # refuses it: outputs are never written through a link
        name = Path(data).name or "data"
        dest, i = scored / name, 2
        while _scored_data(dest) not in (None, data):
            dest, i = scored / f"{name}-{i}", i + 1
    else:
        dest = Path(out)
    if dest.exists() and not dest.is_dir():
        raise RunError(
            f"--out {shell_word(dest)} is a file; give a folder for the scores of {data}"
        )
    check_not_in_data(dest, "--out", data)
    if dest.is_dir():  # another score writing there now: in use, not "files of yours"
        check_not_in_use(dest, RunDir.LOCK, "score")
    ours = {*RunDir.SCORE_OUTPUTS, RunDir.OVERLAYS}  # (and a dead score's lock: taken over)
    found = sorted(p.name for p in dest.iterdir() if p.name != RunDir.LOCK) if dest.is_dir() else []
    theirs = [name for name in found if name not in ours]
    if not theirs and found and _scored_data(dest) is None:
        theirs = found  # the names, but not written by score
    if theirs:
        raise RunError(
            f"{dest} holds files `score` does not write ({', '.join(theirs[:3])}), so the scores "
            f"of {data} were not written there; give --out a new or empty folder"
        )
    from anomaly.safe_files import writable_folder  # (the imports above: at the line limit)

    return RunDir(writable_folder(dest, "give --out a folder you can write in", make=False))


def _scored_data(folder: Path) -> str | None:
    """The data folder whose scores `folder` holds (its predictions.npz says), or None."""
    return RunDir(folder).scored_meta().get("data")


def decoding_loader(data, config: Config, collate_fn=None, workers: int | None = None):
    """`data` in batches of `config.batch_size`, decoded by `workers` processes (default the
    run's `config.workers`) while the model scores (by a thread of this process when 0:
    `anomaly.prefetch.read_ahead_loader`); no more than batches after the first (each: ~2 s)."""
    from anomaly.prefetch import read_ahead_loader

    workers = config.workers if workers is None else check_workers(workers)
    cores = os.cpu_count() or 1
    if workers > cores:  # a run from a bigger machine (or an edited config.json)
        warnings.warn(
            f"{workers} decoding processes asked for, on a machine of {cores} cores: {cores} are "
            "started (more only compete for the same cores; --workers N sets it)",
            stacklevel=2,
        )
        workers = cores
    workers = min(workers, max(0, -(-len(data) // config.batch_size) - 1))  # each costs ~2 s
    return read_ahead_loader()(
        data, batch_size=config.batch_size, num_workers=workers, collate_fn=collate_fn
    )


def check_workers(workers: int) -> int:
    """A number of decoding processes for one command, in the range of Config's `workers`."""
    return replace(Config(), workers=workers).validate().workers
