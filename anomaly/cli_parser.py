"""The command line's parser: `python -m anomaly`'s commands and flags (`anomaly.cli` runs them).

The `train` flags are generated from `anomaly.config.Config`: one flag per field, with the
field's type, help and choices, and each method's own defaults shown in the help.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import MISSING, fields

from anomaly.config import (
    METHOD_DEFAULTS,
    METHODS,
    NEW_RUNS,
    READ_BY,
    Config,
    flag_of,
    ignored_by,
)

# the method `train` trains when --method is not given
DEFAULT_METHOD = Config.method

WORKERS_HELP = (
    "processes that decode the images while the model scores them, for this command only "
    "(default: the run's, set by train --workers; 0 = in the main process)"
)


# what an empty default means, per field (an empty string would print as "(default )"); a test
# checks the layers against the detectors' own
EMPTY_DEFAULT = {
    "source_run": "no default: --method kmeans needs it",
    "kmeans_features": "default empty: patch; original under --recipe original",
    "layers": "default empty: patchknn features.3,features.6 on mobilenet_v2, blocks.2,blocks.4 "
    "on efficientnet_lite0; flow features.6,features.13 on mobilenet_v2, blocks.4,blocks.10 on "
    "efficientnet_lite0",
}


def _default_text(name: str, default) -> str:
    if default == "" and name in EMPTY_DEFAULT:
        return EMPTY_DEFAULT[name]
    if name in NEW_RUNS:
        return f"default {NEW_RUNS[name]}; runs trained before the setting: {default}"
    readers = [m for m in METHODS if not ignored_by(m, [name])]
    # kmeans trains with its --from run's settings (`cli._train`), but for its own fields
    inherits = "kmeans" in readers and READ_BY.get(name) != ("kmeans",)
    values: dict[str, list[str]] = {}  # each value the readers train with, and who
    for m in sorted(readers, key=lambda m: (m != DEFAULT_METHOD, m)):
        if not (m == "kmeans" and inherits):
            values.setdefault(str(METHOD_DEFAULTS.get(m, {}).get(name, default)), []).append(m)
    if len(values) <= 1:  # one value for every method that reads it (or none reads it)
        text = f"default {next(iter(values), default)}"
    else:
        text = "default by --method: " + "; ".join(f"{', '.join(m)} {v}" for v, m in values.items())
    text += "; kmeans: its --from run's" if inherits and len(values) > 1 else ""
    return text + ("" if DEFAULT_METHOD in readers else f"; {DEFAULT_METHOD} does not read it")


def add_config_flags(p: argparse.ArgumentParser, methods: list[str]) -> None:
    """One flag per Config field (default None: only the flags given change the config)."""
    for f in fields(Config):
        default = f.default if f.default is not MISSING else None
        kind = type(default) if default is not None else str
        help_text = f.metadata.get("help", "")
        kw: dict = {"dest": f.name, "default": None, "type": kind}
        if f.name == "method":
            kw["choices"] = methods
        if f.name != "data":
            help_text += f" ({_default_text(f.name, default)})"
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        p.add_argument(flag_of(f), help=help_text.replace("%", "%%"), **kw)


def method_names() -> list[str]:
    """The package's methods (`config.METHODS`), and any more registered in this process (a
    plugin that called `anomaly.detectors.register` before `main`); importing the detectors
    just to list them would cost every command, `--help` included, seconds of torch imports."""
    names = set(METHODS)
    registry = sys.modules.get("anomaly.detectors.registry")
    if registry is not None:
        names |= set(registry.REGISTRY)
    return sorted(names)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m anomaly",
        description="The command line over the same functions the notebooks call.",
    )
    from anomaly import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-cookies", help="generate the cookie inspection data set")
    p.add_argument("root", help="the folder to write the data set into (MVTec AD layout)")
    p.add_argument(
        "--preset",
        default="toy",
        choices=("tiny", "toy", "benchmark"),
        help="toy: the original project's counts; benchmark: 200 training images, 50 good and "
        "30 per defect kind to test; tiny: for tests (default toy)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="the same seed gives the same images (default 0)"
    )
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument(
        "--difficulty",
        type=float,
        default=1.0,
        help="0.1 to 50, higher is harder: smaller, fainter defects (default 1.0, the benchmark's)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a cookie data set made here before with other settings (only "
        "a folder this generator made: never one without its manifest.json; never a file "
        "edited since it was made)",
    )

    photos = (
        "generate the real-photo suite: 8 sets cut from real photographs of several kinds "
        "(textures, printed text, coins, a retina, a flower), with defects drawn in and masks"
    )
    p = sub.add_parser("make-photos", help=photos, description=photos[0].upper() + photos[1:])
    p.add_argument("root", help="the folder to write the suite into: ROOT/<set>/, manifest.json")
    p.add_argument(
        "--seed", type=int, default=0, help="the same seed gives the same files (default 0)"
    )
    p.add_argument(
        "--good",
        type=int,
        help="good test images per set (default 25, at most 5000; more narrow the AUROC's "
        "interval, and the first 25 stay the same images)",
    )
    p.add_argument(
        "--defect",
        type=int,
        help="test images per defect kind and set (default 7, at most 5000; as --good)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a photo suite made here before (only a folder this generator "
        "made: never one without its manifest.json; never a file edited since it was made)",
    )

    p = sub.add_parser(
        "train",
        help="train a detector on train/good into a run folder",
        description="Train a detector. Every setting has a flag; the defaults "
        "depend on --method (shown as 'method: value').",
    )
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out (with more --epochs: train longer; "
        "--patience, --device, --workers and --data, where its data set is now, may change "
        "too; other flags are refused)",
    )
    p.add_argument(
        "--like",
        metavar="RUN",
        help="train again as the run RUN was, into a new --out: its settings and the images its "
        "split.json names, each checked against its SHA-256 (--data: where that data set is "
        "now; only --data, --device and --workers may be given); then say whether the new "
        "model.pt is RUN's byte for byte, holds the same learned state, or which versions.json "
        "entries differ",
    )
    add_config_flags(p, method_names())

    p = sub.add_parser(
        "score",
        help="score test/: scores.csv, metrics.json, overlays/",
        description="Score a run's test images (test/ of its data set, or --data): each image's "
        "score in scores.csv, image and pixel metrics in metrics.json, an overlay per image.",
        epilog="example: python -m anomaly score --run runs/pk",
    )
    p.add_argument("--run", required=True, help="a trained run folder")
    p.add_argument("--data", help="data set root (default: the one the run was trained on)")
    p.add_argument(
        "--out",
        help="--data other than the run's: where its scores go (default RUN/scored/<its folder "
        "name>; the run's own scores, which threshold and explore read, are kept). --out RUN "
        "replaces the run's own (its data moved)",
    )
    p.add_argument(
        "--no-overlays",
        action="store_true",
        help="write no overlays/ (one picture per test image): faster, the scores are the same",
    )
    p.add_argument("--workers", type=int, help=WORKERS_HELP)
    p.add_argument(
        "--pixel-size",
        default="256",
        metavar="N|full",
        help="compare maps and masks at N x N pixels for pixel AUROC and AUPRO (default 256, "
        "the same for every method), or 'full': at the masks' own size, as MVTec AD's "
        "evaluation does (one mask size for the whole test set)",
    )

    p = sub.add_parser(
        "predict",
        help="score new images with a run and its threshold",
        description="Score new images and print path, score, verdict and overlay for each, "
        "tab-separated (an image that cannot be read: score and overlay '-', verdict ERROR, and "
        "why on stderr; the exit status is then 2). Overlays go to RUN/predict/ (--run) or "
        "<stem>_predict/ beside the ONNX file (--onnx), or --out, never over another call's.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="a trained run folder (its threshold.json decides)")
    source.add_argument(
        "--onnx",
        help="a detector exported by `export` (onnxruntime only); overlays go to "
        "<stem>_predict/ beside it",
    )
    p.add_argument("images", nargs="+", help="image files, or folders of images")
    p.add_argument(
        "--recursive",
        action="store_true",
        help="also score the images in every folder below a folder given (hidden ones left out)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="write the overlays here instead (for a run or file you may not write to)",
    )
    p.add_argument(
        "--no-overlays", action="store_true", help="write no overlays: the scores are the same"
    )
    p.add_argument("--workers", type=int, help=WORKERS_HELP + " (--run only)")

    p = sub.add_parser(
        "export",
        help="save a patchknn run as one ONNX file (onnxruntime only)",
        description="Save a patchknn run as one ONNX file, which `predict --onnx` scores with "
        "onnxruntime, numpy and Pillow alone (no torch).",
        epilog="example: python -m anomaly export --run runs/pk && python -m anomaly predict "
        "--onnx runs/pk/model.onnx part.png",
    )
    p.add_argument("--run", required=True, help="a trained patchknn run folder")
    p.add_argument("--out", help="the ONNX file to write (default RUN/model.onnx)")

    p = sub.add_parser(
        "threshold",
        help="choose and save the run's threshold (without --rule: say the saved one)",
        description="Choose and save the run's threshold, or say the saved one (no --rule).",
        epilog="example: python -m anomaly threshold --run runs/pk --rule conformal --value 0.05 "
        "--good-images more_good/ (at most 5 % of good parts rejected, guaranteed)",
    )
    # --value -1e-05 (a score pasted as Python writes it) read as a number, not an option
    p._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-inf$")
    p.add_argument(
        "--run",
        required=True,
        help="a trained run folder, with its model.pt (the threshold records the model it is for)",
    )
    p.add_argument(
        "--rule",
        type=lambda rule: rule.replace("_", "-"),  # threshold.json's normal_quantile too
        choices=("manual", "normal-quantile", "conformal", "f1"),
        help="how to choose it; without --rule the saved threshold is said, and nothing changes",
    )
    p.add_argument(
        "--value",
        type=float,
        help="manual: the threshold; normal-quantile: the quantile, 0.5 to 1.0 (default the "
        "run's --threshold-quantile, 0.99 unless set in train); conformal: alpha, the false-reject "
        "rate to guarantee; f1: none",
    )
    p.add_argument(
        "--good-images",
        metavar="FOLDER",
        help="normal-quantile, conformal: set the rule on this folder's good images (scored "
        "now) instead of the good training images the run held out. Use good images taken as "
        "the ones you will check are (other parts, other batches): held-out training images "
        "are often near-copies of training ones and score too low",
    )

    p = sub.add_parser(
        "benchmark",
        help="train and score every method on every set; print the tables (or --curve train-size)",
    )
    from anomaly.benchmark_flags import add_arguments

    add_arguments(p)

    p = sub.add_parser(
        "explore",
        help="serve the threshold explorer as a page (Voila)",
        description="Serve the threshold explorer as a page (Voila): a scored run's images, "
        "scores and overlays, a threshold to move, the errors and costs it gives, and a button "
        "that saves it.",
        epilog="example: python -m anomaly explore --run runs/pk --run runs/ae",
    )
    p.add_argument(
        "--run", action="append", required=True, help="a scored run (repeat for several)"
    )
    p.add_argument(
        "--port", type=int, default=8866, help="port on 127.0.0.1 to serve on (default 8866)"
    )
    for choice in sub._choices_actions:  # `COMMAND --help` opens with what it does
        command = sub.choices[choice.dest]
        command.description = command.description or choice.help[0].upper() + choice.help[1:]
    return parser
