"""What `threshold` and `predict` say of a run's threshold: its value, the rule that set it
and what it guarantees (`threshold_words`), and what it does on the run's held-out good images
and on its scored test set. Read with numpy alone: `threshold` on held-out scores imports no
torch. `run` is a `RunDir` (only its files are read here).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from anomaly.terminal import printable, shell_word
from anomaly.threshold_file import f1_words, good_images_folder, guarantee_words

if TYPE_CHECKING:
    from anomaly.metrics import Threshold


def held_out_words(run, value: float) -> str:
    """How many of the run's held-out good images the threshold rejects: a manual value far off
    (every part rejected, or none ever) shows at once."""
    try:
        got = run.val_scores()
        held = [float(x) for x in got["scores"]]
    except (ValueError, KeyError, TypeError) as err:  # none to count, or not of this model.pt
        why = f" ({str(err)[:300]})" if run.file(run.VAL_SCORES).is_file() else ""
        return f"the run has no held-out scores of its model.pt to count against{why}"
    rejected = sum(x >= value for x in held)
    try:  # --val-fraction 0: the stored scores are of training images (`calibration.good_scores`)
        trained = set((run.split() or {}).get("train", []))
    except (ValueError, KeyError, TypeError, AttributeError):
        trained = set()
    if trained & {str(p) for p in got.get("paths", [])}:
        return (
            f"it rejects {rejected} of the run's {len(held)} good training "
            f"image{'s' * (len(held) != 1)} (it held out none: new good parts score higher)"
        )
    plural = "s" * (len(held) != 1)
    return f"it rejects {rejected} of the run's {len(held)} held-out good image{plural}"


def test_set_words(run, t) -> str | None:
    """What the threshold does on the run's scored test set, when it has one: good images
    rejected and defective ones caught, then `decision.guarantee_broken` (read with numpy
    alone: `threshold` on held-out scores imports no torch). A predictions.npz that cannot be
    used (damaged, not a file, NaN scores: an untrusted run) is said instead, with the fix."""
    import numpy as np

    from anomaly.decision import guarantee_broken
    from anomaly.safe_files import parse_record
    from anomaly.threshold_file import check_model

    path = run.file(run.PREDICTIONS)
    if not path.exists() and not path.is_symlink():
        return None  # not scored
    try:
        if not path.is_file():  # a pipe would never end
            raise ValueError("not a regular file")
        with np.load(path, allow_pickle=False) as z:
            labels, scores, meta = z["labels"], z["scores"], str(z["meta"])
        _check_scores(labels, scores)
        meta = parse_record(meta, "its meta")
    except Exception as err:  # noqa: BLE001  (BadZipFile, EOFError, ...: damaged or crafted)
        return (
            f"note: {path} cannot be used ({type(err).__name__}: {str(err)[:200]}), so what the "
            "threshold does on the test images is not shown; score the run again: python -m "
            f"anomaly score --run {shell_word(run.path)}"
        )
    try:
        check_model(meta, run.file(run.MODEL), "were made by")
    except ValueError:  # another model's: `score` says
        return None
    good, bad = scores[labels == 0], scores[labels > 0]
    rejected, caught = int((good >= t.value).sum()), int((bad >= t.value).sum())
    counts = (
        f"on the run's scored test images it rejects {rejected} of {good.size} good"
        f"{_interval(rejected, good.size)} and catches {caught} of {bad.size} defective"
        f"{_interval(caught, bad.size)}"
    )
    broken = guarantee_broken(labels, scores, t)
    return counts + (f"\n{broken}" if broken else "")


def _check_scores(labels, scores) -> None:
    """A ValueError unless `scores` and `labels` are one real, finite number per image."""
    import numpy as np

    if scores.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape}: not one per image")
    for name, array in (("scores", scores), ("labels", labels)):
        if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
            raise ValueError(f"its {name} are {array.dtype}, not real numbers")
    if bad := int(scores.size - np.count_nonzero(np.isfinite(scores))):
        raise ValueError(f"{bad} of its {scores.size} scores are NaN or infinite")


def _interval(k: int, n: int) -> str:
    """' (95 % interval of the rate 0.05-10.7 %)' (1 of 50): what k of n says of new parts' rate."""
    from anomaly.decision import rate_interval

    if n < 1:
        return ""
    lo, hi = (100 * x for x in rate_interval(k, n))
    return f" (95 % interval of the rate {_percent(lo, math.floor)}-{_percent(hi, math.ceil)} %)"


def _percent(x: float, rounding) -> str:
    """A percentage with 1 decimal from 10 % up, else 2, rounded outwards by `rounding` (floor
    for a lower bound, ceil for an upper one): the interval printed still covers the exact one."""
    digits = 1 if x >= 10 else 2
    return f"{min(rounding(x * 10**digits) / 10**digits, 100.0):.{digits}f}"


def threshold_words(t, run=None) -> str:
    """The threshold, the rule that set it and what it guarantees, in one line; where the
    guarantee is lost, the command that chooses it again (for `run`, else RUN)."""
    from anomaly.threshold_file import UNRECORDED, UNSUPPORTED, guarantee_words, lost_guarantee

    value = f"{t.value:.6g}"  # or every digit, where 6 would move it past a score
    words = f"threshold {value if float(value) == t.value else repr(float(t.value))} ({t.rule})"
    again = f"choose it again with `{choose_again(t, run)}`"
    if (t.params or {}).get("earlier_model"):
        return (
            f"{words}: chosen on an earlier model of this run, so its guarantee no longer "
            f"holds; {again}"
        )
    if (t.params or {}).get(UNRECORDED) and t.rule == "conformal":
        return (
            f"{words}: it does not record the model it was chosen for (saved by an older "
            f"version, or the record deleted), so no guarantee is claimed; {again}"
        )
    if (t.params or {}).get(UNSUPPORTED) and t.rule in ("conformal", "normal_quantile"):
        return (
            f"{words}: {lost_guarantee(t.rule, t.params)} (edited, or another run's files?), "
            f"so no guarantee is claimed; {again}"
        )
    if guarantee := guarantee_words(t.rule, t.params or {}):
        return f"{words}: guarantee: {guarantee}"
    if t.rule == "exported":  # a file from before exports named their rule (an upgrade)
        return (
            f"{words}: the file does not say which rule set it, so no guarantee is claimed; "
            "export the run again to carry its rule (python -m anomaly export --run "
            f"{shell_word(str(run)) if run is not None else 'RUN'})"
        )
    chosen_on = (t.params or {}).get("chosen_on_data")  # in the explorer, on another data set
    on = (
        f", chosen on the test images of {printable(chosen_on)}"
        if isinstance(chosen_on, str)
        else ""
    )
    if t.rule == "conformal":  # its params not recorded (an export from before they were)
        return f"{words}{on}: no record of its guarantee, so none is claimed"
    return f"{words}{on}: no guarantee on the false-reject rate (use --rule conformal for one)"


def choose_again(t, run=None) -> str:
    """The `threshold` command that sets `t`'s rule again with its value (a conformal alpha, a
    quantile, a manual value) on the same good images (a --good-images folder it records); a
    value saved by the explorer (its own rules, which --rule does not take) as a manual one."""

    params = t.params or {}
    rule = t.rule.replace("-", "_")  # "normal-quantile" as threshold_file.RULES also reads it
    rule = rule if rule in ("conformal", "normal_quantile", "f1") else "manual"  # explorer's
    value = {"conformal": params.get("alpha"), "normal_quantile": params.get("q")}.get(
        rule, t.value if rule == "manual" else None
    )
    flags = f" --rule {rule.replace('_', '-')}"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        flags += f" --value {float(value)!r}"  # every digit: the same threshold again
    record = params.get("calibration")
    folder = good_images_folder(record)
    if folder is not None and record.get("source") == "folder":
        flags += f" --good-images {shell_word(folder)}"
    where = shell_word(str(run)) if run is not None else "RUN"
    return f"python -m anomaly threshold --run {where}{flags}"


def calibration_words(threshold: Threshold, scores_file: str | Path | None = None) -> str:
    """Where the threshold's good-image scores came from and, for a guarantee, the condition
    it needs in one plain sentence ("" for a rule that reads no good-image scores)."""
    if threshold.rule == "f1":
        return f1_words(threshold.params or {})
    record = (threshold.params or {}).get("calibration")
    if not record:
        return ""
    n, copies = record.get("n", "?"), record.get("copies")
    once = f"{copies} cop{'y' if copies == 1 else 'ies'} of them not counted" * bool(
        isinstance(copies, int) and copies
    )
    if record.get("source") == "folder":
        kept = f"; scores in {scores_file}" if scores_file else ""
        line = (
            f"set on {n} good images in {record['folder']} ({once}{'; ' * bool(once)}sha256 of "
            "names and bytes "
            f"{record['images_sha256'][:12]}{kept})"
        )
        like = f"the images in {record['folder']}"
    else:
        line = f"set on the run's {n} good training images held out from training"
        line += f" ({once})" * bool(once)
        like = "those held-out images"
    if not guarantee_words(threshold.rule, threshold.params or {}):  # none claimed
        return line
    line += (
        f"\nThe guarantee holds only if the good parts you will check are like {like}: "
        "from the same process, photographed the same way, and not picked by how they look."
    )
    if record.get("source") != "folder":
        line += (
            "\nHeld-out images are often near-copies of training ones (frames of one part, one "
            "batch); if good parts are rejected too often, set it on other good images: "
            "--good-images FOLDER"
        )
    return line


def check_quantile(q: float) -> float:
    """`q` for `threshold --rule normal-quantile --value q`: a ValueError saying why unless it is
    from 0.5 to 1.0, as train's --threshold-quantile."""
    if not 0.5 <= q <= 1.0:
        why = (
            f"{q} would reject most of them"
            if q < 0.5
            else f"a quantile is at most 1; for the {q:g} % quantile, give {q / 100:g}"
            if 50 <= q <= 100
            else "a quantile is at most 1"
        )
        raise ValueError(
            f"--value {q}: the quantile must be from 0.5 to 1.0 (a quantile q of good scores "
            f"rejects about 1 - q of good parts: {why})"
        )
    return q
