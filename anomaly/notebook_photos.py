"""What notebook 07 ("Bring your own photos") calls: a stand-in for the reader's photos, the
loader's checks shown as a user meets them, a label-free `auto` run, and its verdicts.

The stand-in for "your photos" is one set of the real-photo suite (`python -m anomaly
make-photos`, `anomaly.data.photos`), in the MVTec AD layout the loader reads
(`anomaly.data.folder`); the "new photos to check" are fresh test crops of the same photo made
with another seed, copied into one flat folder as a user's unlabelled photos would be, and the
"good photos from the line" a threshold is set on (`threshold --good-images`) are fresh good
crops made the same way with a third seed. Smoke runs (`ANOMALY_SMOKE`, `anomaly.notebook_setup.settings`) use a few 64 px images; everything is
written under the notebook's home (`$ANOMALY_HOME` or the working folder).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import shutil
import sys
import tempfile
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anomaly.notebook_checks import checks_text, loader_checks  # noqa: F401 (notebook 07's)
from anomaly.notebook_setup import Settings, _subplots, settings_words, shown
from anomaly.runs import RunDir
from anomaly.safe_files import sha256_file
from anomaly.terminal import shell_word

SET = "coins"  # objects photographed one per image: the closest set to a part on a line
SUITE_SEED = 0  # the suite `make benchmark` writes (`make-photos data/photos --seed 0`)
NEW_SEED = 2  # "another day's photos": crops of the same photo at other random positions
GOOD_SEED = 3  # "good photos from the line": good crops of the test region, for the threshold
SMOKE_PX = 64
SMOKE_COUNTS = {"train": 12, "good": 3, "defect": 1}


@dataclass(frozen=True)
class PhotoSettings:
    """Where notebook 07's stand-in data, new photos and run live, and its sizes."""

    smoke: bool
    set_name: str
    suite: Path  # the make-photos root (the stand-in is `suite / set_name`)
    new: Path  # a flat folder of new photos to check
    good: Path  # a flat folder of good photos from the line, to set the threshold on
    n_good: int  # how many (at least 1/alpha - 1 for the conformal rule)
    run: Path
    seed: int
    size: int | None  # the run's image size (None: auto's default)
    val_fraction: float  # good training images held out for the threshold
    alpha: float  # the false-reject rate the conformal threshold guarantees

    @property
    def data(self) -> Path:
        return self.suite / self.set_name


def photo_settings(s: Settings, set_name: str = SET) -> PhotoSettings:
    """Notebook 07's settings from the notebook settings `s` (smoke or full).

    A quarter of the good training images is held out (`val_fraction`): a conformal threshold
    at alpha needs at least 1/alpha - 1 of them (19 for 5 %; a smoke run has 3, so 25 %). The
    folder of good photos from the line holds 24 (4 in a smoke run).
    """
    data_root, runs_root = s.data_dir.parent, s.runs_dir.parent
    tag = "smoke-" if s.smoke else ""
    p = PhotoSettings(
        smoke=s.smoke,
        set_name=set_name,
        suite=data_root / f"{tag}photos",
        new=data_root / f"{tag}{set_name}-to-check",
        good=data_root / f"{tag}{set_name}-good-from-the-line",
        n_good=4 if s.smoke else 24,
        run=runs_root / f"{tag}own-photos" / set_name,
        seed=s.seed,
        size=s.size,
        val_fraction=0.25,
        alpha=0.25 if s.smoke else 0.05,
    )
    print(settings_words(s, p.data, p.run))
    return p


def _make(root: Path, p: PhotoSettings, seed: int, **counts) -> None:
    from anomaly.data.photos import make_photos

    size = SMOKE_PX if p.smoke else None
    make_photos(root, seed=seed, size=size, sets=[p.set_name], **counts)


def stand_in(p: PhotoSettings) -> Path:
    """The stand-in for the reader's photos: one set of the photo suite, made if missing.

    Full settings read `data/photos/<set>` (`make benchmark` writes it; made here if missing,
    the whole suite, about a minute); smoke runs make a few 64 px images of the one set."""
    if not (p.data / "train" / "good").is_dir():
        if p.smoke:
            _make(p.suite, p, SUITE_SEED, **SMOKE_COUNTS)
        else:
            from anomaly.data.photos import make_photos

            make_photos(p.suite, seed=SUITE_SEED, progress=True)
    return p.data


def folder_tree(root: Path) -> str:
    """The data folder as the loader reads it: each folder's image files (masks in ground_truth/
    or masks/) and how many other files it holds, which are not read (hidden ones left out)."""
    from anomaly.data.files import IMAGE_EXTENSIONS
    from anomaly.data.input_checks import MASK_FOLDERS

    root = Path(root)
    lines = [f"{shown(Path(root))}/"]
    for folder in sorted(d for d in root.rglob("*") if d.is_dir()):
        files = [f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")]
        images = sum(f.suffix.lower() in IMAGE_EXTENSIONS for f in files)
        if files:
            what = "masks" if folder.relative_to(root).parts[0] in MASK_FOLDERS else "images"
            other = f", {len(files) - images} other files (not read)" * (len(files) > images)
            lines.append(f"  {str(folder.relative_to(root)) + '/':<24} {images:>4} {what}{other}")
    return "\n".join(lines)


# --- train, score, threshold -------------------------------------------------------------------


def train(p: PhotoSettings, data: Path) -> Path:
    """`python -m anomaly train --data DATA --method auto --val-fraction 0.25 --seed 7 --out RUN`,
    RUN named after the data folder beside `p.run`: trained now, or the trained run of that data
    reused; then scored (`score`, which writes overlays/)."""
    from anomaly.config import Config
    from anomaly.decision import few_held_out
    from anomaly.pipeline import score_run, train_run

    folder = Path(p.run).parent / Path(data).resolve().name  # the stand-in's: p.run
    run, p = RunDir(folder), dataclasses.replace(p, run=folder)
    trained_on = run.trained_config().data if run.has_model() else None
    if trained_on is not None and Path(trained_on).resolve() != Path(data).resolve():
        raise ValueError(
            f"{shown(folder)} holds a run trained on {shown(Path(trained_on))}, not on "
            f"{shown(Path(data))}: move that run folder away (nothing here deletes it)"
        )
    if run.has_model():
        print(f"using the trained run {shown(p.run)}")
    else:
        sizes = {"size": p.size, "epochs": 1} if p.smoke else {}
        config = Config.for_method("auto").replace(
            data=str(Path(data).resolve()), seed=p.seed, val_fraction=p.val_fraction, **sizes
        )
        with warnings.catch_warnings(record=True) as caught:  # said below, paths from home
            warnings.simplefilter("always")
            train_run(config, p.run, progress=False)  # the cell prints auto's table once
        for w in caught:
            print(f"warning: {shown(w.message)}", file=sys.stderr)
        if note := few_held_out(run.threshold(), shown(p.run)):  # as `train` says it
            print(note, file=sys.stderr)
        print(f"trained {shown(p.run)}")
    if not run.has_current_metrics():  # not scored, or scored by an older evaluation
        score_run(p.run)
    return p.run


def selection(run: Path) -> dict | None:
    """What auto recorded: every candidate's scores on the synthetic defects, and its choice, as
    model.pt holds it (`anomaly.selection.read_selection` warns when selection.json disagrees);
    None for a run of another method."""
    from anomaly.selection import read_selection

    return read_selection(run)


def _no_selection(run: Path, chosen) -> str:
    what = "records no choice by auto" if chosen is None else "holds a choice that cannot be read"
    return f"{shown(Path(run))} {what}; train it with --method auto to see one"


def selection_table(run: Path) -> str:
    """The selection as the command line prints it after `train --method auto`."""
    from anomaly.detectors.auto import format_selection

    chosen = selection(run)
    try:
        return format_selection(chosen)
    except (KeyError, TypeError, IndexError, ValueError):  # none, or not auto's (a shared run)
        return _no_selection(run, chosen)


def test_results(run: Path) -> str:
    """How the run did on the labelled test images: `score`'s summary at the threshold `train`
    sets (the run's `threshold_quantile` of its held-out scores, whatever is saved now), then
    image AUROC per defect kind, weakest first."""
    from anomaly.decision import score_summary
    from anomaly.metrics import threshold_normal_quantile

    rd = RunDir(run)
    pred, metrics = rd.predictions(), rd.metrics()
    held_out = rd.val_scores()["scores"]
    threshold = threshold_normal_quantile(held_out, q=rd.config().threshold_quantile)
    kinds = sorted(
        (v["image_auroc"], k)
        for k, v in metrics.get("per_defect", {}).items()
        if v.get("image_auroc") is not None
    )
    per_kind = "  ".join(f"{k} {a:.3f}" for a, k in kinds)
    return (
        score_summary(pred.labels, pred.scores, metrics, threshold)
        + f"\nimage AUROC by defect kind, weakest first: {per_kind}"
    )


def held_out_threshold(run: Path, alpha: float):
    """The conformal threshold on the run's held-out photos at `alpha`, or, where their distinct
    photos the model did not learn are too few for it (copies of training photos do not count),
    at the smallest alpha they allow, said: (threshold, the alpha it guarantees)."""
    from anomaly.calibration import good_scores, set_threshold
    from anomaly.metrics import conformal_n_needed, smallest_alpha

    rd = RunDir(run)
    with warnings.catch_warnings():  # its copies: counted in the threshold's own words
        warnings.simplefilter("ignore", UserWarning)
        n = good_scores(rd, None)[2]["n"]  # the held-out images `set_threshold` counts
        if (rd.split() or {}).get("sha256") and n < conformal_n_needed(alpha):
            wider = float(smallest_alpha(n))
            print(
                f"{n} of the held-out photos are distinct and not copies of training photos: "
                f"too few for alpha {alpha:g} (it needs {conformal_n_needed(alpha)}); set at "
                f"{wider:g}, the smallest they allow"
            )
            alpha = wider
        with contextlib.redirect_stdout(io.StringIO()) as said:  # (overlays it removed)
            threshold = set_threshold(run, "conformal", alpha)
    print(shown(said.getvalue().rstrip()), end="\n" * bool(said.getvalue()))
    return threshold, alpha


def threshold_text(run: Path, threshold) -> str:
    """The threshold, its rule and guarantee, and what it does on the labelled test images."""
    from anomaly.decision import guarantee_broken, summary_line
    from anomaly.metrics import confusion
    from anomaly.threshold_file import guarantee_words, lost_guarantee
    from anomaly.threshold_text import calibration_words

    pred = RunDir(run).predictions()
    counts = confusion(pred.labels, pred.scores, threshold.value)
    guarantee = guarantee_words(threshold.rule, threshold.params)
    if not guarantee and (lost := lost_guarantee(threshold.rule, threshold.params or {})):
        guarantee = f"none: {lost} (choose it again)"
    guarantee = guarantee or "none (use the conformal rule for one)"
    source = calibration_words(threshold)
    text = (
        f"threshold {threshold.value:.6g} ({threshold.rule}); guarantee: {guarantee}\n"
        + (f"{source}\n" if source else "")
        + f"on the labelled test images, {summary_line(counts)}"
        + (
            f"\n{broken}"
            if (broken := guarantee_broken(pred.labels, pred.scores, threshold))
            else ""
        )
    )
    return shown(text)  # paths from the notebook's home


def good_photos(p: PhotoSettings) -> Path:
    """A flat folder of `p.n_good` good photos "from the line": good test crops of the same
    photo's test region made with seed `GOOD_SEED` (not the test photos themselves, nor the
    new photos to check), as a user's photos of good parts taken in production would be. Each
    is another crop: one drawn again at the same place (a set of few positions, as the coins)
    is left out, as a copy is no other part."""
    if p.good.is_dir() and any(p.good.iterdir()):
        return p.good  # made once, then reused
    with tempfile.TemporaryDirectory(prefix="anomaly-good-") as tmp:
        _make(Path(tmp), p, GOOD_SEED, train=1, good=2 * p.n_good, defect=0)
        kept, seen = [], set()
        for f in sorted((Path(tmp) / p.set_name / "test" / "good").iterdir()):
            digest = sha256_file(f)
            if digest not in seen and len(kept) < p.n_good:
                seen.add(digest)
                kept.append(f)
        p.good.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(kept, 1):
            shutil.copy(f, p.good / f"good{i:02d}.png")
    return p.good


def before_after(run: Path, thresholds: dict) -> str:
    """A table: each named threshold, and what it does on the labelled test photos."""
    from anomaly.metrics import confusion

    pred = RunDir(run).predictions()
    width = max(len(name) for name in thresholds)
    lines = [f"{'threshold set on':<{width}}  {'value':>7}  good rejected  defects caught"]
    for name, t in thresholds.items():
        c = confusion(pred.labels, pred.scores, t.value)
        rejected, caught = f"{c['fp']}/{c['fp'] + c['tn']}", f"{c['tp']}/{c['tp'] + c['fn']}"
        lines.append(f"{name:<{width}}  {t.value:>7.4g}  {rejected:>13}  {caught:>14}")
    return "\n".join(lines)


# --- new photos --------------------------------------------------------------------------------


def new_photos(p: PhotoSettings) -> Path:
    """A flat folder of new photos to check, as a user's would be: two good crops and one of
    each defect kind, cut from the same photo at other positions (seed `NEW_SEED`). The file
    names carry the truth only so a reader can judge the verdicts; any names work."""
    if p.new.is_dir() and any(p.new.iterdir()):
        return p.new
    with tempfile.TemporaryDirectory(prefix="anomaly-new-") as tmp:
        _make(Path(tmp), p, NEW_SEED, train=1, good=2, defect=1)
        test = Path(tmp) / p.set_name / "test"
        files = sorted((test / "good").iterdir())
        files += sorted(f for d in sorted(test.iterdir()) if d.name != "good" for f in d.iterdir())
        p.new.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(files, 1):
            shutil.copy(f, p.new / f"photo{i:02d}_{f.parent.name}.png")
    return p.new


def verdicts_text(results: list[dict]) -> str:
    """`predict`'s lines: file, score, PASS or REJECT (or the error for an unreadable file)."""
    return "\n".join(
        f"{Path(r['path']).name:<24} {r['score']:>10.4g}  {r['verdict']}"
        if "error" not in r
        else f"{Path(r['path']).name:<24} error: {r['error']}"
        for r in results
    )


def verdicts_figure(results: list[dict], ncols: int = 4):
    """The overlays `predict` wrote (verdict and score on each image, evidence on the run's
    scale, red above its pixel threshold), in a grid."""
    from PIL import Image

    drawn = [r for r in results if "overlay" in r]
    ncols = max(1, min(ncols, len(drawn)))
    nrows = -(-len(drawn) // ncols)
    fig, axes = _subplots(nrows, ncols, figsize=(2.8 * ncols, 3.6 * nrows), squeeze=False)
    for ax, r in zip(axes.ravel(), drawn):
        with Image.open(r["overlay"]) as im:
            ax.imshow(np.asarray(im.convert("RGB")))
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.tight_layout()
    return fig


# --- when it does poorly -----------------------------------------------------------------------


def auto_limits(width: int = 96) -> str:
    """The paragraph of `anomaly.detectors.auto`'s docstring that says what auto optimises and
    where that stops (read from the docstring, so the notebook says what the code says)."""
    from anomaly.detectors import auto

    for paragraph in (auto.__doc__ or "").split("\n\n"):
        if "limits" in paragraph:
            return textwrap.fill(" ".join(paragraph.split()), width=width)
    return "see the docstring of anomaly.detectors.auto"


def held_out_vs_new(run: Path) -> str:
    """The held-out good training photos' scores beside the good test photos' (what a
    threshold is applied to), and those of the folder the threshold was last set on
    (`--good-images`), if any: a threshold's guarantee needs them alike."""
    rd = RunDir(run)
    held = np.asarray(rd.val_scores()["scores"], np.float64)
    pred = rd.predictions()
    new = np.asarray(pred.scores, np.float64)[np.asarray(pred.labels) == 0]
    if not len(held) or not len(new):
        return "no held-out or no good test photos to compare"

    def spread(x: np.ndarray) -> str:
        return f"{x.min():.4g} to {x.max():.4g}, median {np.median(x):.4g}"

    rows = [(f"held-out good training photos ({len(held)})", held)]
    line, why = line_scores(rd)
    if line is not None:
        rows.append((f"good photos from the line ({len(line)})", line))
    rows.append((f"good test photos ({len(new)})", new))
    width = max(len(name) for name, _ in rows) + 1
    above = int((new > held.max()).sum())
    return (
        "\n".join(f"{name + ':':<{width}} {spread(x)}" for name, x in rows)
        + f"\n{above} of {len(new)} good test photos score above every held-out one"
        + (f"\n{why}" if why else "")
    )


def line_scores(rd: RunDir) -> tuple[np.ndarray | None, str]:
    """The scores of the good photos from the line (calibration_scores.json, written by
    `threshold --good-images FOLDER`) when they are this model.pt's, and "" ; else None and
    why they are not shown, with the command that scores them again (None, "" when there are
    none). The file records the model.pt that scored them; one from before it did is this
    model's only while threshold.json is the one set on them (the same images' hash) and
    records this model.pt as the one it was chosen for (`anomaly.threshold_file.model_record`),
    not carried over from an earlier model (training resumed: `threshold_file.carried`)."""

    from anomaly import threshold_file as tf
    from anomaly.safe_files import finite, load_record

    if not rd.file(rd.CALIBRATION).is_file():
        return None, ""
    kept = rd.calibration()
    try:
        saved = load_record(rd.file(rd.THRESHOLD))
    except (OSError, ValueError):  # none, or not JSON
        saved = None
    saved = saved if isinstance(saved, dict) else {}
    params = saved.get("params") if isinstance(saved.get("params"), dict) else {}
    record = params.get("calibration") if isinstance(params.get("calibration"), dict) else {}
    sha = tf.model_sha256(rd.file(rd.MODEL))
    if isinstance(kept.get(tf.MODEL_RECORD), str):  # the model that scored them, recorded
        ours = sha is not None and kept[tf.MODEL_RECORD] == sha
        earlier = not ours
    else:  # from before: this model's while the threshold set on them is kept for it
        replaced = saved.get(tf.REPLACED_RECORD)
        earlier = replaced not in (None, sha) or (
            params.get("earlier_model") is True and not replaced
        )
        ours = (
            sha is not None
            and saved.get(tf.MODEL_RECORD) == sha
            and not earlier
            and record.get("source") == "folder"
            and record.get("images_sha256") == kept.get("images_sha256")
        )
    if ours:
        return np.asarray(kept["scores"], np.float64), ""
    folder = kept.get("folder_resolved") or kept.get("folder") or "FOLDER"
    if finite(params.get("alpha")) and saved.get("rule") == "conformal":
        rule = f"conformal --value {params['alpha']:g}"
    elif finite(params.get("q")) and saved.get("rule") in ("normal_quantile", "normal-quantile"):
        rule = f"normal-quantile --value {params['q']:g}"
    else:
        rule = "conformal --value ALPHA"
    when = (
        "of another model than this model.pt (the run was trained again or further since)"
        if earlier
        else "not recorded as this model's (the threshold set on them has been replaced)"
    )
    return None, shown(
        f"good photos from the line: not shown, their scores ({rd.CALIBRATION}) are {when}; "
        f"score them with this model: python -m anomaly threshold --run {shell_word(rd.path)} --rule {rule} "
        f"--good-images {shell_word(folder)}"
    )


def synthetic_vs_real(run: Path) -> str:
    """The chosen candidate's image AUROC on auto's synthetic defects beside the run's on the
    real labelled defects: a gap means the synthetic defects are easier than yours."""
    chosen = selection(run)
    real = RunDir(run).metrics().get("image_auroc")
    real_text = f"{real:.3f}" if real is not None else "n/a"
    try:
        row = chosen["candidates"][chosen["chosen_index"]]
        return (
            f"auto chose {chosen['chosen']}: image AUROC {row['image_auroc']:.3f} on its "
            f"synthetic defects, {real_text} on the real labelled test defects"
        )
    except (KeyError, TypeError, IndexError, ValueError):  # none, or not auto's (a shared run)
        return _no_selection(run, chosen)
