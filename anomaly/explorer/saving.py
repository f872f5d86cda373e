"""Saving a threshold chosen in the explorer: what it records of how it was chosen
(`chosen_threshold`), the refusal to replace one another command or page saved since the page
read it (`check_unchanged`), and the write into the run (`write_threshold`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from anomaly.explorer.runs import other_data, read_threshold, threshold_home, threshold_path
from anomaly.metrics import Threshold
from anomaly.runs import RunDir

if TYPE_CHECKING:
    from anomaly.explorer.runs import RunView


def chosen_threshold(r: RunView, t: float, rule: str, costs, pixel: float, counts: dict):
    """The threshold `t` chosen in the explorer on run `r` (`rule`: "explorer" or
    "cost-optimal"), with what it was chosen on and what it does there in its params."""
    from anomaly.explorer.text import NEEDS

    params = {
        "cost_false_reject": costs[0],
        "cost_escape": costs[1],
        "pixel_threshold": pixel,
        "method": r.pred.method,
        "n_images": len(r.pred),
        "in_sample": True,  # counted on the images it was chosen on
        **{k: counts[k] for k in ("tp", "fp", "tn", "fn")},
        # a rate whose images are missing was not measured: left out, not saved as 0
        **{k: counts[k] for k in NEEDS if r.missing not in NEEDS[k]},
    }
    if data := other_data(r.pred, r.folder):  # another data set's images, not the run's
        params["chosen_on_data"] = data
    return Threshold(t, rule, params)


class ThresholdChanged(ValueError):
    """The folder's saved threshold is not the one a page read (`check_unchanged`)."""

    def __init__(self, message: str, now: Threshold | None) -> None:
        super().__init__(message)
        self.now = now


def check_unchanged(folder: Path, shown: Threshold | None) -> None:
    """ThresholdChanged (with the threshold saved now) unless the folder still holds `shown`,
    the threshold a page read or saved: another command or page saved one since, which a save
    would replace unseen."""
    now = read_threshold(folder)
    if (now is None) == (shown is None) and (
        now is None or (now.value, now.rule) == (shown.value, shown.rule)
    ):
        return
    holds = "none" if now is None else f"{now.value:.6g} ({now.rule})"
    raise ThresholdChanged(
        f"{threshold_path(folder)} changed since this page read it: it holds {holds} now, "
        "saved by another command or page. It is shown now; save again to replace it",
        now,
    )


_UNSEEN = object()  # write_threshold's `shown` when the caller read no threshold to compare


def write_threshold(folder: Path, threshold: Threshold, shown=_UNSEEN) -> tuple[Path, str]:
    """Save `threshold` as `folder`'s (its run's: `threshold_home`); in a run, under its lock
    and only while it still holds `shown` (`check_unchanged`; a page's), so that of two pages
    saving at once the second is refused, not both told "saved" with one value lost. Returns
    its path, and words naming score's overlays of the earlier threshold it removed, or ""
    (`RunDir.replace_threshold`)."""
    home = threshold_home(folder)
    if not RunDir(home).is_run():
        if isinstance(run := RunDir(home).scored_meta().get("run"), str):  # score --out's
            raise ValueError(
                f"{home}'s scores were made by the run {run!r}, not found from here with the "
                "model that made them (moved, trained again, or named relative to another "
                "folder), so a threshold saved here would not be the one predict uses. Open the "
                "explorer on that run, or score it again with --out"
            )
        home.mkdir(parents=True, exist_ok=True)
        return RunDir(home).save_threshold(threshold), ""
    with RunDir(home).lock("explore"):
        if shown is not _UNSEEN:
            check_unchanged(folder, shown)
        RunDir(home).require_model("explore").drop_stale_calibration()
        method, chosen_by = RunDir(home).config().method, threshold.params.get("method")
        if chosen_by and chosen_by != method:  # Predictions of another model (run_dirs=)
            raise ValueError(
                f"this threshold was chosen on the scores of a {chosen_by} model, and {home} "
                f"is a {method} run: its scores are on another scale, so it would mean nothing "
                "there. Pass that run's own Predictions with run_dirs="
            )
        return RunDir(home).replace_threshold(threshold)
