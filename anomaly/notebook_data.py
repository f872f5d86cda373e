"""Notebook 01's views of a data set: its counts, a few images of each kind, the normal ones side
by side, defect areas and intensities. Each takes a data set folder (read at 256 px, colour) or
an `AnomalyDataset` already made; `anomaly.notebook` re-exports them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from anomaly.data import DataError
from anomaly.notebook_setup import _positive, _subplots


def _data(data, split: str):
    """`data` as a data set: a folder (str or path) read as its `split`, or one already made."""
    from anomaly.data import AnomalyDataset

    if isinstance(data, (str, os.PathLike)):
        return AnomalyDataset(data, split, cache=False)
    return data


def _per_kind(defects: list[str], per_kind: int) -> list[int]:
    """Indices of the first `per_kind` images of each kind, kinds in data set order."""
    per_kind = _positive("per_kind", per_kind)
    picks = []
    for kind in dict.fromkeys(defects):
        picks += [i for i, d in enumerate(defects) if d == kind][:per_kind]
    return picks


def counts_table(root: Path) -> str:
    """Images per split and kind, counted in the data set's folders (what training and
    scoring read, whoever made them; a generator's manifest says what it wrote)."""
    from anomaly.data import AnomalyDataset

    train = AnomalyDataset(root, "train", cache=False)
    test = AnomalyDataset(root, "test", cache=False)
    mvtec = test.layout == "mvtec"
    rows = [("train/good" if mvtec else "good (train)", len(train))]
    rows += [(f"test/{k}" if mvtec else f"{k} (test)", n) for k, n in test.counts().items()]
    return "\n".join(f"{folder:<14} {n:>4}" for folder, n in rows)


def kinds_figure(data, per_kind: int = 2):
    """A few images of each kind, with the ground-truth defect outlined."""
    from anomaly.viz import plot_gallery

    data = _data(data, "test")
    items = [data[i] for i in _per_kind(data.defects, per_kind)]
    return plot_gallery(
        [it["image"] for it in items],
        [it["defect"] for it in items],
        masks=[it["mask"].numpy() for it in items],
        ncols=per_kind * 2,
    )


def normals_figure(data, n: int = 12):
    """Normal cookies side by side: position, chocolate, texture and tiny cracks all vary."""
    from anomaly.viz import plot_gallery

    data = _data(data, "train")
    idx = np.linspace(0, len(data) - 1, min(n, len(data))).astype(int)
    return plot_gallery(
        [data[int(i)]["image"] for i in idx], [Path(data.paths[i]).stem for i in idx], ncols=6
    )


def defect_area_figure(root: Path):
    """Distribution of defect areas (fraction of the image) per kind, read from the test masks
    of any data set (the generators' and your own alike)."""
    from anomaly.data import AnomalyDataset
    from anomaly.data.masks import read_mask

    data = AnomalyDataset(root, "test", cache=False)  # names a suite or a wrong folder
    areas: dict[str, list[float]] = {}
    unmasked = 0
    for s in data.samples:
        if s.label and s.mask_path:
            areas.setdefault(s.defect, []).append(100 * float(read_mask(s.mask_path).mean()))
        unmasked += bool(s.label and not s.mask_path)
    if not areas:
        raise DataError(f"{data.root}: no defective test image has a mask, so no area to show")
    fig, ax = _subplots(figsize=(6, 3))
    ax.hist(list(areas.values()), bins=15, label=list(areas), stacked=True)
    ax.set_xlabel("defect area (% of the image, from its mask)")
    ax.set_ylabel("images")
    ax.yaxis.get_major_locator().set_params(integer=True)  # counts: no 0.5 ticks
    if unmasked:
        ax.set_title(f"{unmasked} defective images without a mask left out", fontsize=9)
    ax.legend()
    return fig


def intensity_figure(data):
    """Mean brightness and pixel-intensity histograms per kind: no single statistic separates them."""
    data = _data(data, "test")
    fig, (a, b) = _subplots(1, 2, figsize=(10, 3))
    by_kind: dict[str, list] = {}
    for i in range(len(data)):
        by_kind.setdefault(data.defects[i], []).append(data[i]["image"].mean(0).numpy())
    for kind, images in by_kind.items():
        stack = np.stack(images)
        a.hist(stack.reshape(-1), bins=64, histtype="step", density=True, label=kind)
        b.scatter([kind] * len(stack), stack.mean(axis=(1, 2)), alpha=0.6)
    a.set_xlabel("pixel intensity")
    a.set_ylabel("density (pixels of all images of a kind)")
    a.legend()
    b.set_ylabel("mean image brightness")
    fig.tight_layout()
    return fig


def intensity_table(data) -> str:
    """Mean brightness per kind: how many images, their mean and spread."""
    data = _data(data, "test")
    rows = {}
    for i in range(len(data)):
        rows.setdefault(data.defects[i], []).append(float(data[i]["image"].mean()))
    return "\n".join(
        f"{k:<8} n={len(v):>3}  mean={np.mean(v):.2f}  std={np.std(v):.2f}" for k, v in rows.items()
    )
