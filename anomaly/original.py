"""The original project beside this one: what notebooks 03 and 04 call to compare them.

The original (AureliiiieP/Unsupervised-Anomaly-Detection-Pytorch, MIT licence) trains a UNet to
reconstruct normal cookies, paints the difference red, and scores cookies by k-means distance
with a threshold of 0.02. `--recipe original` trains its settings (`anomaly.config.RECIPES`);
this module draws its pictures as it drew them, so they can be put next to the project's:

- `original_overlay`: its red overlay, sign included: it paints only pixels where the
  reconstruction is brighter than the input by more than 1/255 (its `save_anomaly_overlay`), so
  a defect brighter than the cookie (plastic glare) is not marked at all.
- `score_choices`: one run's reconstructions scored several ways (the original's natural score,
  the per-image MSE, and this project's), for ROC curves side by side.
- `fixed_threshold_table`: what the original's 0.02 does here, next to thresholds by rule.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from anomaly.config import Config

ORIGINAL_THRESHOLD = 0.02  # the original README's k-means threshold, chosen by eye on its test set
BORDER = 8  # pixels left out at each edge by the "border ignored" scores below


def original_overlay(image, recon, steps=(1, 2, 3, 4), top: int = 5) -> np.ndarray:
    """The original's red overlay of one image, reproduced (uint8 [H, W, 3]).

    Where (reconstruction - input) * 255 exceeds each of `steps`, red is added to the grey
    input, 255 * exp(step - top) per step (about 5, 13, 35 and 94 levels), as the original's
    `save_anomaly_overlay` did. Note the sign: a pixel where the input is brighter than the
    reconstruction is never painted. `anomaly.viz.red_overlay` is the project's version (the
    absolute difference, one colour scale for a whole data set).
    """
    from anomaly.viz import to_gray

    gray, rec = to_gray(image), to_gray(recon)
    diff = (rec - gray) * 255.0
    rgb = np.repeat(gray[..., None] * 255.0, 3, axis=-1)
    for step in steps:
        rgb[diff > step, 0] += 255.0 * np.exp(step - top)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def original_runs(s, data: Path) -> dict[str, Path]:
    """The original recipe's UNet and its k-means (`unet_original[_kmeans]`: the benchmark's
    runs where it made them, else the notebooks' own, `Settings.run_folder`), trained and scored
    now unless they exist; smoke settings shrink them as `notebook.ensure_run` does, and a
    training the kernel's interrupt stopped is continued, as there."""
    from anomaly.notebook_setup import _train_or_continue  # a kernel's interrupt: continued
    from anomaly.pipeline import score_run
    from anomaly.runs import RunDir, load_config

    unet, km = s.run_folder("unet_original"), s.run_folder("unet_original_kmeans")
    if not RunDir(unet).has_metrics():
        sizes = {"size": s.size, "epochs": s.epochs} if s.smoke else {}
        config = Config.for_method(
            "unet", recipe="original", data=str(data), seed=s.train_seed, **sizes
        )
        _train_or_continue(unet, config, progress=not s.smoke)
        score_run(unet, overlays=False)
    if not RunDir(km).has_metrics():
        config = load_config(unet).replace(
            method="kmeans",
            source_run=str(unet),
            seed=s.train_seed,
            k=2,
            kmeans_features="original",
        )
        _train_or_continue(km, config, progress=False)
        score_run(km, overlays=False)
    return {"unet_original": unet, "unet_original+kmeans": km}  # the benchmark's names


def _reconstruct(run: Path):
    """(detector, test data set, images [N, C, H, W], reconstructions) of a run's test split."""
    from anomaly.pipeline import load_run

    det = load_run(run)
    data = det.dataset(det.config.data, "test")  # the run's split, as `score` reads it
    images = torch.stack([data[i]["image"] for i in range(len(data))])
    recon = torch.cat(
        [
            det.reconstruct(images[i : i + 16].to(det.device)).cpu()
            for i in range(0, len(images), 16)
        ]
    )
    return det, data, images, recon


def score_choices(run: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One reconstruction run's test images scored several ways: {name: (labels, scores)}.

    per-image MSE: the original's training loss, its natural image score; mean |error|; the
    maximum of the Gaussian-smoothed (sigma 2) squared error, over the whole map and with a
    BORDER-pixel frame left out (zero padding leaves an error along the edges of every image);
    the mean of its top 1 %, frame left out.
    """
    from anomaly.maps import gaussian_blur, image_score, l2_map

    _, data, images, recon = _reconstruct(run)
    err = l2_map(images, recon)
    smooth = gaussian_blur(err, 2.0)
    border = min(BORDER, (min(err.shape[-2:]) - 1) // 2)
    scores = {
        "per-image MSE (original)": err.mean(dim=(1, 2)),
        "mean |error|": (images - recon).abs().mean(dim=(1, 2, 3)),
        "max, smoothed": image_score(smooth),
        "max, smoothed, border left out": image_score(smooth, border=border),
        "top 1%, smoothed, border left out": image_score(smooth, 0.01, border=border),
    }
    labels = np.array(data.labels)
    return {name: (labels, s.numpy()) for name, s in scores.items()}


def score_choices_figure(run: Path):
    """ROC curves of `score_choices(run)`, one per score."""
    from anomaly.viz import plot_roc

    return plot_roc(score_choices(run))


def score_choices_table(run: Path) -> str:
    """Image AUROC of each score choice, overall and per defect kind."""
    from anomaly.metrics import image_auroc

    _, data, _, _ = _reconstruct(run)
    defects = np.array(data.defects)
    kinds = sorted(set(data.defects) - {"good"})
    lines = [f"{'image score':<34} {'all':>6} " + " ".join(f"{k:>8}" for k in kinds)]
    for name, (labels, scores) in score_choices(run).items():
        per = [
            image_auroc(
                labels[(defects == k) | (defects == "good")],
                scores[(defects == k) | (defects == "good")],
            )
            for k in kinds
        ]
        lines.append(
            f"{name:<34} {image_auroc(labels, scores):>6.3f} " + " ".join(f"{a:>8.3f}" for a in per)
        )
    return "\n".join(lines)


def map_choices_table(run: Path) -> str:
    """Pixel AUROC and AUPRO of the original's signed map (what its red overlay marks: the
    positive part of reconstruction - input), of the squared error, and of that smoothed; at
    `pixel_eval.EVAL_SIZE`, defective images without a mask file left out, as `score` does."""
    from anomaly.maps import gaussian_blur, l2_map
    from anomaly.metrics import aupro, pixel_auroc
    from anomaly.pixel_eval import maps_at, masks_at

    _, data, images, recon = _reconstruct(run)
    known = np.array([s.label == 0 or s.mask_path is not None for s in data.samples])
    masks = masks_at([s.mask_path for s in data.samples])[known]  # as `score` computes them
    maps = {
        "original overlay: (recon - input)+": (recon - images).clamp(min=0).mean(dim=1),
        "squared error": l2_map(images, recon),
        "squared error, smoothed (sigma 2)": gaussian_blur(l2_map(images, recon), 2.0),
    }
    lines = [f"{'map':<36} {'pixel AUROC':>11} {'AUPRO':>6}"]
    for name, m in maps.items():
        m = maps_at(m.numpy())[known]
        lines.append(f"{name:<36} {pixel_auroc(masks, m):>11.3f} {aupro(masks, m):>6.3f}")
    return "\n".join(lines)


def overlay_comparison_figure(original_run: Path, project_run: Path, per_kind: int = 1):
    """Per defective test image: the input (true defect outlined), the original's red overlay
    from the original recipe's UNet, and the project run's map on one colour scale."""
    from anomaly.notebook import _per_kind, _subplots, _test_data
    from anomaly.overlays import colour_bar, evidence_overlay, run_scale
    from anomaly.runs import RunDir
    from anomaly.viz import to_rgb

    _, data, images, recon = _reconstruct(original_run)
    pred = RunDir(project_run).predictions()
    project_data = _test_data(RunDir(project_run).config())
    home = RunDir(project_run)
    scale = run_scale(home, pred.maps, pred.labels)  # as `score` draws it, red only on a REJECT
    threshold = home.threshold().value if home.has_threshold() else float("inf")
    picks = [i for i in _per_kind(pred.defects, per_kind) if pred.labels[i]]
    fig, axes = _subplots(
        len(picks) + 1,
        3,
        figsize=(7.5, 2.5 * len(picks) + 0.6),
        squeeze=False,
        gridspec_kw={"height_ratios": [1] * len(picks) + [0.24]},
    )
    for a in axes[-1]:
        a.set_axis_off()
    axes[-1, 2].imshow(colour_bar(320, scale))  # the project's scale (the original has none)
    for r, i in enumerate(picks):
        mask = data[i]["mask"].numpy()
        panels = [
            (to_rgb(images[i]), data.defects[i]),
            (original_overlay(images[i], recon[i]), "original's red overlay"),
            (
                evidence_overlay(
                    project_data[i]["image"],
                    pred.maps[i],
                    scale,
                    pred.masks[i],
                    passed=bool(pred.scores[i] < threshold),
                ),
                f"project {pred.method} evidence",
            ),
        ]
        for c, (picture, title) in enumerate(panels):
            axes[r, c].imshow(picture)
            if c == 0 and mask.any():
                axes[r, c].contour(mask > 0, levels=[0.5], colors="lime", linewidths=1)
            axes[r, c].set_title(title, fontsize=9)
            axes[r, c].set_axis_off()
    fig.tight_layout()
    return fig


def fixed_threshold_table(runs: dict[str, Path], value: float = ORIGINAL_THRESHOLD) -> str:
    """Per run: the fraction of good and defective test images flagged at the original's fixed
    threshold, at train's default threshold (a quantile of the held-out normal scores in
    val_scores.json, computed here: threshold.json may hold another rule by now) and at the
    F1-optimal one (which needs labelled defects: chosen on these test images, so its rates
    here are in-sample, better than on new parts)."""
    from anomaly.metrics import threshold_f1, threshold_normal_quantile
    from anomaly.runs import RunDir

    header = (
        f"{'run':<20} {'threshold rule':<26} {'value':>10} {'good flagged':>13} "
        f"{'defects flagged':>16}"
    )
    lines = [header]
    for name, run in runs.items():
        pred = RunDir(run).predictions()
        good, bad = pred.scores[pred.labels == 0], pred.scores[pred.labels > 0]
        rules = {
            f"fixed {value:g} (original)": value,
            "held-out normal quantile": threshold_normal_quantile(
                RunDir(run).val_scores()["scores"], q=RunDir(run).config().threshold_quantile
            ).value,
            "F1-optimal (in-sample)": threshold_f1(pred.labels, pred.scores).value,
        }
        for rule, t in rules.items():
            lines.append(
                f"{name:<20} {rule:<26} {t:>10.4g} {np.mean(good >= t):>13.0%} "
                f"{np.mean(bad >= t):>16.0%}"
            )
    return "\n".join(lines)
