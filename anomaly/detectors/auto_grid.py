"""`auto`'s candidates and how it chooses among them (`anomaly.detectors.auto` runs the trials):
the named settings beyond each method's defaults, the config a candidate trains with, the rule
that picks the winner, and the selection record as text."""

from __future__ import annotations

from anomaly.config import Config

# EfficientNet-Lite0's stride-4 + 8 stages at 160 px: a finer grid, for thin defects
LITE0_160 = {
    "method": "patchknn",
    "backbone": "efficientnet_lite0",
    "layers": "blocks.2,blocks.4",
    "size": 160,
    "coreset_ratio": 0.01,
}
# twice the pixels, one stage deeper: the same 56 x 56 grid with cells of half the extent, for
# small defects; 1.9-4.4x the defaults' predict time (README's "Speed" and benchmark tables)
FINE_448 = {
    "method": "patchknn",
    "size": 448,
    "layers": "features.6,features.10",
    "feature_pad": 32,
    "score_border": 16,
    "smooth_sigma": 4.0,
}
TIE = 0.005  # image AUROCs this close count as a tie, broken by AUPRO
TIMINGS, ROW_TIMINGS = ("final_fit_s", "total_s"), ("fit_s", "score_s")  # not in model.pt
# Run fields a candidate inherits from the auto run (its images, seed and device).
INHERITED = (
    "data",
    "channels",
    "decode",
    "seed",
    "device",
    "batch_size",
    "val_fraction",
    "threshold_quantile",
)


def without_timings(selection: dict) -> dict:
    """`selection` without how long anything took: what model.pt holds, so that the same data
    and seed give the same file (`anomaly.selection` compares the records without them)."""
    rest = {k: v for k, v in selection.items() if k not in TIMINGS}
    if isinstance(rows := rest.get("candidates"), list):
        rest["candidates"] = [row_without_timings(r) for r in rows]
    return rest


def row_without_timings(row):
    """One candidate's row of the selection without its times (a row that is not a record as
    it is)."""
    if not isinstance(row, dict):
        return row
    return {k: v for k, v in row.items() if k not in ROW_TIMINGS}


def candidate_name(settings: dict) -> str:
    """A short label: the method, then its overrides (`patchknn score_topk=0.01`)."""
    rest = " ".join(f"{k}={v}" for k, v in settings.items() if k != "method")
    return f"{settings['method']} {rest}".strip()


def candidate_config(run: Config, settings: dict) -> Config:
    """The config a candidate trains with: its method's defaults, its overrides, and the run's
    data, channels, seed and device."""
    settings = dict(settings)
    method = settings.pop("method")
    inherited = {name: getattr(run, name) for name in INHERITED}
    return Config.for_method(method, **inherited).replace(**settings)


def _aupro(row: dict) -> float:
    return row["aupro"] if row["aupro"] is not None else -1.0


def choose(rows: list[dict], tie: float = TIE) -> int:
    """Index of the winning candidate row (see the module docstring); rows with an error lose.

    Among rows within `tie` of the best image AUROC: the highest AUPRO (to 3 decimals, so that
    candidates with the same maps are equal), then the highest image AUROC, then the first.

    Raises:
        RuntimeError: when no candidate could be scored.
    """
    scored = [i for i, r in enumerate(rows) if r.get("image_auroc") is not None]
    if not scored:
        errors = "; ".join(f"{r['name']}: {r.get('error')}" for r in rows)
        raise RuntimeError(f"auto: no candidate could be fitted and scored ({errors})")
    best = max(rows[i]["image_auroc"] for i in scored)
    tied = [i for i in scored if rows[i]["image_auroc"] >= best - tie]
    # max() keeps the first of equal keys, so the earlier candidate wins a full tie
    return max(tied, key=lambda i: (round(_aupro(rows[i]), 3), rows[i]["image_auroc"]))


def format_selection(selection: dict) -> str:
    """The choice and every candidate's scores, as lines for the CLI or a notebook."""
    lines = [
        (
            f"auto chose {selection['chosen']} ({selection['criterion']}; "
            f"{selection['held_out_normals']} held-out normals, "
            f"{selection['synthetic_defects']} synthetic defects)"
        )
    ]
    scored = selection["held_out_normals"] + selection["synthetic_defects"]
    for i, row in enumerate(selection["candidates"]):
        mark = "*" if i == selection["chosen_index"] else " "
        if row["error"]:
            lines.append(f" {mark} skipped: {row['error']}  {row['name']}")
        else:  # predict time: what the choice costs on every image later; the numbers first,
            fit, score = row.get("fit_s"), row.get("score_s")  # in columns (names vary in length)
            fit = "    -" if fit is None else f"{fit:5.1f}"  # None: model.pt's record alone
            ms = "   -" if score is None else f"{1000 * score / max(scored, 1):4.0f}"
            size = f"{row['size']:4d} px" if isinstance(row.get("size"), int) else "   - px"
            lines.append(
                f" {mark} image AUROC {row['image_auroc']:.4f}  AUPRO {row['aupro']:.4f}  "
                f"fit {fit} s  predict {ms} ms/image  {size}  {row['name']}"
            )
    return "\n".join(lines)
