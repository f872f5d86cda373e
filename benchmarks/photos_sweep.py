"""Sweep detector settings over every set of a photo suite (and the cookies); print a table.

    python benchmarks/photos_sweep.py --suite data/photos --cookies data/cookies
    python benchmarks/photos_sweep.py --suite data/photos --settings default old --sets moon page

For each named setting (`SETTINGS`, overrides of `Config.for_method`) and each data set it fits
on `train/good`, predicts `test`, and prints one row: image AUROC, pixel AUROC and AUPRO (where
masks exist), fit seconds (wall clock), predict CPU milliseconds per image (all threads, so
other processes on the machine inflate both), the CPU milliseconds per image of torchvision's
MobileNetV2 stages 0-17 on the same images right after (`mnv2_ms`), and their ratio (issue
14's yardstick: predict should cost well under one MobileNetV2 forward pass). Then per
setting, the mean and the worst photo set (the cookies are reported beside them, not in them),
and the mean image AUROC per defect kind. Image-score variants that need no refit
(`--score-variants`: the map's maximum without a border, a top-fraction mean, more smoothing)
are computed from the same maps and shown as extra settings named `<setting>@<variant>`.

Every finished row is appended to `--out` (JSON lines), so a long sweep can be stopped and its
rows kept; `--table-only` prints the table of such a file again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as every command runs (anomaly/__init__.py)

import numpy as np
import torch

from anomaly.detectors.auto import FINE_448
from anomaly.detectors.knn import fast_int8

# Named settings: a method and overrides of its defaults (Config.for_method). "default" is
# whatever METHOD_DEFAULTS says now; the others spell out every setting they vary from OLD (the
# patchknn defaults before the photo suite), so their results do not move with the defaults.
OLD = {
    "backbone": "efficientnet_lite0",
    "layers": "",
    "size": 160,
    "coreset_ratio": 0.01,
    "feature_pad": 0,
    "score_border": 0,
}
MNV2 = {**OLD, "backbone": "mobilenet_v2", "layers": "features.3,features.6"}
MNV2_224 = {**MNV2, "feature_pad": 16, "size": 224, "coreset_ratio": 0.005, "score_border": 8}
SETTINGS: dict[str, dict] = {
    "default": {"method": "patchknn"},
    "default-raw": {"method": "patchknn", "whiten": 0.0},  # the defaults without whitening
    "old": {"method": "patchknn", **OLD},
    "pad16": {"method": "patchknn", **OLD, "feature_pad": 16},
    "pad16-224": {"method": "patchknn", **OLD, "feature_pad": 16, "size": 224},
    "pad16-cs10": {"method": "patchknn", **OLD, "feature_pad": 16, "coreset_ratio": 0.1},
    "mnv2": {"method": "patchknn", **MNV2},
    "mnv2-pad16": {"method": "patchknn", **MNV2, "feature_pad": 16},
    "mnv2-6-13-pad16": {
        "method": "patchknn",
        **MNV2,
        "layers": "features.6,features.13",
        "feature_pad": 16,
    },
    "mnv2-pad16-cs10": {"method": "patchknn", **MNV2, "feature_pad": 16, "coreset_ratio": 0.1},
    "mnv2-pad16-nn3": {"method": "patchknn", **MNV2, "feature_pad": 16, "neighbors": 3},
    "mnv2-pad16-224": {"method": "patchknn", **MNV2, "feature_pad": 16, "size": 224},
    "mnv2-pad16-224-cs05": {
        "method": "patchknn",
        **MNV2,
        "feature_pad": 16,
        "size": 224,
        "coreset_ratio": 0.005,
    },
    "mnv2-pad16-224-cs025": {
        "method": "patchknn",
        **MNV2,
        "feature_pad": 16,
        "size": 224,
        "coreset_ratio": 0.0025,
    },
    "mnv2-pad16-256": {"method": "patchknn", **MNV2, "feature_pad": 16, "size": 256},
    "mnv2-6-10-pad16-256": {
        "method": "patchknn",
        **MNV2,
        "layers": "features.6,features.10",
        "feature_pad": 16,
        "size": 256,
    },
    # issue 14 (speed): the patchknn defaults of 2026-12-01 (MNV2_224), the backbone in
    # onnxruntime (same scores within 1e-4), then less search arithmetic: a smaller bank
    "speed-ort": {"method": "patchknn", **MNV2_224, "runtime": "onnxruntime"},
    "speed-ort-cs025": {
        "method": "patchknn",
        **MNV2_224,
        "runtime": "onnxruntime",
        "coreset_ratio": 0.0025,
    },
    # an approximate search: an inverted file of k-means clusters, `probes` searched per patch
    **{
        f"speed-ort-ivf{k}x{n}": {
            "method": "patchknn",
            **MNV2_224,
            "runtime": "onnxruntime",
            "search_clusters": k,
            "search_probes": n,
        }
        for k, n in ((16, 2), (16, 3), (32, 2), (32, 3), (64, 4))
    },
    # the same speed knobs over whatever the defaults are now (they move with METHOD_DEFAULTS)
    "default-ort": {"method": "patchknn", "runtime": "onnxruntime"},
    **{
        f"default-ort-ivf{k}x{n}": {
            "method": "patchknn",
            "runtime": "onnxruntime",
            "search_clusters": k,
            "search_probes": n,
        }
        for k, n in ((16, 2), (16, 3), (32, 3), (8, 1), (16, 1), (64, 2), (64, 4))
    },
    # the exact search in 8-bit integers (search_precision int8, anomaly.detectors.knn.Int8Search;
    # the defaults' "auto" where onnxruntime runs), and in float32 (the defaults before 2026-12-03)
    "default-int8": {"method": "patchknn", "runtime": "onnxruntime", "search_precision": "int8"},
    "default-float32": {"method": "patchknn", "search_precision": "float32"},
    # every patch searched (search_refine 1; the defaults search 32 % of them, the rest
    # interpolated: anomaly.detectors.knn.coarse_to_fine)
    "default-exact": {"method": "patchknn", "runtime": "onnxruntime", "search_refine": 1.0},
    "x2-6-10-exact": {**FINE_448, "search_refine": 1.0},
    # the defaults at other image sizes and map smoothings (docs/measurements.md, 2026-12-02)
    "default-128": {"method": "patchknn", "size": 128},
    "default-160": {"method": "patchknn", "size": 160},
    "default-256": {"method": "patchknn", "size": 256},
    "default-sigma4": {"method": "patchknn", "smooth_sigma": 4.0},
    "default-sigma1": {"method": "patchknn", "smooth_sigma": 1.0},
    # half the mirrored padding (8 px, one stride-8 cell): 0.88x the extractor's pixels
    "default-pad8": {"method": "patchknn", "feature_pad": 8},
    # how many of the estimated patches the search refines: 10 % (the default since 2026-12-04,
    # 32 % of the patches searched) and 20 % (the default before, 40 %); docs/measurements.md
    "default-refine01": {"method": "patchknn", "search_refine": 0.1},
    "default-refine02": {"method": "patchknn", "search_refine": 0.2},
    "default-pad8-refine01": {"method": "patchknn", "feature_pad": 8, "search_refine": 0.1},
    "x2-6-10-refine01": {**FINE_448, "search_refine": 0.1},
    # twice the pixels, one stage deeper: the same 56 x 56 grid, each cell half the image extent
    # (auto's finest candidate), and the same with the 8-bit search (within its stated bound)
    "x2-6-10": dict(FINE_448),
    "x2-6-10-int8": {**FINE_448, "runtime": "onnxruntime", "search_precision": "int8"},
    "x2-6": {**FINE_448, "layers": "features.6"},  # its finer stage alone (stride 8)
    # three times the pixels, the same stages: cells of a third of the defaults' extent
    "x3-6-10": {
        **FINE_448,
        "size": 672,
        "feature_pad": 48,
        "score_border": 24,
        "smooth_sigma": 6.0,
    },
    "flow": {"method": "flow", "feature_pad": 0},
    "flow-pad16": {"method": "flow", "feature_pad": 16},
    "flow-mnv2-pad16": {"method": "flow", "backbone": "mobilenet_v2", "feature_pad": 16},
    "meandiff": {"method": "meandiff"},
}
# image-score variants computed from a setting's maps without refitting:
# name -> (topk, border in pixels, extra Gaussian smoothing in pixels before scoring)
VARIANTS = {
    "max": (0.0, 0, 0.0),
    "b4": (0.0, 4, 0.0),
    "b8": (0.0, 8, 0.0),
    "b16": (0.0, 16, 0.0),
    "top1%": (0.01, 0, 0.0),
    "top1%b8": (0.01, 8, 0.0),
    "s4": (0.0, 0, 3.5),
    "s4b8": (0.0, 8, 3.5),
    "s8b8": (0.0, 8, 7.7),
}
COLS = [
    "setting",
    "set",
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "fit_s",
    "ms_img",
    "mnv2_ms",
    "ratio",
]


def data_sets(suite: str | None, cookies: str | None, only: list[str] | None) -> dict[str, Path]:
    """name -> folder: every sub-folder of the suite with a train/ folder, then the cookies."""
    sets: dict[str, Path] = {}
    if suite:
        for sub in sorted(Path(suite).iterdir()):
            if (sub / "train").is_dir() and (not only or sub.name in only):
                sets[sub.name] = sub
    if cookies and (not only or "cookies" in only):
        sets["cookies"] = Path(cookies)
    if not sets:
        raise SystemExit(f"no data sets found (suite {suite!r}, cookies {cookies!r})")
    return sets


_CACHE: dict[tuple, tuple] = {}


def load(folder: Path, size: int, channels: int):
    """train, test data sets of a folder, decoded once per size and channels."""
    from anomaly.config import NEW_RUNS
    from anomaly.data import AnomalyDataset

    key = (str(folder), size, channels)
    if key not in _CACHE:
        shape = {"size": size, "channels": channels, "decode": NEW_RUNS["decode"]}  # the run's
        train, test = (
            AnomalyDataset(folder, "train", **shape),
            AnomalyDataset(folder, "test", **shape),
        )
        for data in (train, test):
            for i in range(len(data)):
                data[i]
        _CACHE.clear()  # one folder at a time in memory
        _CACHE[key] = (train, test)
    return _CACHE[key]


_REFERENCE: dict = {}


@torch.inference_mode()
def reference_ms(test, channels: int) -> float:
    """CPU ms per image of torchvision's MobileNetV2 features.0-17 (every inverted-residual
    stage; batch norms folded) on the same test images, measured right after the detector's
    predict so that both see about the same machine load."""
    from anomaly.features import MobileNetV2

    if "net" not in _REFERENCE:
        _REFERENCE["net"] = MobileNetV2(("features.17",))
    net = _REFERENCE["net"]
    images = torch.stack([test[i]["image"] for i in range(len(test))])
    c0 = time.process_time()
    for chunk in images.split(8):
        net(chunk)
    return 1000 * (time.process_time() - c0) / len(images)


def score_variant(maps: np.ndarray, topk: float, border: int, sigma: float) -> np.ndarray:
    """Image scores of maps, after extra smoothing (sigma 3.5 on top of the maps' own 2 px is
    about 4 px in all, 7.7 about 8 px)."""
    from anomaly.maps import gaussian_blur, image_score

    return image_score(gaussian_blur(torch.from_numpy(maps), sigma), topk, border).numpy()


def run_one(
    name: str, setting: dict, set_name: str, folder: Path, variants: list[str]
) -> list[dict]:
    """Fit and predict one setting on one set: one row, plus one per image-score variant."""
    from anomaly.config import Config
    from anomaly.detectors import get_detector
    from anomaly.metrics import aupro, image_auroc, pixel_auroc
    from anomaly.pixel_eval import at_eval_size

    overrides = {k: v for k, v in setting.items() if k != "method"}
    config = Config.for_method(setting["method"], **overrides).validate()
    train, test = load(folder, config.size, config.channels)
    torch.manual_seed(config.seed)
    detector = get_detector(config.method)(config)
    t0 = time.perf_counter()
    if config.method == "flow":
        detector.fit(train, progress=False)
    else:
        detector.fit(train)
    fit_s = time.perf_counter() - t0
    c0 = time.process_time()
    pred = detector.predict(test)
    ms_img = 1000 * (time.process_time() - c0) / len(test)
    ref_ms = reference_ms(test, config.channels)
    base = {
        "set": set_name,
        "fit_s": fit_s,
        "ms_img": ms_img,
        "mnv2_ms": ref_ms,
        "ratio": ms_img / ref_ms,
        "config": overrides,
    }
    defects = np.asarray(pred.defects)

    def per_defect(scores: np.ndarray) -> dict:
        good = defects == "good"
        return {
            k: image_auroc(
                np.r_[np.zeros(good.sum()), np.ones((defects == k).sum())],
                np.r_[scores[good], scores[defects == k]],
            )
            for k in sorted(set(pred.defects) - {"good"})
        }

    masks = maps = None
    if pred.has_masks:  # as `score` computes them: at 256 px, defects without a mask left out
        pixels = at_eval_size(pred, [s.mask_path for s in test.samples])
        known = np.ones(len(pred), bool) if pred.mask_known is None else pred.mask_known
        masks, maps = pixels.masks[known], pixels.maps[known]
    rows = [
        {
            **base,
            "setting": name,
            "image_auroc": image_auroc(pred.labels, pred.scores),
            "pixel_auroc": pixel_auroc(masks, maps) if masks is not None else None,
            "aupro": aupro(masks, maps) if masks is not None else None,
            "per_defect": per_defect(pred.scores),
        }
    ]
    for v in variants:
        scores = score_variant(pred.maps, *VARIANTS[v])
        rows.append(
            {
                **base,
                "setting": f"{name}@{v}",
                "image_auroc": image_auroc(pred.labels, scores),
                "pixel_auroc": rows[0]["pixel_auroc"],
                "aupro": rows[0]["aupro"],
                "per_defect": per_defect(scores),
            }
        )
    return rows


def fmt(value, width: int = 11) -> str:
    if isinstance(value, float):
        return f"{value:>{width}.3f}"
    return f"{'-' if value is None else value:>{width}}"


def print_table(rows: list[dict], file=sys.stdout) -> None:
    """Per setting: one line per set, then the mean and worst over the sets other than cookies."""
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    print(" | ".join(f"{c:>11}" for c in COLS), file=file)
    for s in settings:
        mine = [r for r in rows if r["setting"] == s]
        for r in mine:
            print(" | ".join(fmt(r.get(c)) for c in COLS), file=file)
        photos = [r for r in mine if r["set"] != "cookies"]
        if len(photos) > 1:
            for label, pick in (("MEAN", np.mean), ("WORST", np.min)):
                vals = {
                    c: [r[c] for r in photos if r.get(c) is not None]
                    for c in ("image_auroc", "pixel_auroc", "aupro")
                }
                summary = {"setting": s, "set": f"{label}({len(photos)})"}
                summary.update({c: float(pick(v)) if v else None for c, v in vals.items()})
                if label == "MEAN":
                    summary["fit_s"] = float(np.mean([r["fit_s"] for r in photos]))
                    for c in ("ms_img", "mnv2_ms", "ratio"):
                        summary[c] = float(np.mean([r.get(c, np.nan) for r in photos]))
                print(" | ".join(fmt(summary.get(c)) for c in COLS), file=file)
            kinds: dict[str, list[float]] = {}
            for r in photos:
                for kind, value in r.get("per_defect", {}).items():
                    kinds.setdefault(kind, []).append(value)
            if kinds:
                print(
                    f"{s:>11} | image AUROC per defect kind, mean over sets: "
                    + ", ".join(f"{k} {np.mean(v):.3f}" for k, v in sorted(kinds.items())),
                    file=file,
                )
        print(file=file)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", help="a photo suite folder (ROOT/<set>/train, test, ground_truth)")
    p.add_argument("--cookies", help="the cookie benchmark folder")
    p.add_argument("--settings", nargs="+", default=["default"], choices=sorted(SETTINGS))
    p.add_argument("--sets", nargs="+", help="only these sets (folder names; 'cookies')")
    p.add_argument("--score-variants", nargs="*", default=[], choices=sorted(VARIANTS))
    p.add_argument("--out", default="", help="append every row to this JSON-lines file")
    p.add_argument("--table-only", action="store_true", help="print the table of --out and stop")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    if args.table_only:
        print_table([json.loads(line) for line in Path(args.out).read_text().splitlines() if line])
        return
    torch.set_num_threads(args.threads)
    sets = data_sets(args.suite, args.cookies, args.sets)
    vnni = fast_int8()
    print(
        f"{len(args.settings)} settings x {len(sets)} sets, {args.threads} threads, torch "
        f"{torch.__version__}, load average {os.getloadavg()[0]:.1f} (timings are wall clock / "
        f"CPU under whatever else runs); the CPU has {'' if vnni else 'no '}VNNI, so "
        f"search_precision auto searches in {'int8' if vnni else 'float32'}",
        flush=True,
    )
    rows = []
    for set_name, folder in sets.items():  # set-major: each set's images are decoded once
        for name in args.settings:
            t0 = time.perf_counter()
            new = run_one(name, SETTINGS[name], set_name, folder, args.score_variants)
            rows += new
            print(
                f"  {name:>16} {set_name:>14}: image AUROC {new[0]['image_auroc']:.3f} "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
            if args.out:
                with open(args.out, "a") as f:
                    f.writelines(json.dumps(r) + "\n" for r in new)
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
