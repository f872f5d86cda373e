"""One typed configuration for a run: every setting, its help, and each method's defaults.

`Config` is the one home of settings. Its fields are saved as `config.json` in a run folder, the
CLI's `train` flags are generated from them (type and help from each field's metadata), and
`Config.for_method(name)` gives a method's defaults (`METHOD_DEFAULTS`), so a notebook and the
shell train the same model. This module imports nothing from the package.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from anomaly.terminal import control_characters

# Every method the package registers (`anomaly.detectors.REGISTRY`), named here too so that the
# CLI can list them without importing torch and every detector (tests/test_architecture.py keeps
# the two in step).
METHODS = ("ae", "auto", "draem", "flow", "kmeans", "meandiff", "patchknn", "unet", "vae")

# Per-method overrides of the field defaults below, chosen to train a useful model in minutes on
# a 2-core CPU (the reasons are in each detector's docstring). A method not listed uses the
# field defaults as they are.
METHOD_DEFAULTS: dict[str, dict] = {
    # RGB denoising SSIM auto-encoder with a top-1% image score (see AutoEncoderDetector)
    "ae": {
        "size": 128,
        "channels": 3,
        "width": 16,
        "latent": 64,
        "epochs": 30,
        "loss": "ssim",
        "corrupt": 0.5,
        "score_topk": 0.01,
    },
    # the original project's UNet at width 16 and 128 px, raw output, scored by its per-image
    # MSE (the smoothed map's mean); see UNetDetector
    "unet": {
        "size": 128,
        "channels": 1,
        "width": 16,
        "epochs": 10,
        "batch_size": 8,
        "output": "raw",
        "score_topk": 1.0,
    },
    "vae": {"size": 128, "channels": 1, "width": 32, "latent": 64, "epochs": 10},
    # sized for a 2-core CPU (see anomaly.detectors.draem)
    "draem": {"width": 8, "epochs": 15, "batch_size": 8},
    # chosen on the cookies and the real-photo suite together (see anomaly.detectors.patchknn)
    "patchknn": {
        "size": 224,
        "channels": 3,
        "backbone": "mobilenet_v2",
        "coreset_ratio": 0.005,
        "feature_pad": 16,
        "score_border": 8,
        "whiten": 0.1,
        # onnxruntime for the extractor when installed: same scores within 1e-4, half the CPU.
        # Every bank row is compared (the 16-cluster inverted file, --search-clusters 16, cost
        # the photo suite 0.013 of mean image AUROC in the benchmark, README "Speed"), but only
        # 32 % of the patches: the map's low ground is interpolated (image AUROC unchanged to
        # 0.002 on the cookies and the photo suite, at 224 and 448 px; docs/measurements.md)
        "runtime": "auto",
        "search_refine": 0.1,
        # the exact search's products in 8 bits where onnxruntime runs it: the search 0.65-0.67x
        # of float32's on the cookies, the whole predict 0.83-0.95x; image AUROC the same to 3
        # decimals on the cookies and 5 of 8 photo sets, +-0.002 on the others
        # (docs/measurements.md)
        "search_precision": "auto",
    },
    "flow": {"size": 160, "channels": 3, "epochs": 10, "feature_pad": 16},
    # the per-pixel mean baseline, in colour at 160 px (see anomaly.detectors.meandiff)
    "meandiff": {"size": 160, "channels": 3},
    # the images auto's candidates see, at its largest candidate's size (each resizes them to
    # its own; anomaly.detectors.auto)
    "auto": {"size": 448, "channels": 3},
}

# What every method trains with by default, where the field's own default is what runs trained
# before the setting existed (their config.json lacks it) did
NEW_RUNS = {"decode": "draft"}

# What `train --resume` may change: how long it trains, and where; how score and predict
# decode (anomaly.pipeline)
RESUMABLE_FIELDS = ("epochs", "patience", "device", "workers")

# Presets applied over METHOD_DEFAULTS when `recipe` names them (`--recipe original`). "original"
# is the original project (AureliiiieP/Unsupervised-Anomaly-Detection-Pytorch): its 64-wide
# grayscale UNet with MSE, Adam 1e-3, batch 8, the unsmoothed squared-error map and the per-image
# MSE as the score; k-means with k = 2 on its max-pooled flattened bottleneck, unstandardised
# (see anomaly.detectors.kmeans). It trained at 512 px for 1000 GPU epochs; on a CPU 128 px and
# 5 epochs.
RECIPES: dict[str, dict[str, dict]] = {
    "project": {},
    "original": {
        "unet": {
            "size": 128,
            "channels": 1,
            "width": 64,
            "loss": "l2",
            "lr": 1e-3,
            "batch_size": 8,
            "epochs": 5,
            "corrupt": 0.0,
            "output": "raw",
            "smooth_sigma": 0.0,
            "score_topk": 1.0,
            "score_border": 0,
        },
        "kmeans": {"k": 2, "kmeans_features": "original"},
    },
}

# The settings only some methods read (each detector's docstring lists what it reads); every
# other field is read by all of them. `auto` is absent: it hands its config to its candidates.
_TRAINED = ("ae", "unet", "vae", "draem", "flow")
_RECONSTRUCTION = ("ae", "unet", "vae")
_PATCHKNN = ("patchknn",)
READ_BY: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("epochs", "lr", "weight_decay", "patience"), _TRAINED),
    **dict.fromkeys(("loss", "corrupt"), _RECONSTRUCTION),
    "width": (*_RECONSTRUCTION, "draem"),
    "latent": ("ae", "vae"),
    "output": ("unet",),
    "kl_weight": ("vae",),
    "score_topk": (*_RECONSTRUCTION, "draem", "flow", "patchknn", "meandiff"),
    "score_border": (*_RECONSTRUCTION, "flow", "patchknn"),
    **dict.fromkeys(("source_run", "k", "kmeans_features"), ("kmeans",)),
    **dict.fromkeys(("backbone", "layers", "feature_pad"), ("patchknn", "flow")),
    **dict.fromkeys(
        ("coreset_ratio", "neighbors", "whiten", "search_clusters", "search_probes"), _PATCHKNN
    ),
    "search_refine": _PATCHKNN,
    **dict.fromkeys(("search_precision", "runtime"), _PATCHKNN),
    **dict.fromkeys(("flow_steps", "flow_hidden_ratio", "flow_clamp"), ("flow",)),
    **dict.fromkeys(
        ("draem_disc_width", "draem_depth", "draem_p_anomaly", "draem_focal_weight", "draem_norm"),
        ("draem",),
    ),
}


_DECLARED: set[str] = set()  # methods from outside the package that said what they read
# (`anomaly.register(name, reads=...)`, `detectors.registry.declare_reads`)


def ignored_by(method: str, names, held: bool | None = None) -> list[str]:
    """Those of the fields `names` that `method` never reads (none for a method this module
    does not know, such as a plugin's that did not say what it reads): for auto every method's
    own setting (its candidates bring their own; `auto_grid.INHERITED` are the run's fields
    they take), and `val_fraction` where the run holds out what its source run held out
    (`held`; by default for kmeans, from its --from run)."""
    if method not in METHODS and method not in _DECLARED:
        return []
    if method == "auto":  # smooth_sigma: every method reads it, and each candidate sets it
        return [n for n in names if n in READ_BY or n == "smooth_sigma"]
    ignored = [n for n in names if n in READ_BY and method not in READ_BY[n]]
    held = method == "kmeans" if held is None else held
    return ignored + ["val_fraction"] * (held and "val_fraction" in names)


def builds_on(method: str, backbone: str = "") -> str:
    """The other run whose held-out images a new run holds out instead of its own
    `--val-fraction`'s (`train_guards.source_held_out`), as a message names it: "--from" for
    kmeans, "encoder" for patchknn and flow on an `encoder:RUN` backbone; "" for a run of its
    own."""
    if method == "kmeans":
        return "--from"
    return "encoder" if method in ("patchknn", "flow") and backbone.startswith("encoder:") else ""


def _f(default, help: str, **meta):
    """A Config field with its CLI help (and optional `choices`, `flag`, `min`, `max`, `above`)."""
    return field(default=default, metadata={"help": help, **meta})


_TYPE_WORDS = {"int": "a whole number", "float": "a number", "str": "text"}


def _of_type(value, kind: str) -> bool:
    """Whether a field's value has its declared type (`kind`, as written in the dataclass):
    an int field takes no float or bool, a float field an int too, a str field only text."""
    if isinstance(value, bool):
        return False
    if kind == "int":
        return isinstance(value, int)
    if kind == "float":
        return isinstance(value, int | float)
    return isinstance(value, str)


def flag_of(f) -> str:
    """The CLI flag of a Config field (`dataclasses.Field`): its own, or --its-name."""
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


@dataclass
class Config:
    """Everything that decides what a run learns. Saved as `config.json` in the run folder.

    Only the fields a method reads matter to it; the rest keep their defaults. Build one with
    `Config.for_method(name, **overrides)` to get the method's defaults (what the CLI trains).
    """

    method: str = _f(
        "patchknn", "detector to train (patchknn: the fast default; auto: the most accurate)"
    )
    data: str = _f("", "data set root (MVTec AD or plain layout)")
    size: int = _f(128, "images are resized to size x size pixels", min=1, max=4096)
    channels: int = _f(1, "1 = grayscale (as the original), 3 = RGB", choices=(1, 3))
    seed: int = _f(
        0,
        "seed of the split, the weights and the synthetic anomalies",
        min=0,
        max=2**32 - 1,  # numpy's limit (np.random.seed)
    )
    recipe: str = _f(
        "project",
        "project = this project's defaults; original = the original "
        "project's UNet and k-means settings (unet, kmeans)",
        choices=tuple(RECIPES),
    )
    decode: str = _f(
        "full",
        "JPEG files: draft = decode at 1/2, 1/4 or 1/8 of their size where that still leaves "
        "twice --size (Pillow's draft mode; 10-20x less CPU for camera-sized photos, overlays "
        "at that scale); full = every pixel, as runs trained before it (other formats: always)",
        choices=("full", "draft"),
    )
    device: str = _f("auto", "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps")
    workers: int = _f(
        0,
        "score and predict --run: processes that decode the images while the model scores "
        "them (0 = decode in the main process; their own --workers overrides it once)",
        min=0,
        max=64,  # each one imports torch: thousands of them (a typo) would exhaust memory
    )
    # training (reconstruction, draem, flow)
    epochs: int = _f(40, "training epochs", min=1)
    batch_size: int = _f(16, "images per batch", min=1)
    lr: float = _f(1e-3, "learning rate (Adam)", above=0.0)
    weight_decay: float = _f(0.0, "Adam weight decay", min=0.0)
    val_fraction: float = _f(
        0.1,
        "fraction of train/good held out for validation and the default threshold",
        min=0.0,
        max=0.9,
    )
    patience: int = _f(10, "early stopping: epochs without validation improvement (0 = off)", min=0)
    loss: str = _f("l2", "reconstruction loss and map", choices=("l2", "ssim"))
    # upper bounds: far above any setting that trains on a 2-core laptop, below those whose
    # weights alone do not fit in memory (--width 100000 asked for 360 GB inside torch)
    width: int = _f(32, "channels of the first level of the networks", min=1, max=1024)
    latent: int = _f(64, "bottleneck channels (ae, vae)", min=1, max=8192)
    output: str = _f(
        "sigmoid",
        "unet: sigmoid = squash the output into [0, 1]; raw = the last "
        "1x1 convolution as it is (the original's)",
        choices=("sigmoid", "raw"),
    )
    kl_weight: float = _f(1e-3, "vae: weight of the KL term", min=0.0)
    corrupt: float = _f(
        0.0,
        "ae/unet/vae: fraction of training images given a synthetic "
        "anomaly the network must remove (denoising); 0 = plain",
        min=0.0,
        max=1.0,
    )
    smooth_sigma: float = _f(2.0, "Gaussian smoothing of anomaly maps, in pixels", min=0.0)
    score_topk: float = _f(
        0.0,
        "image score: 0 = the map's max, else the mean of this top fraction of the map",
        min=0.0,
        max=1.0,
    )
    # feature methods (kmeans, patchknn, flow)
    source_run: str = _f(
        "", "kmeans: the trained ae/unet/vae run whose encoder gives features", flag="--from"
    )
    k: int = _f(
        0,
        "kmeans clusters; 0 = by rule (best silhouette in 2..10 if >= 0.25, else 1; "
        "2 under --recipe original)",
        min=0,
    )
    kmeans_features: str = _f(
        "",
        "kmeans: patch = k-means per position of the encoder's maps at 1/2 and 1/4 "
        "size, 3x3-averaged, standardised (localises); cell = the same on the "
        "bottleneck; flat = the flattened bottleneck, standardised; "
        "original = max-pooled, flattened, unstandardised; empty = the "
        "recipe's (patch; original)",
        choices=("", "patch", "cell", "flat", "original"),
    )
    backbone: str = _f(
        "efficientnet_lite0",
        "patchknn/flow feature backbone, or encoder:RUN (the encoder of a trained ae/unet/vae run)",
    )
    coreset_ratio: float = _f(
        0.01, "patchknn: fraction of training patches kept in the bank", above=0.0, max=1.0
    )
    neighbors: int = _f(1, "patchknn: nearest bank patches averaged per patch", min=1)
    whiten: float = _f(
        0.0,
        "patchknn: whiten the patch features with the training patches' covariance, each "
        "eigenvalue raised by this fraction of their mean (distances become Mahalanobis "
        "distances); 0 = raw features",
        min=0.0,
    )
    search_clusters: int = _f(
        0,
        "patchknn: approximate search: group the bank into this many k-means clusters and "
        "compare each patch with the rows of its --search-probes nearest clusters only "
        "(an inverted file); 0 = compare with every row (exact)",
        min=0,
    )
    search_probes: int = _f(
        2, "patchknn: clusters searched per patch when --search-clusters > 0", min=1
    )
    search_refine: float = _f(
        1.0,
        "patchknn: search a quarter of the patches (every other row and column) first, then "
        "this fraction of the others, those beside the highest distances, and interpolate the "
        "rest (the map's low ground); 1 = search every patch",
        min=0.0,
        max=1.0,
    )
    search_precision: str = _f(
        "float32",
        "patchknn: arithmetic of the exact search in onnxruntime on a CPU: float32, int8 "
        "(8-bit products, about half the search's time with AVX512-VNNI; approximate, within "
        "a stated bound, docs/measurements.md; needs onnx and onnxruntime, --search-clusters "
        "0, --neighbors 1; on a GPU the search stays float32; an ONNX export searches as the "
        "run does), or auto (int8 where it can run on a CPU with VNNI, else float32; model.pt "
        "records which searched, a run trained in int8 searches so wherever it can, and says "
        "so where only float32 can run)",
        choices=("float32", "int8", "auto"),
    )
    runtime: str = _f(
        "torch",
        "patchknn: what runs the feature backbone and the exact search on a CPU: torch, "
        "onnxruntime (faster; needs `pip install onnxruntime`; same scores within 1e-4), or "
        "auto (onnxruntime when it is installed)",
        choices=("torch", "onnxruntime", "auto"),
    )
    layers: str = _f(
        "",
        "patchknn/flow: backbone stages, comma-separated (blocks.N for "
        "efficientnet_lite0, features.N for mobilenet_v2); empty = the method's own",
    )
    feature_pad: int = _f(
        0,
        "patchknn/flow: pixels of mirrored image around each image before "
        "the backbone, so border features see no zero padding",
        min=0,
    )
    score_border: int = _f(0, "image score: pixels at the map's edges it ignores", min=0)
    # per-method network settings (given to the detector by anomaly.pipeline.build_detector)
    flow_steps: int = _f(4, "flow: coupling blocks per stage", min=1, max=64)
    flow_hidden_ratio: float = _f(
        1.0,
        "flow: hidden channels of the coupling sub-networks, as a multiple of the stage's channels",
        above=0.0,
        max=32.0,
    )
    flow_clamp: float = _f(2.0, "flow: bound of the coupling log-scales", above=0.0)
    draem_disc_width: int = _f(
        0,
        "draem: channels of the discriminative network's first level (0 = --width)",
        min=0,
        max=1024,
    )
    draem_depth: int = _f(4, "draem: 2x2 poolings in each network", min=1, max=10)
    draem_p_anomaly: float = _f(
        0.5, "draem: fraction of training images given a synthetic anomaly", min=0.0, max=1.0
    )
    draem_focal_weight: float = _f(1.0, "draem: weight of the segmentation (focal) loss", min=0.0)
    draem_norm: str = _f("group", "draem: normalisation layers", choices=("group", "batch"))
    # thresholds
    threshold_quantile: float = _f(
        0.99,
        "default threshold: this quantile of the held-out normal scores (below 0.5 it would "
        "reject most good parts)",
        min=0.5,
        max=1.0,
    )

    @classmethod
    def for_method(cls, method: str, **overrides) -> Config:
        """The config a method trains with by default (`METHOD_DEFAULTS`), then `overrides`.

        Overrides that are None are ignored, so parsed CLI flags can be passed as they are.
        `recipe="original"` applies that recipe's preset (`RECIPES`) before the overrides.
        """
        registry = getattr(sys.modules.get("anomaly.detectors.registry"), "REGISTRY", {})
        if method not in METHODS and method not in registry:  # a detector registered from code
            near = difflib.get_close_matches(str(method), METHODS, n=1)
            raise ValueError(
                f"unknown method {method!r}{f' (did you mean {near[0]!r}?)' if near else ''}; "
                f"choose one of {', '.join(METHODS)}"
            )
        recipe = overrides.get("recipe") or "project"
        if recipe not in RECIPES:
            raise ValueError(f"--recipe {recipe!r}: choose one of {', '.join(RECIPES)}")
        preset = RECIPES[recipe].get(method)
        if recipe != "project" and preset is None:
            raise ValueError(
                f"--recipe {recipe} exists for {', '.join(RECIPES[recipe])}, not for {method}"
            )
        defaults = {**NEW_RUNS, **METHOD_DEFAULTS.get(method, {}), **(preset or {})}
        return cls(method=method, **defaults).replace(**overrides)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Config:
        from anomaly.safe_files import load_record

        raw = load_record(path)  # RunError, a ValueError, naming it when it is not JSON
        if not isinstance(raw, dict):
            raise ValueError(f"{path} does not hold a config (a JSON object of fields)")  # noqa: TRY004
        unknown = sorted(set(raw) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(
                f"{path}: unknown config fields {unknown}; was it written by a newer anomaly?"
            )
        try:
            return cls(**raw).validate()
        except ValueError as err:
            raise ValueError(f"{path}: {err}; correct it there or train the run again") from None

    def replace(self, **changes) -> Config:
        data = asdict(self)
        unknown = sorted(set(changes) - set(data))
        if unknown:
            raise ValueError(f"unknown config fields {unknown}; the fields are: {', '.join(data)}")
        data.update({k: v for k, v in changes.items() if v is not None})
        if isinstance(data["data"], os.PathLike):  # a Path, as score_run and the data set take
            data["data"] = os.fspath(data["data"])
        return Config(**data)

    def validate(self) -> Config:
        """Raise ValueError naming the first field (as its CLI flag) whose value is out of range."""
        for f in fields(self):
            value, meta = getattr(self, f.name), f.metadata
            flag = flag_of(f)
            if not _of_type(value, f.type):  # a config.json edited by hand: "64" or 64.0
                raise ValueError(f"{flag} {value!r}: must be {_TYPE_WORDS[f.type]}")
            if isinstance(value, str) and (found := control_characters(value, names=True)):
                shown = ", ".join(repr(c) for c in found)  # repr: seen, never acted on
                raise ValueError(
                    f"{flag} {value!r}: holds control characters ({shown}), which no path or "
                    "name has; write it without them"
                )
            if "choices" in meta and value not in meta["choices"]:
                raise ValueError(
                    f"{flag} {value!r}: choose one of " + ", ".join(map(str, meta["choices"]))
                )
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{flag} {value}: must be a finite number")
            both = "min" in meta and "max" in meta
            span = f" (its range: {meta['min']} to {meta['max']})" if both else ""
            if "min" in meta and value < meta["min"]:
                raise ValueError(f"{flag} {value}: must be at least {meta['min']}{span}")
            if "above" in meta and value <= meta["above"]:
                raise ValueError(f"{flag} {value}: must be greater than {meta['above']}")
            if "max" in meta and value > meta["max"]:
                raise ValueError(f"{flag} {value}: must be at most {meta['max']}{span}")
        # maps are the images' size: a blur wider than the image flattens them (and a huge one
        # asked torch for terabytes), a border of half the image leaves nothing to score
        if self.smooth_sigma > self.size:
            raise ValueError(
                f"--smooth-sigma {self.smooth_sigma}: at most --size ({self.size}) pixels; a "
                "wider blur flattens the anomaly map (a few pixels is usual; 0 = none)"
            )
        if 2 * self.score_border >= self.size:
            raise ValueError(
                f"--score-border {self.score_border} leaves nothing of a {self.size} px map; use "
                f"at most {(self.size - 1) // 2} (or a larger --size)"
            )
        if self.layers and not all(part.strip() for part in self.layers.split(",")):
            raise ValueError(
                f"--layers {self.layers!r}: an empty stage name between commas; name each "
                "stage (blocks.3,blocks.6), or leave --layers out for the method's own"
            )
        return self
