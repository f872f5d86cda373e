"""What `train` checks before it writes into a run folder, and how `train --resume` writes.

`train` never writes into a folder of the user's or over a trained run (`refuse_existing`). A
resume that fails must leave the run as it was: `check_last` reads everything in last.pt (as
`anomaly.train.restore` will) before anything is written, and `ResumeWrites`, the checkpoints
object the resumed training is given, writes config.json (more epochs, another patience, device
or --workers, the data's new place) and the resuming versions only with the first new epoch's
files.

Which good images a new run holds out for its default threshold is decided here too (`new_split`:
kmeans, and patchknn or flow on an `encoder:RUN` backbone, hold out their source run's held-out
images, never one that run's encoder learned), auto is refused too few images (`check_split`), and
what that threshold cannot say is warned about (`warn_held_out`: held-out images that are copies of
training images; `warn_degenerate`: held-out scores with no spread). `anomaly.pipeline.train_run`
is the entry point; this module keeps pipeline.py readable.
"""

from __future__ import annotations

import os
import warnings
from types import SimpleNamespace

import numpy as np

from anomaly.config import Config, builds_on
from anomaly.data.files import named
from anomaly.data.image_unlike import warn_blank, warn_mixed
from anomaly.detectors.patchknn import NoRoom
from anomaly.runs import RunDir, RunError, versions
from anomaly.safe_files import is_out_of_memory, sha256_file, write_json
from anomaly.terminal import printable, shell_word
from anomaly.train import DamagedState, check_resumable, split_indices


def refuse_existing(run: RunDir) -> None:
    """RunError when `run` is a file, a folder of the user's, or holds a (maybe interrupted)
    trained run: `train` (without --resume) writes only into a new folder or an unfinished one."""
    if run.path.exists() and not run.path.is_dir():
        raise RunError(f"--out {shell_word(run)} is a file; choose a folder name for the run")
    if run.path.is_dir() and not _is_ours(run):  # a folder of the user's: never write into it
        theirs = sorted(p.name for p in run.path.iterdir() if p.name not in RunDir.TOOL_FILES)
        if theirs:
            raise RunError(
                f"--out {shell_word(run)} is a folder that holds files that are not a run's "
                f"({', '.join(theirs[:3])}{', ...' if len(theirs) > 3 else ''}), so nothing is "
                "written there; choose a new folder name for the run"
            )
    if run.has_model():
        run.check_not_in_use("train")  # still training: not finished, nor interrupted
        if run.stopped_before_threshold():
            raise RunError(
                f"{run} holds a run stopped after training, before its held-out images were "
                f"scored and its threshold set; finish it (no training again) with `python -m "
                f"anomaly train --out {shell_word(run)} --resume`, or delete the folder to start again"
            )
        if run.checkpoint().get("complete", True):
            raise RunError(
                f"{run} already holds a trained run; choose another --out, or delete "
                "the folder to train it again"
            )
        if not run.has_last():  # stopped before its first epoch was saved: trained again
            return _refuse_theirs(run)
        raise RunError(
            f"{run} holds an interrupted run; continue it with `python -m anomaly "
            f"train --out {shell_word(run)} --resume` (in Python `anomaly.train_run(None, "
            f"{str(run.path)!r}, resume=True)`), or delete the folder to start again"
        )
    _refuse_theirs(run)


def _refuse_theirs(run: RunDir) -> None:
    """RunError when a folder whose config.json reads holds nothing else `train` writes, but
    files no run writes: a folder of the user's with a config.json copied in, not a run. (A run
    `train` made, with split.json or the like, may hold the user's notes, the explorer's report
    or `predict --onnx`'s overlays: those stay, and only score's own outputs are removed.)"""
    made = (run.SPLIT, run.VERSIONS, run.MODEL, run.LAST, run.HISTORY, run.VAL_SCORES)
    if not (run.path.is_dir() and _is_ours(run)) or any(run.file(n).exists() for n in made):
        return
    names = set(RunDir.NAMES)  # and dot files: the lock, temporary files of atomic writes
    theirs = sorted(p.name for p in run.path.iterdir() if p.name not in names and p.name[0] != ".")
    if theirs:
        raise RunError(
            f"--out {shell_word(run)} holds a config.json, but also files no run writes "
            f"({', '.join(theirs[:3])}{', ...' if len(theirs) > 3 else ''}), so it is taken "
            "for a folder of yours and nothing is written there; choose a new folder name for "
            "the run"
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

    def __init__(
        self, run: RunDir, config: Config, from_epoch: int, split: dict | None = None
    ) -> None:
        self.run, self.config, self.from_epoch, self.started = run, config, from_epoch, False
        self.split = split  # the split with its images moved to --data: saved with config.json

    def _start(self, new_model: bool) -> None:
        if self.started:
            return
        self.started = True
        self.run.save_config(self.config)
        if self.split is not None:  # config.json names the new data folder, and so must it
            write_json(self.run.file(self.run.SPLIT), self.split)
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
        record = self.run.versions_record()
        if record is None:
            return
        earlier = record.get("resumed") if isinstance(record.get("resumed"), list) else []
        record["resumed"] = [
            *earlier,
            {"from_epoch": self.from_epoch, **versions(self.config.data)},
        ]
        write_json(self.run.file(self.run.VERSIONS), record)

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


# --- which images are held out, and what the default threshold can say -------------------------
def new_split(config: Config, paths: list[str]) -> tuple[list[int], list[int]]:
    """The (train, held-out) indices of train/good's `paths` for a new run: split by the run's
    seed, except for a run built on another's encoder (kmeans' `--from`, an `encoder:` backbone),
    which holds out that run's held-out images (`source_held_out`) whatever its seed, so that no
    image its encoder learned is held out."""
    if len(paths) == 1:
        plain = not os.path.isdir(os.path.join(config.data, "train"))
        where = "of good/, the test's share left one image" if plain else "train/good holds one"
        warnings.warn(
            f"{config.data}: {where} to train on, so nothing is held out; the default "
            "threshold will come from that training image",
            stacklevel=4,
        )
    held = source_held_out(config, paths)
    if held is None:
        return split_indices(len(paths), config.val_fraction, config.seed)
    return [i for i in range(len(paths)) if i not in held], sorted(held)


def _source_of(config: Config) -> tuple[str, str]:
    """The run whose learned model a new run builds on, and the flag that names it: kmeans'
    `--from RUN`, or patchknn's and flow's `--backbone encoder:RUN` (an encoder trained on
    that run's images is part of this model); ("", "") for a run of its own."""
    source = builds_on(config.method, config.backbone)  # which methods: one place
    if source == "--from" and config.source_run:
        return config.source_run, f"--from {shell_word(config.source_run)}"
    if source == "encoder":
        return config.backbone.split(":", 1)[1], f"--backbone {shell_word(config.backbone)}"
    return "", ""


def _source_split(config: Config) -> tuple[RunDir, dict] | None:
    """The run a new one builds on (`_source_of`: kmeans' `--from`, an `encoder:` backbone) and
    that run's split.json (train/val lists of paths, and their SHA-256s when recorded), with the
    paths moved to `config.data` when the source's data is elsewhere; None for a run of its own,
    or a split.json that is missing or does not read as one (the run is someone else's: nothing
    in it is trusted)."""
    path = _source_of(config)[0]
    if not path:
        return None
    source = RunDir(path)
    try:
        split, data = source.split(), source.config().data
    except (RunError, ValueError, TypeError, AttributeError):
        return None
    lists = [split.get(k) if isinstance(split, dict) else None for k in ("train", "val")]
    if not all(isinstance(x, list) and all(isinstance(p, str) for p in x) for x in lists):
        return None
    if isinstance(data, str) and os.path.abspath(data) != os.path.abspath(config.data):
        split = moved(split, data, config.data)
    return source, split


def holds_out_source(config: Config) -> bool:
    """Whether a new run holds out its source run's held-out images (`source_held_out`: kmeans'
    `--from`, an `encoder:` backbone) rather than `--val-fraction`'s share: that run's split.json
    reads, and names images of `config.data` with the bytes it recorded."""
    found = _source_split(config)
    data = os.path.join(os.path.abspath(config.data), "")
    return found is not None and any(_still_here(found[1], lambda p: p.startswith(data)))


def source_pool(config: Config) -> dict | None:
    """kmeans (or an `encoder:` backbone) in the plain layout: the images of its source run's split
    (moved to `config.data`) found in config.data's good/ with the same bytes (split.json's
    SHA-256s, where recorded), else None (other data: split by the holdout rule). Those are the
    images kmeans may learn: its source's test images are its test images too, however many good
    images were added since. Nothing outside good/ is read."""
    data = os.path.abspath(config.data)
    plain = os.path.isdir(os.path.join(data, "good")) and not os.path.isdir(
        os.path.join(data, "train")
    )
    found = _source_split(config) if plain else None
    if found is None:
        return None
    split = found[1]
    good = os.path.join(data, "good")
    keep = _still_here(split, lambda path: os.path.dirname(path) == good)
    n = len(split["train"])
    paths = split["train"] + split["val"]
    pool = {
        k: [p for p, ok in zip(ps, ks) if ok]
        for k, ps, ks in (("train", paths[:n], keep[:n]), ("val", paths[n:], keep[n:]))
    }
    return pool if any(keep) else None


def _still_here(split: dict, allowed) -> list[bool]:
    """For each image of a source run's `split` (its train, then its held-out list), whether it
    is a file here with the bytes the source recorded (split.json's SHA-256s, where recorded),
    asked only of the absolute paths `allowed(path)` accepts: nothing else is read (a split.json
    from someone else may name any path)."""
    paths = [os.path.abspath(p) for p in split["train"] + split["val"]]
    digests = split.get("sha256") or []
    digests = digests if len(digests) == len(paths) else [None] * len(paths)
    return [
        allowed(p) and os.path.isfile(p) and (not isinstance(d, str) or sha256_file(p) == d)
        for p, d in zip(paths, digests)
    ]


def source_held_out(config: Config, paths: list[str]) -> set[int] | None:
    """kmeans (or an `encoder:` backbone): the indices in `paths` of its source run's held-out
    images. An image that run's encoder learned must not be held out (the default threshold, and
    any conformal one, would rest on an image the model knows), so the new run trains on everything
    else (the source's training images, and images added since). None (split by seed, with a
    warning) when the source run recorded no split, or none of its images is in `config.data`
    (other data: `warn_held_out` then names held-out images that are copies of ones it learned)."""
    found = _source_split(config)
    if found is None:
        if flag := _source_of(config)[1]:
            warnings.warn(
                f"{flag} has no split.json that reads, so {config.method} cannot "
                "hold out only images its encoder did not learn: the default threshold may rest "
                "on training images and be too low; set one with `threshold --good-images`",
                stacklevel=5,
            )
        return None
    _, split = found
    index = {os.path.abspath(p): i for i, p in enumerate(paths)}
    same = _still_here(split, index.__contains__)
    if not any(same):
        return None  # other data than the source's, whatever its file names
    n = len(split["train"])
    return {index[os.path.abspath(p)] for p, ok in zip(split["val"], same[n:]) if ok}


def check_split(run: RunDir, config: Config, split: dict, read: list | None = None) -> None:
    """What a new run's split must pass before its folder is written: enough training images
    for auto (`anomaly.detectors.auto.check_enough`, a ValueError), a warning naming held-out
    images that are copies of training images (`warn_held_out`), and warnings naming images
    unlike the others (`anomaly.data.image_unlike.warn_mixed`: greyscale among colour, another
    bit depth, a few far smaller than --size), as `score` and `predict` name images unlike them.
    `read`: the images' kinds (`image_kind.read_kinds`), when the caller read them already."""
    from anomaly.detectors.auto import check_enough, warn_small_size

    n_train = len(split["train"])
    check_enough(n_train, config, n_good=n_train + len(split["val"]))
    warn_small_size(config)
    warn_held_out(run, config, split)
    warn_mixed(split["train"] + split["val"], config.channels, config.size, read)
    warn_blank(split["train"], read)  # (held-out ones: left out of the threshold, and said)


def learned_digests(split: dict) -> dict[str, str]:
    """{SHA-256: the first training image with it} from a split.json's record (empty for a
    split from before the digests, or a damaged one)."""
    train, digests = split.get("train"), split.get("sha256")
    if not isinstance(train, list) or not isinstance(digests, list):
        return {}
    learned: dict[str, str] = {}
    for d, p in zip(digests[: len(train)], train):
        if isinstance(d, str):
            learned.setdefault(d, str(p))
    return learned


def warn_test_copies(run: RunDir, paths: list[str]) -> None:
    """Warn, naming them, about images to score that are byte-identical copies of the run's
    training images: the model learned them, so their low scores make the metrics optimistic."""
    try:
        learned = learned_digests(run.split() or {})
    except (RunError, ValueError, TypeError):
        return
    if not learned:
        return
    copies = []
    for p in paths:
        try:
            if (d := sha256_file(p)) in learned:
                copies.append((p, learned[d]))
        except OSError:
            continue  # unreadable: named when it is decoded
    if copies:
        pairs = named((f"{p} = {q}" for p, q in copies), 3, "; ")
        warnings.warn(
            f"{len(copies)} of the {len(paths)} images scored are byte-identical copies of "
            f"{run}'s training images ({pairs}): the model "
            "learned them, so their scores are lower than a new part's and the metrics "
            "optimistic. Take them out of the test images",
            stacklevel=3,
        )


def warn_held_out(run: RunDir, config: Config, split: dict) -> None:
    """Warn, naming them, about held-out images byte-identical to training images (split.json's
    SHA-256s; left out of the default threshold unless all are) or to images the source run's
    encoder learned (`_source_of`; counted): they score as what the model learned."""
    n_train = len(split["train"])
    learned = learned_digests(split)
    own = set(learned)  # copies of these are left out of the threshold (`distinct_held_out`)
    found = _source_split(config)
    if found is not None and len(found[1].get("sha256") or []) >= len(found[1]["train"]):
        source, theirs = found
        digests = theirs["sha256"][: len(theirs["train"])]
        for d, p in zip(digests, theirs["train"]):
            learned.setdefault(d, f"{p} (learned by {source})")
    held = zip(split["val"], split["sha256"][n_train:])
    held = [(p, d) for p, d in held if isinstance(d, str) and d in learned]
    copies = [(p, learned[d]) for p, d in held]
    if copies:
        pairs = named((f"{p} = {q}" for p, q in copies), 3, "; ")
        good = os.path.relpath(os.path.dirname(copies[0][0]), config.data).replace(os.sep, "/")
        left_out = len(copies) < len(split["val"]) and {d for _, d in held} <= own
        warnings.warn(
            f"{run}: {len(copies)} of the {len(split['val'])} held-out images are byte-identical "
            f"copies of training images ({pairs}): their scores say how the model scores images "
            "it learned, not new good parts, "
            + (
                "so the default threshold leaves them out and rests on the others. "
                if left_out
                else "and the default threshold, set on them too, will be too low. "
            )
            + f"Remove the copies from {good}/, or "
            f"set a threshold on other good images: `python -m anomaly threshold --run {shell_word(run)} "
            "--rule conformal --value 0.05 --good-images FOLDER`",
            stacklevel=3,
        )


def warn_degenerate(run: RunDir, scores, value: float, held_out: bool = True) -> None:
    """Warn when the held-out scores (without `held_out`: the training images', none held
    out) have no spread (several all equal, or a single one of 0: the model reproduces them
    exactly), so that the default threshold equals them and rejects every good part that
    scores as they do (a score >= the threshold is rejected)."""
    scores = np.asarray(scores, np.float64).ravel()
    if not len(scores) or np.ptp(scores) > 0 or (len(scores) < 2 and scores[0] != 0):
        return
    noun, aside = (
        ("held-out good image", "") if held_out else ("training image", " (none held out)")
    )
    n = len(scores)
    which = f"its one {noun}{aside} scores" if n == 1 else f"all {n} {noun}s{aside} score"
    warnings.warn(
        f"{run}: {which} exactly {value:.6g}, so the "
        f"default threshold {value:.6g} is degenerate: it measures no spread of normal scores, "
        "and every good part that scores as they do (or any higher) is rejected. Train on "
        "more varied good images, or set a threshold on other good images: `python -m anomaly "
        f"threshold --run {shell_word(run)} --rule conformal --value 0.05 --good-images FOLDER`",
        stacklevel=4,
    )


def out_of_memory(err: Exception, config: Config, n_images: int, run: RunDir) -> RunError | None:
    """The RunError, naming the fix, for a training that failed with `err` for want of memory:
    what it kept (the epochs finished, or only its settings) and what to change; None when
    `err` is another error (`safe_files.is_out_of_memory`)."""
    if not is_out_of_memory(err):
        return None
    why = "ran out of memory (a limit of the process or container, or the machine's)"
    if "CUDA" in str(err):
        why = "ran out of GPU memory"
    elif isinstance(err, NoRoom):  # patchknn's own estimate, before the work
        why = f"would run out of memory ({err})"
    where = f"{config.method} on {n_images} images at --size {config.size}"
    if run.has_last():  # a training by epochs: what it finished is kept
        return RunError(
            f"training {where} {why}; the epochs it finished are kept ({run.LAST}). Free memory "
            f"and continue with `python -m anomaly train --out {shell_word(run.path)} --resume`, "
            "or train a new --out at a smaller --size or --batch-size"
        )
    return RunError(
        f"training {where} {why}: nothing was saved but the run's settings. Train a new --out "
        "(or delete this one) at a smaller --size, on fewer images, or where there is more memory"
    )


def warn_no_split(run: RunDir, config: Config) -> None:
    """Warn that a new run held out nothing, so that its default threshold is set on training
    images, and say why (a run built on another's held out what that run held out)."""
    source = builds_on(config.method, config.backbone)
    why = (
        f"none of its {source} run's held-out images is in the data set now, and it holds out "
        "only those"
        if source
        else "val_fraction=0 or one image"
    )
    warnings.warn(
        f"{run}: no validation split ({why}), so the default threshold comes from training "
        "images and will be too low; set one with `threshold --good-images FOLDER`",
        stacklevel=4,
    )


def without_empty_frames(run: RunDir, pred) -> np.ndarray:
    """Which of `pred`'s images (the held-out ones, or the training images where none is held
    out) the default threshold, val_scores.json and so any later threshold on them rest on: all
    but empty frames (`pred.meta`'s "flat": one flat colour, a camera's blank frame, which
    `predict` gives no verdict and `threshold --good-images` refuses), named in a warning with
    the fix; a bool mask. A blank frame's score is far from a good part's: one held out set the
    threshold above every defect. Where every one is blank, all are kept (the warning says the
    threshold rests on them)."""
    flat = set(pred.meta.get("flat") or ())
    keep = np.array([p not in flat for p in pred.paths], dtype=bool)
    if not flat:
        return keep
    which = named((printable(p) for p in pred.paths if p in flat), 3)
    rest = "left out of" if keep.any() else "all there is for"
    warnings.warn(
        f"{run}: {len(flat)} of the {len(keep)} images its default threshold is set on "
        f"{'is' if len(flat) == 1 else 'are'} all one flat colour ({which}): empty frames "
        f"(a camera's blank shot), {rest} the threshold. The model learned from the images beside "
        "them, maybe blank ones too: take every empty frame out of the good images and train "
        "again",
        stacklevel=3,
    )
    return keep if keep.any() else ~keep
