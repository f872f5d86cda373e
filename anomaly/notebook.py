"""What the numbered notebooks call: one smoke switch, data and runs made on demand, and the
figure recipes that would otherwise grow into long notebook cells.

`settings()` reads the smoke switch from the environment (`ANOMALY_SMOKE`, set by `make test`):
smoke runs use the tiny cookie set at 64 px and one epoch; the default is the benchmark preset at
each method's default size and budget. Data and runs go under `home()`: $ANOMALY_HOME, or the
working folder (its parent for the repository's `notebooks/`), never next to the package.

The settings and the on-demand data and runs live in `anomaly.notebook_setup`, the benchmark
results and curves in `anomaly.notebook_benchmark`; this module re-exports both, so a notebook
imports one module (`from anomaly import notebook as nb`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from anomaly.config import Config
from anomaly.data.folder import load_image
from anomaly.data.image_kind import draft_size, read_rgb
from anomaly.notebook_benchmark import (
    CURVE_COMMANDS,
    benchmark_result,
    detectability_figure,
    photos_result,
    train_size_figure,
    train_size_rows,
    train_size_table,
)
from anomaly.notebook_data import (
    _per_kind,
    counts_table,
    defect_area_figure,
    intensity_figure,
    intensity_table,
    kinds_figure,
    normals_figure,
)
from anomaly.notebook_setup import (
    HOME_ENV,
    Settings,
    _named_runs,
    _positive,
    _subplots,
    ensure_cookies,
    ensure_run,
    home,
    light_figures,
    own_copy,
    settings,
    shown,
)
from anomaly.runs import RunDir, RunError
from anomaly.safe_files import finite
from anomaly.terminal import shell_word

__all__ = [  # this module's names and those it re-exports (notebook_setup, notebook_benchmark)
    "CURVE_COMMANDS",
    "HOME_ENV",
    "METRIC_KEYS",
    "Settings",
    "benchmark_result",
    "copy_through_table",
    "counts_table",
    "defect_area_figure",
    "detectability_figure",
    "ensure_cookies",
    "ensure_run",
    "evidence_figure",
    "explorer_methods",
    "histogram_figure",
    "home",
    "intensity_figure",
    "intensity_table",
    "kinds_figure",
    "l2_vs_ssim_figure",
    "light_figures",
    "metrics_table",
    "metrics_table_keys",
    "normals_figure",
    "overlays_figure",
    "own_copy",
    "photos_result",
    "reconstructions_figure",
    "roc_figure",
    "scores_table",
    "settings",
    "shown",
    "train_size_figure",
    "train_size_rows",
    "train_size_table",
]


def reconstructions_figure(runs: dict[str, Path], n: int = 4):
    """Inputs (first row) and each run's reconstruction of them: normal and defective images."""
    runs, n = _named_runs(runs), _positive("n", n)  # before any model loads
    detectors = {name: _reconstructing(run) for name, run in runs.items()}
    datasets = {name: _test_data(d.config) for name, d in detectors.items()}  # each its channels
    data = max(datasets.values(), key=lambda ds: ds.channels)  # show the inputs in colour if any
    picks = _one_per_kind(data, n)
    rows = {"input": torch.stack([data[i]["image"] for i in picks])}
    for name, d in detectors.items():
        images = torch.stack([datasets[name][i]["image"] for i in picks]).to(d.device)
        rows[name] = d.reconstruct(images).cpu()
    fig, axes = _subplots(
        len(rows), len(picks), figsize=(2.2 * len(picks), 2.2 * len(rows)), squeeze=False
    )
    for r, (name, batch) in enumerate(rows.items()):
        for c, img in enumerate(batch):
            axes[r, c].imshow(
                img.permute(1, 2, 0).squeeze(-1).clamp(0, 1), cmap="gray", vmin=0, vmax=1
            )
            axes[r, c].set_axis_off()
            axes[r, c].set_title(
                f"{name}: {data.defects[picks[c]]}" if r else data.defects[picks[c]], fontsize=8
            )
    fig.tight_layout()
    return fig


def overlays_figure(run: Path, kind: str = "red", per_kind: int = 1):
    """The run's difference maps on its defective test images, one colour scale for all:
    `kind` "red" (the original project's red overlay) or "heat" (a colour map)."""
    from anomaly.viz import dataset_range, heatmap_overlay, plot_gallery, red_overlay

    if kind not in ("red", "heat"):
        raise ValueError(f"kind={kind!r}: choose 'red' (the original's overlay) or 'heat'")
    pred, config = RunDir(run).predictions(), _home(run).config()
    vmin, vmax = dataset_range(pred.maps, labels=pred.labels)
    picks = _per_kind(pred.defects, per_kind)
    files = _scored_files(run, pred, picks)
    images = [load_image(f, config.size, config.channels, config.decode) for f in files]
    overlays = [
        red_overlay(img, pred.maps[i], vmax=vmax)
        if kind == "red"
        else heatmap_overlay(img, pred.maps[i], vmin, vmax, mask=pred.masks[i])
        for img, i in zip(images, picks)
    ]
    return plot_gallery(images, [pred.defects[i] for i in picks], overlays=overlays, ncols=4)


def l2_vs_ssim_figure(run: Path, per_kind: int = 1):
    """The same reconstructions scored two ways: L2 follows intensity, SSIM follows structure."""
    from anomaly.maps import anomaly_map

    det = _reconstructing(run)
    data = _test_data(det.config)
    picks = _one_per_kind(data, 4)
    images = torch.stack([data[i]["image"] for i in picks]).to(det.device)
    recon = det.reconstruct(images)
    maps = {
        k: anomaly_map(images, recon, kind=k, sigma=det.config.smooth_sigma).cpu()
        for k in ("l2", "ssim")
    }
    fig, axes = _subplots(3, len(picks), figsize=(2.2 * len(picks), 6.6), squeeze=False)
    for c, i in enumerate(picks):
        axes[0, c].imshow(data[i]["image"].permute(1, 2, 0).squeeze(-1), cmap="gray")
        axes[0, c].contour(data[i]["mask"].numpy(), levels=[0.5], colors="lime", linewidths=1)
        axes[0, c].set_title(data.defects[i], fontsize=9)
        for r, k in enumerate(("l2", "ssim"), start=1):
            axes[r, c].imshow(maps[k][c], cmap="jet", vmin=0, vmax=float(maps[k].max()))
            axes[r, c].set_title(f"{k} map (one scale per row)", fontsize=8)
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.tight_layout()
    for r in (1, 2):  # each row's scale: 0 to its largest value (the two are not comparable)
        fig.colorbar(axes[r, -1].images[0], ax=list(axes[r]), fraction=0.02, pad=0.01)
    return fig


def copy_through_table(runs: dict[str, Path]) -> str:
    """How much of a defect each network reproduces: reconstruction error inside the defect
    relative to the error on normal pixels of the same images. A ratio near 1 means the defect
    was copied through (a UNet's skip connections), a large one that it was removed."""
    from anomaly.maps import l2_map

    runs = _named_runs(runs)
    w = _name_width(runs)
    lines = [f"{'run':<{w}} {'error in defect':>16} {'error elsewhere':>16} {'ratio':>6}"]
    for name, run in runs.items():
        det = _reconstructing(run)
        data = _test_data(det.config)
        inside, outside = [], []
        for batch in det.loader(data):
            keep = batch["label"] == 1
            if not keep.any():
                continue
            images, masks = batch["image"][keep].to(det.device), batch["mask"][keep].bool()
            err = l2_map(images, det.reconstruct(images)).cpu()
            inside.append(err[masks])
            outside.append(err[~masks])
        if not inside:  # torch.cat([]) would fail deep inside torch
            raise RunError(
                f"{run}'s test images ({Path(det.config.data) / 'test'}) hold no defective image, "
                "so there is no defect to measure: score a data set with defective test images"
            )
        if not sum(len(t) for t in inside):  # masks all empty: the mean would be NaN
            raise RunError(
                f"{run}'s defective test images have no defect masks (ground_truth/ in "
                f"{det.config.data}), so the error inside a defect cannot be measured"
            )
        i, o = torch.cat(inside).mean().item(), torch.cat(outside).mean().item()
        lines.append(f"{name:<{w}} {i:>16.5f} {o:>16.5f} {i / o:>6.1f}")
    return "\n".join(lines)


def _reconstructing(run: Path):
    """The detector of `run`, which must reconstruct its images (an autoencoder, UNet, VAE or
    DRAEM run); RunError naming the run and its method otherwise."""
    from anomaly.pipeline import load_run

    method = RunDir(run).require().config().method
    det = load_run(run)
    if not callable(getattr(det, "reconstruct", None)):
        kind = f"{'an' if method[:1] in 'aeiou' else 'a'} {method} run"
        raise RunError(
            f"needs an ae, unet or vae run ({run} is {kind}, which does not reconstruct its "
            "images); train one with `python -m anomaly train --method ae ...`"
        )
    return det


def _scored_files(run: Path, pred, picks: list[int]) -> list[Path]:
    """The files of the scored images `picks` (pred.paths, read only from inside the run's data
    folder: `anomaly.explorer.runs.image_files`); RunError when one is not there, rather than
    drawing its map on another image (the data folder changed or moved since scoring)."""
    from anomaly.explorer.runs import image_files

    files, problem = image_files(pred, Path(run))
    lost = [pred.paths[i] for i in picks if files[i] is None]
    if lost:
        raise RunError(
            f"{run}: {problem} (e.g. {lost[0]}), so its maps cannot be drawn on their images. "
            f"If its data moved, score it there: `python -m anomaly score --run {shell_word(_home(run).path)} "
            f"--data NEW_FOLDER --out {shell_word(run)}`"
        )
    return [files[i] for i in picks]


def _home(folder) -> RunDir:
    """The run whose config, model and threshold a folder of scores goes with: the folder
    itself, or the run for `score --data`'s RUN/scored/<name>/ (which holds no threshold.json:
    `predict` and `score`'s overlays use the run's; `anomaly.explorer.runs.threshold_home`)."""
    from anomaly.explorer.runs import threshold_home

    return RunDir(threshold_home(Path(folder)))


def _score_again(folder, home: RunDir | None = None) -> str:
    """The command that scores a folder's images again: the run's own, or `--data` ones (of
    `home`, default the run the folder's threshold goes with)."""
    home = home or _home(folder)
    if home.path == RunDir(folder).path:
        return f"python -m anomaly score --run {shell_word(home.path)}"
    return f"python -m anomaly score --run {shell_word(home.path)} --data DATA --out {shell_word(RunDir(folder).path)}"


def _test_data(config: Config):
    from anomaly.data import AnomalyDataset

    return AnomalyDataset(
        config.data, "test", size=config.size, channels=config.channels, decode=config.decode
    )


def _one_per_kind(data, n: int) -> list[int]:
    return _per_kind(data.defects, 1)[: _positive("n", n)]


def _metrics(run: Path) -> dict:
    """The run's metrics.json; RunError naming the file when a metric the tables show is not a
    number (None: not measured)."""
    rd = RunDir(run)
    metrics = rd.metrics()
    whole = isinstance(metrics, dict)
    bad = [
        k for k in METRIC_KEYS if whole and metrics.get(k) is not None and not finite(metrics[k])
    ]
    if not whole or bad:
        what = f"its {bad[0]} is {str(metrics[bad[0]])[:40]!r}" if bad else "not a JSON object"
        raise RunError(
            f"{rd.file(rd.METRICS)} is damaged ({what}, not a number); score the run again: "
            f"{_score_again(run)}"
        )
    _check_scored_model(run)
    return metrics


def _check_scored_model(run: Path) -> None:
    """RunError when the model that scored a folder (its predictions.npz's record) is not its
    run's model.pt now: a run trained further since (a resume stopped by a full disk leaves the
    earlier model's metrics), whose table row would be another model's numbers."""
    from anomaly.explorer.runs import recorded_runs
    from anomaly.threshold_file import model_sha256

    meta = RunDir(run).scored_meta()
    places, made = recorded_runs(Path(run), meta)  # a `--out` folder's run, where found first
    if "at" not in meta:  # recorded as typed, from some other folder
        places = []
    found = [RunDir(p) for p in places if RunDir(p).file(RunDir.MODEL).is_file()]
    if RunDir(run).file(RunDir.MODEL).is_file():  # a run's own scores: its model.pt now
        found = [RunDir(run)]
    home = found[0] if found else _home(run)  # else any of them holding that model: its scores
    now = [model_sha256(h.file(h.MODEL)) for h in found or [home]]
    if made is not None and now[0] is not None and made not in now:
        raise RunError(
            f"{RunDir(run).file(RunDir.METRICS)} holds the metrics of an earlier model of "
            f"{home.path} (its model.pt changed since it was scored); score it again: "
            f"{_score_again(run, home)}"
        )


METRIC_KEYS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "aupro")


def _name_width(runs: dict[str, Path]) -> int:
    """The first column's width: 8 characters, or the longest name (`unet_original`)."""
    return max([8, *map(len, runs)])


def metrics_table(runs: dict[str, Path]) -> str:
    """One row per run: the image and pixel metrics of its `metrics.json`."""
    runs = _named_runs(runs)
    w = _name_width(runs)
    lines = [f"{'method':<{w}} " + " ".join(f"{k:>12}" for k in METRIC_KEYS)]
    sizes = {}  # each run's pixel metrics' size (`score --pixel-size`): rows of two do not compare
    for name, run in runs.items():
        m = _metrics(run)
        sizes[name] = m.get("pixel_metrics_size")
        lines.append(
            f"{name:<{w}} "
            + " ".join(
                f"{m[k]:>12.3f}" if m.get(k) is not None else f"{'n/a':>12}" for k in METRIC_KEYS
            )
        )
    if len({str(v) for v in sizes.values() if v is not None}) > 1:
        said = ", ".join(f"{name} {str(v)[:20]!r}" for name, v in sizes.items() if v is not None)
        lines.append(f"note: pixel metrics at different sizes ({said}), which do not compare")
    return "\n".join(lines)


def metrics_table_keys(runs: dict[str, Path]) -> set[str]:
    """The metric names every run reports (the same for all methods)."""
    runs = _named_runs(runs)
    keys = [{k for k in METRIC_KEYS if _metrics(r).get(k) is not None} for r in runs.values()]
    return set.intersection(*keys)


def scores_table(run: Path, n: int = 6) -> str:
    """The original project's table: file and distance, normal images first, then defects."""
    from anomaly.runs import read_scores

    rows = read_scores(run)
    normal = [r for r in rows if r.get("label") == "0"]
    defect = [r for r in rows if r.get("label") == "1"]
    for r in rows:
        try:
            r["score"] = float(r["score"])
        except (KeyError, TypeError, ValueError):
            raise RunError(
                f"{RunDir(run).file(RunDir.SCORES)} is damaged (a score of "
                f"{str(r.get('score'))[:40]!r}, not a number); score the run again: "
                f"{_score_again(run)}"
            ) from None
    show = lambda rs: "\n".join(f"{r['defect']}/{r['file']},{r['score']:.6f}" for r in rs)
    return (
        f"Normal samples ({len(normal)}, first {n})\n{show(normal[:n])}\n...\n\n"
        f"Anomaly samples ({len(defect)}, first {n})\n{show(defect[:n])}\n..."
    )


def histogram_figure(run: Path):
    """Score histograms of normal and defective test images, with the run's threshold (for
    `score --data`'s RUN/scored/<name>/, the run's: the one `predict` uses)."""
    from anomaly.viz import plot_score_histogram

    pred = RunDir(run).predictions()
    return plot_score_histogram(pred.scores, pred.labels, _home(run).threshold().value)


def roc_figure(runs: dict[str, Path]):
    """ROC curves of several runs on the same test set. A run whose test images are all good
    (or all defective) has no ROC curve: the figure says so instead of drawing one."""
    from anomaly.viz import plot_roc

    runs = _named_runs(runs)
    curves, lacking = {}, []
    for name, run in runs.items():
        pred = RunDir(run).predictions()
        defective = int(np.sum(np.asarray(pred.labels) > 0))
        if 0 < defective < len(pred.labels):
            curves[name] = (pred.labels, pred.scores)
        else:
            lacking.append(f"{name} (no {'good' if defective else 'defective'} test image)")
    fig, ax = _subplots(figsize=(5, 5))
    if curves:
        plot_roc(curves, ax=ax)
    else:
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("false positive rate (good parts rejected)")
        ax.set_ylabel("true positive rate (defects caught)")
    if lacking:
        ax.set_title(
            "No ROC curve for " + ", ".join(lacking) + ":\na curve needs good and defective "
            "test images; score the run on data with both",
            fontsize=8,
            color="#c62828",
        )
    return fig


def explorer_methods(s: Settings) -> list[str]:
    """The runs the explorer compares: the strongest method and the original's UNet."""
    return ["patchknn", "unet"]


def evidence_figure(run: Path, per_kind: int = 1, ncols: int = 4):
    """The pictures `score` writes to overlays/ (and `predict` and the explorer show): verdict
    and score above, evidence on the run's scale anchored to its pixel threshold (red: above
    it), the true defect outlined, the colour bar below; `per_kind` images of each kind."""
    from anomaly.overlays import prediction_overlay, run_scale

    pred, home = RunDir(run).predictions(), _home(run)  # the run's scale and threshold: as
    scale = run_scale(home, pred.maps, pred.labels)  # `score` drew its overlays/
    threshold = home.threshold().value if home.has_threshold() else float("inf")
    draft = draft_size(home.config().decode, home.config().size)
    picks = _per_kind(pred.defects, per_kind)
    ncols = max(1, min(ncols, len(picks)))
    nrows = -(-len(picks) // ncols)
    fig, axes = _subplots(nrows, ncols, figsize=(3.2 * ncols, 4.3 * nrows), squeeze=False)
    for ax, i, file in zip(axes.ravel(), picks, _scored_files(run, pred, picks)):
        image = read_rgb(file, draft)  # as `score` drew it: EXIF orientation, JPEG scale
        if image is None:
            raise RunError(f"{file}: cannot read this image to draw {run}'s map on it")
        ax.imshow(prediction_overlay(pred, i, image, scale, threshold))
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.tight_layout()
    return fig
