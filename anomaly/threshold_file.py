"""What a saved threshold and the held-out scores it is set on may hold, and which model a
saved threshold was chosen for.

A run folder from someone else is untrusted input: its threshold decides PASS or REJECT, and
its fields are printed and plotted by predict, the explorer and the notebooks. `check_threshold`
checks every field a writer saves (`anomaly.metrics.Threshold.from_json` calls it);
`check_held_out` the held-out scores of val_scores.json; `check_model` that a threshold records
the SHA-256 of the run's model.pt (`anomaly.runs.RunDir.save_threshold` records it), so one
copied from another run is refused rather than used with its value and its guarantee.

This module imports only `anomaly.safe_files` (the metrics and run-folder modules import it).
"""

from __future__ import annotations

import math
from pathlib import Path

from anomaly.safe_files import finite, load_record, sha256_file
from anomaly.terminal import printable

MODEL_RECORD = "model_sha256"  # the key in a saved threshold: the model.pt it was chosen for
# a threshold carried to a new model.pt (training resumed) also records the one it replaces, as
# it is written first: a kill before the new model.pt is in place leaves it for the old one
REPLACED_RECORD = "model_sha256_replaced"
FIELDS = ("value", "rule", "params", MODEL_RECORD, REPLACED_RECORD)  # what a threshold.json holds
# a param `RunDir.threshold` sets (in memory) on one without that record beside a model.pt: from
# an older version, or the record deleted from a copy; no guarantee is claimed for it
UNRECORDED = "model_unrecorded"
# one it sets on a conformal threshold whose value, n or rank are not what its alpha gives on the
# scores it records having been set on (edited by hand, or mixed with another run's files): no
# guarantee is claimed for it either
UNSUPPORTED = "scores_disagree"
# the rules that save thresholds: anomaly.metrics' threshold_* functions, and the explorer
RULES = (
    "manual",
    "normal_quantile",
    "normal-quantile",
    "conformal",
    "f1",
    "cost-optimal",
    "explorer",
)


_COUNT = (lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= 0, "a count >= 0")
_RATE = (lambda x: finite(x) and 0 <= x <= 1, "a number from 0 to 1")
_COST = (lambda x: finite(x) and x >= 0, "a number >= 0")
_TEXT = (lambda x: isinstance(x, str), "a string")
# printed to a terminal: no control characters (an escape sequence could clear the screen)
_WORDS = (  # 5,000: a guarantee's words and a folder's path (4,096 bytes at most); no control
    # character (a no-break or zero-width space in a folder's name is text like any other)
    lambda x: isinstance(x, str) and len(x) <= 5000 and printable(x) == x,
    "printable text of at most 5000 characters",
)
_FLAG = (lambda x: isinstance(x, bool), "true or false")
CALIBRATION = {
    "source": (lambda x: x in ("held-out", "folder"), '"held-out" or "folder"'),
    "n": _COUNT,
    "copies": _COUNT,  # good images not counted in n: copies of one of them
    **dict.fromkeys(("folder", "folder_resolved"), _WORDS),
    "images_sha256": _TEXT,
    # the folder's scores themselves: the threshold holds what its guarantee rests on,
    # whatever happens to calibration_scores.json beside it (older ones: that file alone)
    "scores": (
        lambda x: isinstance(x, list) and len(x) > 0 and all(finite(v) for v in x),
        "a non-empty list of finite numbers",
    ),
}
# each param a writer saves: a test it must pass, and the words for what it must be
PARAMS = {
    "alpha": (lambda x: finite(x) and 0 < x < 1, "a number between 0 and 1"),
    "pixel_threshold": (
        lambda x: x is None or (finite(x) and abs(x) <= 1e30),  # float32 maps: 1e30 at most
        "a finite number (at most 1e30 in size)",
    ),
    "calibration": (lambda x: isinstance(x, dict), "an object (where the good images came from)"),
    **dict.fromkeys(("q", "f1", "precision", "recall", "false_reject_rate", "escape_rate"), _RATE),
    **dict.fromkeys(("n", "n_normal", "n_images", "rank", "tp", "fp", "tn", "fn"), _COUNT),
    **dict.fromkeys(("cost_false_reject", "cost_escape"), _COST),
    **dict.fromkeys(("guarantee", "set_by", "method"), _WORDS),
    **dict.fromkeys(
        ("earlier_model", "in_sample", "on_training_images", UNRECORDED, UNSUPPORTED), _FLAG
    ),
}


def _check_fields(obj: dict, kinds: dict, where: str) -> None:
    for name, (ok, words) in kinds.items():
        if name in obj and not ok(obj[name]):
            raise ValueError(f"{where}{name} is {str(obj[name])[:60]!r}, not {words}")


class NewerRule(ValueError):
    """A saved threshold whose rule reads as a rule's name this version does not know: another
    version's, so its readers do not advise setting one over it."""


_SAID_UNKNOWN: set[tuple[str, tuple[str, ...]]] = set()  # (file, fields) warned of, once each


def check_threshold(d, where: str = "a saved threshold") -> tuple[float, str, dict]:
    """(value, rule, params) of a saved threshold's JSON object, or ValueError (TypeError for
    something not an object) saying which field is wrong: the value must be a finite number
    (NaN or inf would pass or reject every part), the rule one of `RULES`, and each param that
    `PARAMS` knows of what its writer saves; other params are kept as they are."""
    if not isinstance(d, dict):
        raise TypeError("it is not a JSON object")
    unknown = tuple(sorted(str(k)[:40] for k in d if k not in FIELDS))  # a newer version's?
    if unknown and (where, unknown) not in _SAID_UNKNOWN:
        import warnings

        _SAID_UNKNOWN.add((where, unknown))
        warnings.warn(
            f"{printable(where)} holds fields this version of anomaly does not know "
            f"({', '.join(map(repr, unknown[:5]))}), ignored: written by another version? "
            "Check what it decides before relying on it",
            stacklevel=3,
        )
    if not finite(d.get("value")):
        raise ValueError(f"its value is {str(d.get('value'))[:60]!r}, not a finite number")
    rule, params = d.get("rule", "manual"), d.get("params", {})
    if rule not in RULES:  # a rule's name: a newer version's, its threshold not replaced unseen
        newer = isinstance(rule, str) and rule.isascii() and rule.replace("-", "_").isidentifier()
        raise (NewerRule if newer else ValueError)(
            f"its rule is {str(rule)[:60]!r}, not one of {', '.join(RULES)}"
            + ": a rule of a newer version of anomaly? Read it with the version that saved it "
            "before replacing it" * newer
        )
    if not isinstance(params, dict):
        raise TypeError("its params are not an object")
    _check_fields(params, PARAMS, "params.")
    record = params.get("calibration", {})
    _check_fields(record, CALIBRATION, "params.calibration.")
    if record.get("source") == "folder" and not {"folder", "images_sha256"} <= set(record):
        raise ValueError("params.calibration names no folder and images_sha256")
    return float(d["value"]), rule, params


def check_held_out(d, model: Path | None = None) -> dict:
    """`d` (val_scores.json) when its scores are a non-empty list of finite numbers, one for
    each of its paths (if it has them, as text), scored by the file `model` (when given and
    `d` records one); else ValueError."""
    scores = d.get("scores") if isinstance(d, dict) else None
    paths = d.get("paths", scores) if isinstance(d, dict) else None
    if not (isinstance(scores, list) and all(finite(s) for s in scores)):
        raise ValueError("does not hold held-out scores (a list of finite numbers, 'scores')")
    if not isinstance(paths, list) or len(paths) != len(scores):
        raise ValueError("does not hold one score for each of its 'paths'")
    if "paths" in d and not all(isinstance(p, str) for p in paths):
        raise ValueError("does not hold its held-out images' 'paths' as text")
    if not scores:
        raise ValueError("holds no held-out scores: the run held out no good image")
    if model is not None:
        check_model(d, model, "were scored by")
    return d


_DIGESTS: dict[tuple, str] = {}  # by path, inode, size and time: a model is hashed once


def model_sha256(model: Path) -> str | None:
    """The SHA-256 of the file `model` (None when there is none)."""
    if not model.is_file():
        return None
    st = model.stat()
    key = (str(model.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(model)
    return _DIGESTS[key]


def check_model(d: dict, model: Path, made: str = "was set for") -> None:
    """ValueError when the saved threshold `d` (or held-out scores, predictions: `made` says
    how they came from it) records another model than the file `model` (one without the
    record, from an older version, or a run without a model, pass)."""
    made_for = d.get(MODEL_RECORD) if isinstance(d, dict) else None
    sha = model_sha256(model)
    if made_for is not None and sha is not None and sha not in _records(d):
        what = "its value and any guarantee say" if made == "was set for" else "they say"
        raise ValueError(
            f"{made} another model (it records {model.name} SHA-256 {str(made_for)[:12]}; "
            f"this run's is {sha[:12]}): copied from another run, {what} nothing about this "
            "model's scores"
        )


def model_record(model: Path) -> dict:
    """{MODEL_RECORD: the SHA-256 of the file `model`}, or {} when there is none: what a run's
    held-out scores, predictions and calibration_scores.json record of the model that made
    them."""
    sha = model_sha256(model)
    return {MODEL_RECORD: sha} if sha else {}


def check_page_model(model: Path, recorded: str | None, folder) -> None:
    """ValueError unless the file `model` is the one whose SHA-256 a page's scores record
    (`recorded`; None: not recorded, not checked): a run folder moved or deleted since the page
    read it (a save there would make a new folder holding a threshold alone), or trained again
    (a threshold and rates chosen on the earlier model's scores, saved under the new one's)."""
    if not recorded or (not model.is_file() and Path(folder).is_dir()):
        return  # (a run without its model.pt: refused by name where it is written)
    if not model.is_file():
        raise ValueError(
            f"{printable(str(folder))} holds no {model.name} now: the run was moved, renamed or "
            "deleted since this page read it; open the explorer on it where it is now"
        )
    if model_sha256(model) != recorded:
        raise ValueError(
            f"{printable(str(folder))} was trained again since this page read its scores (its "
            f"{model.name} is another): the rates shown are the earlier model's; score the run "
            "and open the explorer again"
        )


def saved_for(threshold: Path, model: Path) -> dict | None:
    """The saved threshold in the file `threshold` when it records the file `model`, else None."""
    try:
        d = load_record(threshold)
        made_for = d.get(MODEL_RECORD)
    except (OSError, ValueError, AttributeError):  # none, not JSON, not an object
        return None
    sha = model_sha256(model)  # None without model.pt: no record is for it
    return d if made_for and sha and sha in _records(d) else None


def _records(d: dict) -> tuple:
    """The model.pt digests a saved record is for: its own, and the one it replaced (carried)."""
    return (d.get(MODEL_RECORD), d.get(REPLACED_RECORD))


def recorded(d: dict, model: Path) -> dict:
    """The saved threshold `d` recording the SHA-256 of the file `model` (when there is one).
    One `RunDir.threshold` marked `UNRECORDED` loses its guarantee first (as `carried`): it was
    not known to be chosen for this model, and recording it must not make it so."""
    params = d.get("params")
    if isinstance(params, dict) and (
        params.pop(UNRECORDED, False) | params.pop(UNSUPPORTED, False)
    ):
        drop_guarantee(params)
    sha = model_sha256(model)
    return {**d, MODEL_RECORD: sha} if sha else d


def carried(d: dict, new_sha: str, replaced: Path) -> dict:
    """The saved threshold `d` of the model `replaced`, recorded for the model of SHA-256
    `new_sha` that replaces it (training resumed) and still for `replaced` (it is written before
    the new model.pt), less its guarantee (`drop_guarantee`)."""
    drop_guarantee(d.get("params"))
    kept = recorded(d, replaced)
    return {**kept, MODEL_RECORD: new_sha, REPLACED_RECORD: kept.get(MODEL_RECORD)}


def drop_guarantee(params) -> bool:
    """Take the guarantee out of the params of a threshold kept for a new model (it was about
    the earlier model's scores), in place, and mark "earlier_model" (predict and the explorer
    then say it no longer holds); whether there was one. The one rule for every kept threshold:
    `carried` for one that records its model, `anomaly.pipeline` after train --resume for one
    from before that record."""
    if isinstance(params, dict) and params.pop("guarantee", None):
        params["earlier_model"] = True
        return True
    return False


def lost_guarantee(rule: str, params: dict) -> str | None:
    """Why a conformal threshold claims no guarantee it was set with, in words for the explorer
    and the notebooks: chosen on an earlier model of the run, not recorded as chosen for this
    one (`UNRECORDED`), or its numbers not given by its scores (`UNSUPPORTED`); None otherwise.
    A normal-quantile one guarantees nothing, but can say that its value is not its quantile."""
    if rule == "normal_quantile" and params.get(UNSUPPORTED):
        return "its value is not the quantile q it records of the scores it was set on"
    if rule != "conformal":
        return None
    if params.get("earlier_model"):
        return "chosen on an earlier model of this run"
    if params.get(UNRECORDED):
        return "the model it was chosen for is not recorded"
    if params.get(UNSUPPORTED):
        return "its value, n or rank are not what its alpha gives on the scores it was set on"
    return None


def guarantee_words(rule: str, params: dict) -> str | None:
    """What a saved threshold guarantees, in words, or None: only the conformal rule guarantees
    anything, and only its alpha says how much. The file's own words (`params["guarantee"]`,
    which name the folder a guarantee set on a folder rests on) are shown only when they state
    that alpha; otherwise the words are made from alpha and n. A threshold.json may be someone
    else's: it cannot print a guarantee its numbers do not give. None, too, for one chosen on an
    earlier model of the run ("earlier_model") or not recorded as chosen for its model
    (`UNRECORDED`): the guarantee was about another model's scores, or may have been."""
    alpha, n = params.get("alpha"), params.get("n")
    if rule != "conformal" or not (finite(alpha) and 0 < alpha < 1):
        return None
    if any(params.get(flag) is True for flag in ("earlier_model", UNRECORDED, UNSUPPORTED)):
        return None
    bound = f"false-reject rate <= {100 * alpha:.3g}% for new good parts "
    text = params.get("guarantee")
    if isinstance(text, str) and text.startswith(bound) and _WORDS[0](text):
        return text
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        return bound + f"exchangeable with the {n} good image{'s' * (n != 1)} it was set on"
    return bound + "exchangeable with the good images it was set on"


def conformal_rank(n: int, alpha: float) -> int:
    """The rank k (1-based) of the n sorted scores a conformal threshold sits just above:
    ceil((n + 1)(1 - alpha)) (`anomaly.metrics.threshold_conformal`)."""
    return math.ceil((n + 1) * (1 - alpha) - 1e-9)


def check_numbers(threshold, file, held_out: str, folder: str, carried: bool = False) -> None:
    """Mark `UNSUPPORTED` (in memory) a conformal threshold that claims a guarantee its recorded
    scores do not give: its value, n and rank must be what its alpha gives on the scores it was
    set on, the run's held-out ones (`file(held_out)`, val_scores.json) or those of the folder
    it records: the scores its record holds (held-out ones too where copies among them were
    counted once, `anomaly.calibration`), or for one from before records held them
    (`file(folder)`, calibration_scores.json; `file`: `RunDir.file`). Scores that cannot be
    read leave it as it is: there is nothing to check it against. A normal-quantile threshold
    (train's default) must be the quantile q it records of those scores (numpy's, to 1e-9): one
    edited to 1e300 passed every part, labelled as a quantile of good scores); not one `carried`
    to a resumed model, whose held-out scores are the new model's."""
    params = threshold.params
    q = params.get("q")
    quantile = threshold.rule == "normal_quantile" and finite(q) and 0 <= q <= 1
    quantile = quantile and not (carried or params.get("earlier_model") or params.get(UNRECORDED))
    if not quantile and (
        threshold.rule != "conformal" or not guarantee_words(threshold.rule, params)
    ):
        return
    record = params.get("calibration")
    on_folder = isinstance(record, dict) and record.get("source") == "folder"
    scores = record.get("scores") if isinstance(record, dict) else None  # held in the threshold
    if scores is None:
        try:
            scores = load_record(file(folder if on_folder else held_out))["scores"]
        except (OSError, ValueError, KeyError, TypeError):
            return
    if not (isinstance(scores, list) and len(scores) > 0 and all(finite(x) for x in scores)):
        return
    if quantile:
        given = normal_quantile([float(x) for x in scores], float(q))  # as train computed it
        if params.get("n_normal", len(scores)) != len(scores) or not _near(threshold.value, given):
            params[UNSUPPORTED] = True
        return
    n, alpha = len(scores), float(params["alpha"])
    k = conformal_rank(n, alpha)
    counts = params.get("n") == n and 1 <= k <= n and params.get("rank", k) == k
    kth = sorted(float(x) for x in scores)[min(max(k, 1), n) - 1]
    if not counts or threshold.value != math.nextafter(kth, math.inf):
        params[UNSUPPORTED] = True


def normal_quantile(scores, q: float) -> float:
    """The normal-quantile rule's threshold (`metrics.threshold_normal_quantile`): the next
    float above numpy's q-quantile of `scores`, so that a score equal to it passes."""
    import numpy as np  # here: `threshold` on a run's files loads it only for this rule

    value = float(np.quantile(np.asarray(scores, np.float64), q))
    return float(np.nextafter(value, np.inf)) if np.isfinite(value) else value


def _near(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


FEW_DEFECTS = 10  # below this many labelled defects an F1 threshold is one image's score


def f1_words(params: dict) -> str:
    """What an F1 threshold rests on: the test images that chose it also judge it."""
    n, k, f1 = params.get("n_images"), params.get("n_defective"), params.get("f1")
    line = (
        f"chosen on the run's scored test set ({n} images, {k} defective), where its F1 is "
        f"{f1:.3g}: the same images chose it, so results on them at this threshold are "
        "optimistic"
        if isinstance(f1, (int, float)) and k is not None
        else "chosen on the run's scored test set: results on it at this threshold are optimistic"
    )
    if isinstance(k, int) and k < FEW_DEFECTS:
        line += (
            f"\nWith {k} defective image(s) it rests on one image: it sits midway between the "
            "lowest-scored defect that F1 keeps and the next lower score, so a new defect "
            "scoring below that passes. Use more labelled defects, or --rule conformal on good "
            "images"
        )
    return line


def good_images_folder(record) -> str | None:
    """The `--good-images` folder a threshold's record names, as a command can give it from
    any working directory: resolved where it was (the folder as typed was relative to it)."""
    if not isinstance(record, dict):
        return None
    folder = record.get("folder_resolved")
    folder = folder if isinstance(folder, str) else record.get("folder")
    return folder if isinstance(folder, str) else None
