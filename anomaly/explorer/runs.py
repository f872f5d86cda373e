"""The runs an explorer shows: Predictions loaded from run folders, and what each run needs for
fast updates (its threshold table, ranges, saved threshold and evidence scale), computed once.

A run folder may come from someone else, so the images it names are read only from inside its
data folder (`data_root`, `image_files`), and two runs are compared image by image only when
they hold the same images (`collect_runs` matches them by path under the data folder)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anomaly.data.files import IMAGE_EXTENSIONS
from anomaly.decision import ThresholdTable, score_range, threshold_table
from anomaly.detectors.base import Predictions, nonfinite
from anomaly.metrics import Threshold
from anomaly.overlays import EvidenceScale, run_scale
from anomaly.runs import RunDir, RunError
from anomaly.safe_files import load_record, sha256_file
from anomaly.terminal import shell_word
from anomaly.threshold_file import MODEL_RECORD, model_sha256


def load_run_predictions(run: str | Path) -> Predictions:
    """The Predictions saved in a run folder (RUN/predictions.npz) or in an .npz file."""
    path = Path(run)
    if _npz_file(path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist: pass a scored run folder or its {RunDir.PREDICTIONS}"
            )
        try:
            return Predictions.load(path)
        except Exception as err:  # noqa: BLE001  (truncated, empty, or not ours)
            raise ValueError(
                f"{path} is not a readable {RunDir.PREDICTIONS} ({type(err).__name__}: "
                f"{str(err)[:120]}); pass a run folder scored by `python -m anomaly score`"
            ) from None
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} is not a folder: pass a run folder made by "
            "`python -m anomaly train` (and scored)"
        )
    if not RunDir(path).is_scored():
        RunDir(path).refuse_not_a_run()  # a data set given as a run: say so
        raise FileNotFoundError(
            f"{path} has no {RunDir.PREDICTIONS}: score the run first (`python -m anomaly score "
            f"--run {shell_word(path)}`), or pass Predictions to ThresholdExplorer directly"
        )
    return RunDir(path).predictions()


def run_folder(run: str | Path) -> Path:
    path = Path(run)
    return path.parent if _npz_file(path) else path


def _npz_file(path: Path) -> bool:
    """Whether `path` names a predictions file (a run folder may be named `x.npz` too)."""
    return path.suffix == ".npz" and not path.is_dir()


def _unique_name(name: str, taken: dict) -> str:
    base, i = name or "run", 2
    while name in taken or not name:
        name, i = f"{base}-{i}", i + 1
    return name


def _label(folder: Path) -> str:
    """A run's name on the page: its folder's, or "RUN on DATA" for the scores of another data
    set (`score --data`'s RUN/scored/DATA/, or `--out` elsewhere): two runs compared on one
    data set were both named after it ("holdout", "holdout-2"), and saved each other's."""
    home = threshold_home(folder)
    own = folder.resolve().name
    return own if home == folder else f"{home.resolve().name} on {own}"


def collect_runs(runs, run_dirs=None) -> tuple[dict, dict]:
    """(name -> Predictions, name -> run folder or None) from what ThresholdExplorer accepts."""
    preds: dict[str, Predictions] = {}
    dirs: dict[str, Path | None] = {}
    if isinstance(runs, (Predictions, str, Path)):
        runs = [runs]
    items = list(runs.items()) if isinstance(runs, dict) else [(None, r) for r in runs]
    if not items:
        raise ValueError("ThresholdExplorer needs at least one run")
    for name, run in items:
        if isinstance(run, Predictions):
            name = _unique_name(name or run.method or "run", preds)
            preds[name], dirs[name] = _finite(name, run), None
        else:
            folder = Path(os.path.abspath(run_folder(run)))  # a later chdir: the same run
            name = _unique_name(name or _label(folder), preds)
            preds[name], dirs[name] = load_run_predictions(run), folder
    if run_dirs is not None:
        if isinstance(run_dirs, (str, Path)):
            run_dirs = [run_dirs]
        if not isinstance(run_dirs, dict):
            run_dirs = list(run_dirs)
            if len(run_dirs) != len(preds):
                raise ValueError(f"{len(run_dirs)} run_dirs for {len(preds)} runs")
            run_dirs = dict(zip(preds, run_dirs))
        for name, folder in run_dirs.items():
            if name not in preds:
                raise KeyError(f"run_dirs names {name!r}, which is not one of {list(preds)}")
            dirs[name] = Path(os.path.abspath(folder)) if folder is not None else None
    return _matched(preds, dirs), dirs


def _finite(name: str, pred: Predictions) -> Predictions:
    """`pred`, or ValueError naming the run when a score or map value is NaN or infinite: the
    histogram, the rates and the cost optimum of it would fail deep inside matplotlib, or be
    wrong. (Run folders are checked when their predictions.npz is read: `Predictions.load`.)"""
    if bad := nonfinite(pred.scores, pred.maps):
        raise ValueError(
            f"run {name!r}: {bad}; its model gives invalid scores: train it again, or leave those "
            "images out"
        )
    return pred


def data_root(pred: Predictions, folder: Path | None) -> Path | None:
    """The data folder the run's images were scored from: what `score` recorded in
    predictions.npz (`meta["data"]`; it is the scored data for RUN/scored/<x>/), else the run's
    config.json `data`; None when neither says."""
    data = (pred.meta or {}).get("data") if isinstance(pred.meta, dict) else None
    if not data and folder is not None:
        try:
            data = load_record(RunDir(folder).file(RunDir.CONFIG)).get("data")
        except (OSError, ValueError, AttributeError):
            data = None
    return Path(os.path.abspath(data)) if isinstance(data, str) and data else None


def _under(path: str, root: Path) -> str | None:
    """`path` relative to `root` (POSIX, without touching the disk), or None when outside."""
    rel = os.path.relpath(os.path.abspath(path), root)
    return None if rel == os.pardir or rel.startswith(os.pardir + os.sep) else Path(rel).as_posix()


def image_keys(pred: Predictions, folder: Path | None, by_root: bool = True) -> list[tuple]:
    """Per image: (its path under the run's data folder, defect kind, label); with by_root=False,
    or when the data folder is unknown, the path under the images' common folder instead."""
    root = data_root(pred, folder) if by_root else None
    rel = [_under(p, root) for p in pred.paths] if root is not None else [None]
    if None in rel:
        parents = [os.path.dirname(os.path.abspath(p)) for p in pred.paths]
        common = Path(os.path.commonpath(parents)) if parents else Path("/")
        rel = [_under(p, common) for p in pred.paths]
    return list(zip(rel, list(pred.defects), pred.labels.tolist()))


def _matched(preds: dict, dirs: dict) -> dict:
    """The runs with every later one in the first one's image order, refused (naming images)
    when they were not scored on the same images."""
    sizes = {len(p) for p in preds.values()}
    if len(sizes) > 1:
        each = "; ".join(_images_of(n, preds[n], dirs[n]) for n in preds)
        roots = {data_root(preds[n], dirs[n]) for n in preds}
        same = (
            " They were scored on the same data folder, but not on the same images of it: a "
            "run is tested on the good images of its own data that it neither learned nor held "
            "out for its threshold (in the plain layout, good/ less what its split.json lists), "
            "and on all the good images of data it did not learn."
            if len(roots) == 1 and None not in roots
            else ""
        )
        raise ValueError(
            f"The runs were not scored on the same images: {each}.{same} Compare runs scored "
            "on the same images: runs trained on the same data and split, or each scored on "
            "data none of them learned (`python -m anomaly score --run RUN --data DATA`)"
        )
    names = list(preds)
    if len(names) < 2:
        return preds
    by_root = all(
        (root := data_root(preds[n], dirs[n])) is not None
        and all(_under(p, root) is not None for p in preds[n].paths)
        for n in names
    )
    keys = {n: image_keys(preds[n], dirs[n], by_root) for n in names}
    first = names[0]
    out = {first: preds[first]}
    for name in names[1:]:
        a, b = keys[first], keys[name]
        if a == b:
            out[name] = preds[name]
            continue
        if Counter(a) != Counter(b):
            raise ValueError(_mismatch(first, a, name, b, by_root))
        where = defaultdict(list)
        for i, key in enumerate(b):
            where[key].append(i)
        out[name] = reindexed(preds[name], [where[key].pop(0) for key in a])
    for name in names[1:]:
        _same_files(first, preds[first], dirs[first], name, out[name], dirs[name])
    return out


def _same_files(a_name: str, a: Predictions, a_dir, b_name: str, b: Predictions, b_dir) -> None:
    """ValueError, naming a pair, when two runs matched by their images' names under two data
    folders hold other pictures under those names (two product lines of the same kinds: MVTec's
    000.png, 001.png ...); a copy of the data elsewhere matches."""
    if data_root(a, a_dir) == data_root(b, b_dir):
        return
    for x, y in zip(image_files(a, a_dir)[0], image_files(b, b_dir)[0]):
        if x is not None and y is not None and sha256_file(x) != sha256_file(y):
            raise ValueError(
                f"{a_name} and {b_name} were scored on other data folders whose images share "
                f"names but not contents ({x} and {y} differ): comparing them image by image "
                "would pair different pictures. Compare runs scored on the same images "
                "(`python -m anomaly score --run RUN --data DATA`)"
            )


def _images_of(name: str, pred: Predictions, folder: Path | None) -> str:
    """Which images a run was scored on, in a few words: how many, of which data folder, and
    whether they are the run's own test images or another data set's (`score --data`)."""
    n_bad = int(np.sum(pred.labels > 0))
    root = data_root(pred, folder)
    what = f"{len(pred)} images ({len(pred) - n_bad} good, {n_bad} defective)"
    if root is None:
        return f"{name!r} {what}, of data it does not record"
    if folder is not None and other_data(pred, folder):
        return f"{name!r} {what} of {root}, scored by `score --data` (all its test images)"
    own = " (its own test images)" if folder is not None else ""
    return f"{name!r} {what} of {root}{own}"


def _mismatch(a_name: str, a: list, b_name: str, b: list, by_root: bool) -> str:
    only_a, only_b = Counter(a) - Counter(b), Counter(b) - Counter(a)

    def some(keys: Counter) -> str:
        shown = [f"{p} ({d}, label {lab})" for p, d, lab in sorted(keys)[:2]]
        return ", ".join(shown) + (", ..." if len(keys) > 2 else "")

    under = "their data folder" if by_root else "the images' common folder"
    return (
        f"The runs {a_name!r} and {b_name!r} were not scored on the same images: "
        f"{sum(only_a.values())} only in {a_name!r} ({some(only_a)}), "
        f"{sum(only_b.values())} only in {b_name!r} ({some(only_b)}). Images are matched by "
        f"their path under {under}, their defect kind and label. Compare runs scored on the "
        "same data (`python -m anomaly score --run RUN --data DATA` scores a run on other data)"
    )


def reindexed(pred: Predictions, order) -> Predictions:
    """`pred` with its images in `order` (a list of indices)."""
    order = np.asarray(order, np.int64)
    return dataclasses.replace(
        pred,
        paths=[pred.paths[i] for i in order],
        labels=pred.labels[order],
        defects=[pred.defects[i] for i in order],
        scores=pred.scores[order],
        maps=pred.maps[order],
        masks=pred.masks[order] if pred.masks is not None else None,
        mask_known=pred.mask_known[order] if pred.mask_known is not None else None,
    )


def threshold_home(folder: Path) -> Path:
    """Where a folder's threshold lives: the run itself for `score --data OTHER`'s
    RUN/scored/<name>/ folders (`predict` reads RUN/threshold.json only; not where their
    predictions.npz records another run's model: `--out` put there), and for its `--out FOLDER`
    (no run there) the run its predictions.npz names, while that run holds the model that
    scored them (`_scored_by`); else the folder."""
    run = folder.parent.parent
    if folder.parent.name == RunDir.SCORED and RunDir(run).file(RunDir.MODEL).is_file():
        sha = recorded_runs(folder)[1]  # another run's `--out` put there: that run
        return run if sha in (None, model_sha256(run / RunDir.MODEL)) else _scored_by(folder) or run
    if not RunDir(folder).file(RunDir.CONFIG).is_file():
        return _scored_by(folder) or folder
    return folder


def recorded_runs(folder: Path, meta: dict | None = None) -> tuple[list[Path], str | None]:
    """The places of the run that wrote `folder`'s predictions.npz (its meta's run: absolute
    since 2026-12-05, before as typed; and that run seen from the folder, where both were moved
    together), and the SHA-256 it records of that run's model.pt (None: no record). `meta`:
    its `RunDir.scored_meta()`, where the caller read it already."""
    meta = RunDir(folder).scored_meta() if meta is None else meta
    run, at, sha = meta.get("run"), meta.get("at"), meta.get(MODEL_RECORD)
    if not isinstance(run, str) or not run or "\x00" in run:
        return [], None
    places = [Path(run)]
    if isinstance(at, str) and os.path.isabs(at) and os.path.isabs(run) and "\x00" not in at:
        with contextlib.suppress(ValueError):  # (Windows: another drive has no relative path)
            seen_here = os.path.normpath(folder / os.path.relpath(run, at))  # a copy: its own
            places.insert(0, Path(seen_here))
    return places, sha if isinstance(sha, str) else None


def _scored_by(folder: Path) -> Path | None:
    """The run whose model wrote `folder`'s predictions.npz (`recorded_runs`), where it still
    holds that model.pt; else None (moved apart, trained again, or no record)."""
    places, sha = recorded_runs(folder)
    found = (p for p in places if sha and model_sha256(p / RunDir.MODEL) == sha)
    return next(found, None)


def threshold_path(folder: Path) -> Path:
    """The threshold.json a folder's threshold is read from and saved to (`threshold_home`)."""
    return RunDir(threshold_home(folder)).file(RunDir.THRESHOLD)


def other_data(pred: Predictions, folder: Path | None) -> str | None:
    """The data folder a RUN/scored/<name>/ folder's images came from when it is not the run's
    own (`score --data OTHER`), else None: a threshold chosen on them says so."""
    if folder is None or threshold_home(folder) == folder:
        return None
    data = data_root(pred, folder)
    try:
        own = load_record(RunDir(threshold_home(folder)).file(RunDir.CONFIG))["data"]
        own = Path(os.path.abspath(own)) if isinstance(own, str) and own else None
    except (OSError, ValueError, KeyError, TypeError):
        own = None
    return str(data) if data is not None and data != own else None


def read_threshold(folder: Path | None) -> Threshold | None:
    """The run's saved threshold, or None (no folder, or no file); a file that is refused
    (damaged, or set for another model) is None with a warning that says why."""
    if folder is None or not RunDir(threshold_home(folder)).has_threshold():
        return None
    try:
        return RunDir(threshold_home(folder)).threshold()
    except RunError as err:
        warnings.warn(f"the saved threshold is not shown: {err}", stacklevel=2)
        return None


@dataclass
class RunView:
    """What one run needs for fast updates, computed once."""

    name: str
    pred: Predictions
    folder: Path | None
    table: ThresholdTable
    lo: float
    hi: float
    map_lo: float
    map_hi: float
    scale: EvidenceScale  # the run's evidence scale (its pixel threshold: the default)
    saved: Threshold | None
    files: list[Path | None]  # per image, the file to read (inside the data folder) or None
    image_note: str  # what was not read, and why ("" when every image was found)
    threshold: float | None = None  # last threshold shown for this run
    pixel_threshold: float | None = None
    home: Path | None = None  # where its threshold lives (`threshold_home`), as the page opened
    made_by: str | None = None  # its scores' model.pt SHA-256, where that run's model made them

    @property
    def label(self) -> str:
        method = self.pred.method
        return f"{self.name} ({method})" if method and method != self.name else self.name

    @property
    def missing(self) -> str:
        """Which class the run's images lack ("defective", "good"), or "" when it has both:
        rates and a cost optimum that need the missing class are undefined."""
        n_defective = int(np.sum(self.pred.labels > 0))
        if n_defective == 0:
            return "defective"
        return "good" if n_defective == len(self.pred) else ""

    @property
    def kinds(self) -> list[str]:
        return list(dict.fromkeys(sorted(self.pred.defects, key=lambda k: (k != "good", k))))


def prepare(name: str, pred: Predictions, folder: Path | None) -> RunView:
    lo, hi = score_range(pred.scores)
    map_lo, map_hi = float(pred.maps.min()), float(pred.maps.max())
    files, note = image_files(pred, folder)
    if map_hi <= map_lo:
        map_hi = map_lo + 1.0
    try:
        # the run's scale for RUN/scored/<name>/, as `score` drew that folder's overlays/
        scale = run_scale(threshold_home(folder), pred.maps, pred.labels) if folder else None
    except (OSError, ValueError, KeyError):
        scale = None
    if scale is None:
        scale = EvidenceScale.from_maps(_sample_good(pred), q=0.995)
    saved = read_threshold(folder)
    if saved is not None:  # a saved threshold outside the scores' span stays reachable
        lo, hi = min(lo, saved.value), max(hi, saved.value)
    pt = float(scale.pixel_threshold)  # as saved (the slider reaches it): Save keeps it
    pt = pt if np.isfinite(pt) else float(np.clip(pt, map_lo, map_hi))
    return RunView(
        name,
        pred,
        folder,
        threshold_table(pred.labels, pred.scores),
        lo,
        hi,
        min(map_lo, pt),
        max(map_hi, pt),
        scale,
        saved,
        files,
        f"{note}; maps shown without them" if note else "",
        home=(home := threshold_home(folder) if folder else None),
        made_by=_made_by(pred, home),
    )


def _made_by(pred: Predictions, home: Path | None) -> str | None:
    """The SHA-256 its predictions record of their model, where `home`'s model.pt is that model
    as the page opens (a run's own page; not Predictions given run_dirs= of another, or a new
    folder): a save then checks that the run was not moved or trained again meanwhile."""
    made = pred.meta.get(MODEL_RECORD)
    model = RunDir(home).file(RunDir.MODEL) if home is not None else None
    return made if made and model is not None and model_sha256(model) == made else None


def _sample_good(pred: Predictions) -> np.ndarray:
    """The maps of some 50 good images (all images when none is good), without copying all."""
    good = np.flatnonzero(pred.labels == 0)
    good = good if good.size else np.arange(len(pred))
    return pred.maps[good[:: max(1, good.size // 50)]]


def _test_image(real: Path, root: Path) -> bool:
    """Whether `real` (resolved) is where `score` finds test images in the data set `root`:
    ROOT/test/<kind>/<file>, or ROOT/<kind>/<file> in the plain layout (ROOT/good/ exists)."""
    if not real.is_relative_to(root) or real.suffix.lower() not in IMAGE_EXTENSIONS:
        return False
    parts = real.relative_to(root).parts
    mvtec = len(parts) == 3 and parts[0] == "test"
    return mvtec or (len(parts) == 2 and (root / "good").is_dir())


def image_files(pred: Predictions, folder: Path | None) -> tuple[list[Path | None], str]:
    """Per image, the file to read (resolved), or None; and what was not read, in a few words
    ("" when every image is there). Only test images of the run's data folder (`data_root`)
    are read, where `score` finds them (`_test_image`): predictions.npz and config.json from
    someone else could name any file (`../../private/x.png`), and any folder as the data."""
    n = len(pred)
    root = data_root(pred, folder)
    if root is None:
        return [None] * n, "the run does not record its data folder, so its images are not read"
    if not root.is_dir():  # moved with its data to another machine: say how to show them
        fix = f" (moved? score the run from its new place: {_rescore(folder)})" if folder else ""
        return [None] * n, f"images not found under {root}{fix}"
    real_root = root.resolve()
    files: list[Path | None] = []
    outside = missing = 0
    for p in pred.paths:
        # a relative path: from the working folder (as an older `score` wrote it), or the root
        tries = [Path(p)] if os.path.isabs(p) else [Path(os.path.abspath(p)), root / p]
        inside = [real for real in (t.resolve() for t in tries) if _test_image(real, real_root)]
        found = next((real for real in inside if real.is_file()), None)
        outside += not inside
        missing += bool(inside) and found is None
        files.append(found)
    notes = []
    if missing:
        what = "images" if missing == n else f"{missing} of {n} images"
        notes.append(f"{what} not found under {root}")
    if outside:
        notes.append(
            f"{outside} of {n} image paths in predictions.npz are not test images of the "
            f"data set {root} (ROOT/test/<kind>/ or, plain, ROOT/<kind>/), and were not read"
        )
    return files, "; ".join(notes)


def _rescore(folder: Path) -> str:
    from anomaly.terminal import shell_word

    return f"python -m anomaly score --run {(w := shell_word(folder))} --data NEW_PATH --out {w}"


def read_image(path: Path | None, side: int | None = None) -> np.ndarray | None:
    """An image file (from `image_files`) as uint8 RGB, as viewers show it (EXIF orientation),
    or None when there is none or it does not decode; at its own resolution, or a JPEG at the
    smallest scale that keeps both sides at least `side` (decoding a camera photo whole for a
    thumbnail costs 10-20x the CPU)."""
    from anomaly.data.image_kind import read_rgb

    return read_rgb(path, side)
