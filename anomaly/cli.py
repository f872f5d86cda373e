"""`python -m anomaly ...`: the command line over the same functions the notebooks call.

The `train` flags are generated from `anomaly.config.Config`: one flag per field, with the
field's type, help and choices, and each method's own defaults shown in the help.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import warnings
from dataclasses import MISSING, fields
from pathlib import Path

from anomaly.config import METHOD_DEFAULTS, METHODS, READ_BY, Config, ignored_by

RESUME_HINT = "continue with `python -m anomaly train --out {out} --resume`"


def _flag(f) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


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
    per_method = [f"{m}: {d[name]}" for m, d in sorted(METHOD_DEFAULTS.items()) if name in d]
    return f"default {default}" + (f"; {', '.join(per_method)}" if per_method else "")


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
        p.add_argument(_flag(f), help=help_text.replace("%", "%%"), **kw)


def method_names() -> list[str]:
    """The package's methods (`config.METHODS`), and any more registered in this process (a
    plugin that called `anomaly.detectors.register` before `main`); importing the detectors
    just to list them would cost every command, `--help` included, seconds of torch imports."""
    names = set(METHODS)
    base = sys.modules.get("anomaly.detectors.base")
    if base is not None:
        names |= set(base.REGISTRY)
    return sorted(names)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m anomaly", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-cookies", help="generate the cookie inspection data set")
    p.add_argument("root")
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
        "a folder this generator made: never one without its manifest.json)",
    )

    photos = (
        "generate the real-photo suite: 8 sets cut from real photographs of several kinds "
        "(textures, printed text, coins, a retina, a flower), with defects drawn in and masks"
    )
    p = sub.add_parser("make-photos", help=photos, description=photos[0].upper() + photos[1:])
    p.add_argument("root")
    p.add_argument(
        "--seed", type=int, default=0, help="the same seed gives the same files (default 0)"
    )
    p.add_argument(
        "--good",
        type=int,
        help="good test images per set (default 25; more narrow the AUROC's interval, and the "
        "first 25 stay the same images)",
    )
    p.add_argument(
        "--defect", type=int, help="test images per defect kind and set (default 7; as --good)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a photo suite made here before (only a folder this generator "
        "made: never one without its manifest.json)",
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
        help="continue the interrupted run in --out (with more --epochs: train longer)",
    )
    add_config_flags(p, method_names())

    p = sub.add_parser("score", help="score test/: scores.csv, metrics.json, overlays/")
    p.add_argument("--run", required=True)
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

    p = sub.add_parser(
        "predict",
        help="score new images with a run and its threshold",
        description="Score new images and print path, score, verdict and overlay for each. "
        "Overlays go to RUN/predict/ (--run) or <stem>_predict/ beside the ONNX file (--onnx), "
        "never over an earlier call's.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="a trained run folder (its threshold.json decides)")
    source.add_argument(
        "--onnx",
        help="a detector exported by `export` (onnxruntime only); overlays go to "
        "<stem>_predict/ beside it",
    )
    p.add_argument("images", nargs="+", help="image files, or folders of images")

    p = sub.add_parser("export", help="save a patchknn run as one ONNX file (onnxruntime only)")
    p.add_argument("--run", required=True)
    p.add_argument("--out", help="the ONNX file to write (default RUN/model.onnx)")

    p = sub.add_parser("threshold", help="choose and save the run's threshold")
    p.add_argument("--run", required=True)
    p.add_argument(
        "--rule", required=True, choices=("manual", "normal-quantile", "conformal", "f1")
    )
    p.add_argument(
        "--value",
        type=float,
        help="manual: the threshold; normal-quantile: the quantile (default the run's "
        "--threshold-quantile, 0.99 unless set in train); conformal: alpha, the false-reject "
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
    from anomaly.benchmark import add_arguments  # the benchmark module owns its flags

    add_arguments(p)

    p = sub.add_parser("explore", help="serve the threshold explorer as a page (Voila)")
    p.add_argument(
        "--run", action="append", required=True, help="a scored run (repeat for several)"
    )
    p.add_argument(
        "--port", type=int, default=8866, help="port on 127.0.0.1 to serve on (default 8866)"
    )
    return parser


def _config_flags(args) -> dict:
    return {
        f.name: getattr(args, f.name)
        for f in fields(Config)
        if getattr(args, f.name, None) is not None
    }


def _train(args) -> None:
    from anomaly.pipeline import AlreadyTrained, train_run
    from anomaly.runs import RunDir

    flags = _config_flags(args)
    for name in ("data", "source_run"):
        if flags.get(name):
            flags[name] = str(Path(flags[name]).resolve())
    if args.resume:
        config = RunDir(args.out).config().replace(**flags)
        _warn_ignored(config.method, flags)
        try:
            detector = train_run(config, args.out, resume=True)
        except AlreadyTrained as done:
            print(done)
            return
    else:
        method = flags.pop("method", None) or Config.method
        if method == "kmeans":
            if not flags.get("source_run"):
                raise ValueError("--method kmeans needs --from RUN (a trained ae, unet or vae run)")
            if not RunDir(flags["source_run"]).is_run():
                raise ValueError(
                    f"--from {flags['source_run']} is not a run folder; kmeans clusters a trained "
                    "ae, unet or vae run's features: train one with `python -m anomaly train "
                    "--method unet --data ROOT --out RUN`, then --from RUN"
                )
            source = RunDir(flags["source_run"]).config()
            config = source.replace(method="kmeans", **flags)
        else:
            if not flags.get("data"):
                raise ValueError("train needs --data ROOT (a data set folder)")
            config = Config.for_method(method, **flags)
        _warn_ignored(config.method, flags)
        detector = train_run(config, args.out)
    print(f"trained {detector.config.method}: run folder {args.out}")
    selection = getattr(detector, "selection", None)
    if isinstance(selection, dict) and "chosen" in selection:
        print(
            f"auto chose {selection['chosen']} (all candidates: "
            f"{RunDir(args.out).file(RunDir.SELECTION)})"
        )


def _warn_ignored(method: str, flags: dict) -> None:
    """Say which of the flags given the method never reads: `--epochs` for patchknn changes
    nothing, and a user who passed it should not believe it did."""
    ignored = ignored_by(method, flags)
    if ignored:
        given = "; ".join(
            f"{_flag(f)} (read by {', '.join(READ_BY[f.name])})"
            for f in fields(Config)
            if f.name in ignored
        )
        warnings.warn(
            f"--method {method} ignores {given}: leave "
            f"{'it' if len(ignored) == 1 else 'them'} out, or choose a method that reads "
            f"{'it' if len(ignored) == 1 else 'them'}",
            stacklevel=2,
        )


def _score(args) -> None:
    from anomaly.decision import score_summary
    from anomaly.pipeline import score_run
    from anomaly.runs import RunDir

    pred, metrics = score_run(
        args.run, args.data, overlays=not args.no_overlays, progress=True, out=args.out
    )
    rd = RunDir(args.run)
    threshold = rd.threshold() if rd.has_threshold() else None
    print(score_summary(pred.labels, pred.scores, metrics, threshold))
    for note in metrics.get("notes", []):
        print(f"note: {note}")
    wrote = "scores.csv, metrics.json, predictions.npz" + (
        "" if args.no_overlays else ", overlays/"
    )
    dest = pred.meta["out"]
    print(f"wrote {dest}: {wrote}")
    if Path(dest).resolve() != Path(args.run).resolve():
        print(
            f"these are the scores of {pred.meta['data']}; the run's own, of its data, stay in "
            f"{args.run} (threshold and explore read those). If this is the run's data moved to "
            f"a new place, replace them: add --out {args.run}"
        )


def _predict(args) -> int:
    if args.onnx:
        from anomaly.export_predict import predict_files

        results, threshold = predict_files(args.onnx, args.images)
    else:
        from anomaly.predict import predict_images

        results, threshold = predict_images(args.run, args.images)
    good = [r for r in results if "error" not in r]
    for r in good:
        print(f"{r['path']}\t{r['score']:.6g}\t{r['verdict']}\t{r['overlay']}")
    broken = [r["path"] for r in good if not math.isfinite(r["score"])]
    if broken:
        print(
            f"error: {len(broken)} image(s) scored NaN or infinite, e.g. {broken[0]}, and were "
            "rejected: the model gives no usable scores; train the run again",
            file=sys.stderr,
        )
    for r in results:
        if "error" in r:
            print(f"error: {r['error']}", file=sys.stderr)
    if not results:
        print("error: no images found in " + ", ".join(args.images), file=sys.stderr)
        return 2
    if good:
        print(f"{_threshold_words(threshold)}; overlays in {Path(good[0]['overlay']).parent}")
    return 0 if len(good) == len(results) and not broken else 2


def _held_out_words(run, value: float) -> str:
    """How many of the run's held-out good images the threshold rejects: a manual value far off
    (every part rejected, or none ever) shows at once."""
    try:
        held = [float(x) for x in run.val_scores()["scores"]]
    except (ValueError, KeyError, TypeError):  # no held-out scores to count
        return "the run has no held-out scores to count against"
    rejected = sum(x >= value for x in held)
    return f"it rejects {rejected} of the run's {len(held)} held-out good images"


def _threshold_words(t) -> str:
    """The threshold, the rule that set it and what it guarantees, in one line."""
    words = f"threshold {t.value:.6g} ({t.rule})"
    if (t.params or {}).get("earlier_model"):
        return (
            f"{words}: chosen on an earlier model of this run, so its guarantee no longer "
            "holds; choose it again with `python -m anomaly threshold`"
        )
    guarantee = (t.params or {}).get("guarantee")
    if guarantee:
        return f"{words}: guarantee: {guarantee}"
    return f"{words}: no guarantee on the false-reject rate (use --rule conformal for one)"


def _check_readme_block(readme: str | None, block: str | None) -> None:
    """`benchmark --readme FILE` rewrites one of FILE's tables: without `--readme-block` it
    would not know which, so it stops before anything runs, naming the blocks FILE has."""
    if not readme or block:
        return
    try:
        names = re.findall(r"^<!-- benchmark:([^ >]+) -->$", Path(readme).read_text(), re.MULTILINE)
    except (OSError, UnicodeDecodeError):
        names = []
    has = f" ({readme} has: {', '.join(names)})" if names else ""
    raise ValueError(
        f"--readme {readme} needs --readme-block BLOCK, the name in the markers "
        f"<!-- benchmark:BLOCK --> and <!-- /benchmark:BLOCK --> of the table to rewrite{has}"
    )


def _make_data(args) -> None:
    if args.command == "make-cookies":
        from anomaly.data import make_cookies

        manifest = make_cookies(
            args.root,
            preset=args.preset,
            seed=args.seed,
            size=args.size,
            difficulty=args.difficulty,
            overwrite=args.overwrite,
        )
    else:
        from anomaly.data.photos import make_photos

        for flag, value in (("--good", args.good), ("--defect", args.defect)):
            if value is not None and value < 1:
                raise ValueError(
                    f"make-photos {flag} {value}: give at least 1; a test set needs good and "
                    "defective images, or its image AUROC cannot be measured"
                )
        manifest = make_photos(
            args.root,
            seed=args.seed,
            overwrite=args.overwrite,
            good=args.good,
            defect=args.defect,
        )
    print(f"wrote {args.root}: " + json.dumps(manifest.get("counts", {})))


def _one_line_warnings(previous):
    """A `warnings.showwarning` that prints the package's own warnings as one `warning: ...`
    line, like the errors (they name the file and what it means; the source line of the
    `warnings.warn` call helps nobody), and hands every other warning to `previous`."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if "anomaly" in Path(filename).parts:
            print(f"warning: {message}", file=file or sys.stderr)
        else:
            previous(message, category, filename, lineno, file, line)

    return show


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    shown = warnings.showwarning
    warnings.showwarning = _one_line_warnings(shown)
    try:
        return _main(args)
    finally:
        warnings.showwarning = shown


def _main(args) -> int:
    try:
        if args.command in ("make-cookies", "make-photos"):
            _make_data(args)
        elif args.command == "train":
            _train(args)
        elif args.command == "score":
            _score(args)
        elif args.command == "predict":
            return _predict(args)
        elif args.command == "export":
            from anomaly.export import export_onnx

            print(f"wrote {export_onnx(args.run, args.out)}")
        elif args.command == "threshold":
            from anomaly.calibration import calibration_words, set_threshold
            from anomaly.runs import RunDir

            t = set_threshold(args.run, args.rule, args.value, good_images=args.good_images)
            print(f"{_threshold_words(t)}; saved to {args.run}")
            scores = RunDir(args.run).file(RunDir.CALIBRATION) if args.good_images else None
            if words := calibration_words(t, scores):
                print(words)
            print(_held_out_words(RunDir(args.run), t.value))
        elif args.command == "benchmark":
            from anomaly.benchmark import main as benchmark_main

            _check_readme_block(args.readme, args.readme_block)
            benchmark_main(args)
        elif args.command == "explore":
            from anomaly.explorer import serve

            code = serve(args.run, port=args.port)  # Voila's exit code (a failed start: not 0)
            return code if isinstance(code, int) and code > 0 else 0
    except KeyboardInterrupt as stop:  # anomaly.train.Interrupted: Ctrl-C in training
        if getattr(stop, "epoch", None) is None:
            print("\ninterrupted", file=sys.stderr)
            return 130
        print(
            f"\ninterrupted after epoch {stop.epoch}; "
            + RESUME_HINT.format(out=getattr(args, "out", "RUN")),
            file=sys.stderr,
        )
        return 130
    except (ValueError, FileNotFoundError, KeyError, OSError) as err:
        # Our errors name the file and the fix; a traceback from deep inside torch helps nobody.
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0
