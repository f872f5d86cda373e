"""The explorer's words: the confusion matrix as HTML, and what the current threshold's rule
means (which rule set it, and what, if anything, it guarantees)."""

from __future__ import annotations

import html
import os

from anomaly.metrics import Threshold
from anomaly.terminal import printable
from anomaly.threshold_file import guarantee_words, lost_guarantee
from anomaly.threshold_text import _interval

TD = "padding:3px 8px;text-align:right;border:1px solid #ccc"
TH = "padding:3px 8px;text-align:left;border:1px solid #ccc;background:#f5f5f5"
RATES = [
    ("precision", "precision"),
    ("recall (defective caught)", "recall"),
    ("F1", "f1"),
    ("false-reject rate", "false_reject_rate"),
    ("escape rate", "escape_rate"),
]


# the images each rate needs: "defective", "good", or both
NEEDS = {
    "precision": ("good", "defective"),
    "recall": ("defective",),
    "f1": ("good", "defective"),
    "false_reject_rate": ("good",),
    "escape_rate": ("defective",),
}


def lacking(counts: dict) -> str:
    """Which images the counts have none of ("defective", "good"), or "" when both are there
    (or the counts are not given: rates alone)."""
    if not {"tp", "fp", "tn", "fn"} <= set(counts):
        return ""
    if counts["tp"] + counts["fn"] == 0:
        return "defective"
    return "good" if counts["fp"] + counts["tn"] == 0 else ""


def rate(counts: dict, key: str, fmt: str = ".3f", scale: float = 1.0) -> str:
    """A rate of the counts formatted, or "n/a" when its images are missing (the escape rate
    of a run with no defective image is not 0: it was not measured)."""
    if lacking(counts) in NEEDS[key]:
        return "n/a"
    return format(scale * counts[key], fmt)


def percent(counts: dict, key: str) -> str:
    """A rate as "12.3%", or "n/a" (`rate`)."""
    text = rate(counts, key, ".1f", 100)
    return text if text == "n/a" else text + "%"


def no_optimum(name: str, missing: str, costs: tuple[float, float] = (1.0, 1.0)) -> str:
    """Why run `name` has no cost optimum when its images have no `missing` ones ("" when
    nothing is missing): a threshold chosen without them would only look optimal. Nor is there
    one when both `costs` are 0: every threshold costs nothing, and the lowest would be offered
    as "optimal" while it rejects every part."""
    if not missing:
        if max(costs) <= 0:
            return (
                "both costs are 0, so every threshold costs nothing; enter what a false "
                "reject and an escape cost"
            )
        return ""
    cost = "escapes" if missing == "defective" else "false rejects"
    return (
        f"run {name!r} has no {missing} test image, so its {cost} cannot be counted and no "
        f"threshold is cost-optimal; score it on data with {missing} images"
    )


def unmeasured(missing: str) -> str:
    """HTML: what a threshold saved without any `missing` image leaves unknown, or ""."""
    if not missing:
        return ""
    what = "escape rate" if missing == "defective" else "false-reject rate"
    return (
        f"<span style='color:#c62828'> It was set without any {missing} image: its {what} is "
        "not known.</span>"
    )


def at_saved(saved: Threshold | None, threshold: float) -> bool:
    """True when `threshold` is the saved one (to float precision)."""
    return saved is not None and abs(threshold - saved.value) <= 1e-9 * max(1.0, abs(threshold))


def guarantee(saved: Threshold | None) -> str | None:
    """The false-reject bound a saved threshold guarantees (the conformal rule), or None (also
    for one chosen on an earlier model, or not recorded as chosen for this one:
    `anomaly.threshold_file.guarantee_words`). Made of a number only ("<= 5%"), so it goes
    into HTML as it is: "<" before a space or "=" opens no tag."""
    if saved is None or not guarantee_words(saved.rule, saved.params or {}):
        return None
    return f"<= {100 * float(saved.params['alpha']):.3g}%"


def format_confusion_html(
    counts: dict, saved: Threshold | None = None, threshold: float | None = None
) -> str:
    """The confusion matrix and its rates as a small HTML table (class "anomaly-confusion").

    When the current threshold is a saved conformal one, the guaranteed false-reject bound is
    shown beside the rate measured on these images. Rates that need images of a class the
    counts have none of read "n/a", with a line saying why.
    """
    tp, fp, tn, fn = (counts[k] for k in ("tp", "fp", "tn", "fn"))
    bad, ok = TD + ";background:#fde0dc", TD + ";background:#e6f4ea"
    rows = [
        (
            f"<tr><th style='{TH}'>threshold {float(counts['threshold'])!r}</th>"
            f"<th style='{TH}'>PASS</th><th style='{TH}'>REJECT</th></tr>"
        ),
        (
            f"<tr><th style='{TH}'>good ({fp + tn})</th>"
            f"<td class='tn' style='{ok}'>{tn} passed</td>"
            f"<td class='fp' style='{bad}'>{fp} false rejects</td></tr>"
        ),
        (
            f"<tr><th style='{TH}'>defective ({tp + fn})</th>"
            f"<td class='fn' style='{bad}'>{fn} escapes</td>"
            f"<td class='tp' style='{ok}'>{tp} caught</td></tr>"
        ),
    ]
    bound = guarantee(saved) if threshold is not None and at_saved(saved, threshold) else None
    cells = []
    counted = {"false_reject_rate": (fp, fp + tn), "escape_rate": (fn, fn + tp)}
    for name, key in RATES:
        extra = ""
        if key in counted and rate(counts, key) != "n/a":  # what so few images say of new parts
            words = _interval(*counted[key]).strip(" ()")  # (threshold's words: rounded outwards)
            extra = f"<td class='interval' style='{TD};color:#666'>{words}</td>"
        if key == "false_reject_rate" and bound:
            extra += (
                f"<td class='guarantee' style='{TD};color:#1565c0'>guaranteed {bound} "
                "on new good parts</td>"
            )
        cells.append(
            f"<tr><th style='{TH}'>{name}</th>"
            f"<td class='{key}' style='{TD}'>{rate(counts, key)}</td>{extra}</tr>"
        )
    table = "border-collapse:collapse;font-size:13px"
    return (
        f"<div class='anomaly-confusion'><table style='{table}'>{''.join(rows)}</table>"
        f"<table class='anomaly-rates' style='{table};margin-top:6px'>{''.join(cells)}"
        f"</table>{lacking_note(counts)}</div>"
    )


def lacking_note(counts: dict) -> str:
    """One line on why some rates read n/a (HTML), or ""."""
    missing = lacking(counts)
    if not missing:
        return ""
    return (
        f"<div class='anomaly-na' style='font-size:12px;color:#c62828;max-width:420px'>"
        f"No {missing} image among these test images: the rates that need them are n/a (not "
        "measured), and there is no cost optimum. Score the run on data with both good and "
        "defective images to measure them.</div>"
    )


def _source(saved: Threshold) -> str:
    """The good images a threshold's rule was set on, in a few words: plain text, not HTML (the
    folder is threshold.json's, which may be someone else's: escape it where it goes into HTML)."""
    record = (saved.params or {}).get("calibration") or {}
    if record.get("source") == "folder":  # threshold --good-images FOLDER
        return f"good images in {record.get('folder', '?')}"
    if (saved.params or {}).get("on_training_images") is True:  # train, with none held out
        return "training images (none held out)"
    return "held-out good images"


def describe_rule(saved: Threshold) -> str:
    """One phrase for how a saved threshold was chosen, e.g. "normal-quantile (q = 0.99 of 20
    held-out good images)"."""
    p = saved.params or {}
    where = _source(saved)
    if saved.rule == "conformal":
        return f"conformal (alpha = {float(p.get('alpha', 0)):.3g}, {p.get('n', '?')} {where})"
    if saved.rule in ("normal_quantile", "normal-quantile"):
        return f"normal-quantile (q = {p.get('q', '?')} of {p.get('n_normal', '?')} {where})"
    if saved.rule == "f1":
        return "F1-optimal on the labelled test images (in-sample)"
    if saved.rule in ("cost-optimal", "explorer"):
        data = p.get("chosen_on_data")  # `score --data`'s images: not the run's own
        ok = isinstance(data, str) and 0 < len(data) <= 1000 and data.isprintable()
        images = f"the test images of {data}" if ok else "the test images"
        return f"{saved.rule}, chosen in the explorer on {images} (in-sample)"
    return saved.rule


def _set_on_these(saved: Threshold, paths) -> int:
    """How many of these images lie in the folder the saved rule was set on (--good-images)."""
    record = (saved.params or {}).get("calibration") or {}
    folder = record.get("folder_resolved") if record.get("source") == "folder" else None
    if not isinstance(folder, str) or not folder:
        return 0
    folder = os.path.abspath(folder)  # saved printable: compared so (a name not UTF-8)
    return sum(printable(os.path.dirname(os.path.abspath(str(p)))) == folder for p in paths)


def rule_html(
    saved: Threshold | None, threshold: float, counts: dict, optimum: float | None, paths=()
) -> str:
    """Which rule set the current threshold and what it guarantees (`optimum` None: there is
    no cost optimum, the images lack a class; `paths`: these images' files), as HTML. Every
    word from the run's files (the rule's description, its folder) is escaped here, once: a
    threshold.json from someone else must not put markup or script into the page."""
    frr = percent(counts, "false_reject_rate")
    if at_saved(saved, threshold):
        text = f"Threshold set by the saved rule <b>{html.escape(describe_rule(saved))}</b>. "
        bound = guarantee(saved)
        if bound:
            text += (
                f"It guarantees a false-reject rate {bound} on new good parts "
                "from the same process (if they are exchangeable with the "
                f"{html.escape(_source(saved))}); measured on these test images: {frr}."
            )
            if n_in := _set_on_these(saved, paths):
                text += (
                    f" It was set on {n_in} of these images themselves, so that rate is not an "
                    "independent check: set it on good images outside the test set."
                )
        else:
            why = lost_guarantee(saved.rule, saved.params or {})
            why = f" ({html.escape(why)}: choose it again)" if why else ""
            text += (
                f"It guarantees nothing{why}; measured false-reject rate on these images: {frr}."
            )
    else:
        how = (
            "is <b>the cost optimum</b> of"
            if optimum is not None and abs(threshold - optimum) <= 1e-12 * max(1, abs(threshold))
            else "was <b>set by hand</b> on"
        )
        text = (
            f"This threshold {how} these images (in-sample: no guarantee for new "
            f"parts; false-reject rate here {frr})."
        )
        if saved is not None:
            text += (
                f" The saved threshold is {saved.value:.4g} ({html.escape(describe_rule(saved))})."
            )
    return f"<div style='font-size:12px;line-height:1.4;max-width:520px;color:#333'>{text}</div>"


def cost_html(cost: float, n: int, no_optimum: str, optimum=None, cv=None) -> str:
    """The cost at the current threshold over `n` images, and the cost optimum (threshold,
    cost) with its 2-fold cross-validated check `cv`; or why there is no optimum (`no_optimum`,
    when not "")."""
    text = f"Cost at this threshold: <b>{cost:.4g}</b> ({cost / n:.3g} per part). "
    if no_optimum:
        text += (
            "<span class='anomaly-no-optimum' style='color:#c62828'>No cost optimum: "
            f"{html.escape(no_optimum)}.</span>"
        )
    else:
        t_opt, cost_opt = optimum
        text += (
            f"Cost optimum: <b>{cost_opt:.4g}</b> at threshold <b>{t_opt:.4g}</b> "
            f"<i>in-sample</i>: chosen and counted on the same {n} images, so it flatters "
            f"itself.<br>{cv_words(cv, lambda c: f'<b class=anomaly-cv-cost>{c}</b>')}"
        )
    return f"<div style='font-size:13px;line-height:1.4'>{text}</div>"


def cv_words(cv: dict | None, mark=str) -> str:
    """The cross-validated check of the cost optimum in one sentence, its cost written by
    `mark` (HTML bold, say): chosen on one half of the images, counted on the other, over
    `cv["repeats"]` shuffles. Numbers and plain words only, so the sentence is also HTML."""
    if cv is None:
        return (
            "Too few good or defective images to check it on images it was not chosen on "
            "(each half needs both)."
        )
    costs = cv.get("costs") or [cv["cost"]]
    cost = mark(f"{cv['cost']:.4g}")
    rates = (
        f"false-reject rate {100 * cv['false_reject_rate']:.1f}%, escape rate "
        f"{100 * cv['escape_rate']:.1f}%"
    )
    if len(costs) == 1:
        return (
            "Chosen on one half of the images and counted on the other (2-fold "
            f"cross-validation, both halves added): cost {cost}, {rates}."
        )
    return (
        "Chosen on one half of the images and counted on the other (2-fold cross-validation, "
        f"both halves added), over {len(costs)} random halvings: median cost {cost} "
        f"({rates}), from {costs[0]:.4g} to {costs[-1]:.4g} "
        "depending on the halving."
    )
