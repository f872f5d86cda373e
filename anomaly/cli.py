"""`python -m anomaly ...`: the command line over the same functions the notebooks call."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from anomaly.config import Config


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=int)
    p.add_argument("--size", type=int, help="image side in pixels")
    p.add_argument("--channels", type=int, choices=(1, 3))
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, mps")
    p.add_argument("--loss", choices=("l2", "ssim"))
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--lr", type=float)
    p.add_argument("--width", type=int)
    p.add_argument("--corrupt", type=float, help="ae/unet/vae: fraction of training images given "
                   "a synthetic anomaly to remove (denoising training; default 0)")
    p.add_argument("--k", type=int, help="kmeans clusters (default 2, as the original)")
    p.add_argument("--backbone", help="patchknn/flow feature backbone")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m anomaly", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-cookies", help="generate the cookie inspection data set")
    p.add_argument("root")
    p.add_argument("--preset", default="toy", choices=("tiny", "toy", "benchmark"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--difficulty", type=float, default=1.0)
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("train", help="train a detector on train/good into a run folder")
    p.add_argument("--data", help="data set root (MVTec AD or plain layout)")
    p.add_argument("--method", default="unet")
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument("--from", dest="source_run", help="kmeans: the trained run whose encoder gives features")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    _add_config_flags(p)

    p = sub.add_parser("score", help="score test/: scores.csv, metrics.json, overlays/")
    p.add_argument("--run", required=True)
    p.add_argument("--data", help="data set root (default: the one the run was trained on)")
    p.add_argument("--no-overlays", action="store_true")

    p = sub.add_parser("predict", help="score new images with a run and its threshold")
    p.add_argument("--run", required=True)
    p.add_argument("images", nargs="+")

    p = sub.add_parser("threshold", help="choose and save the run's threshold")
    p.add_argument("--run", required=True)
    p.add_argument("--rule", required=True, choices=("manual", "normal-quantile", "f1"))
    p.add_argument("--value", type=float, help="manual: the threshold; normal-quantile: the quantile")

    p = sub.add_parser("benchmark", help="train and score every method; print one table")
    p.add_argument("--data", required=True)
    p.add_argument("--methods", nargs="+")
    p.add_argument("--out", default="runs/benchmark")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny budgets, to check the wiring")

    p = sub.add_parser("explore", help="serve the threshold explorer as a page (Voila)")
    p.add_argument("--run", action="append", required=True, help="a scored run (repeat for several)")
    p.add_argument("--port", type=int, default=8866)
    return parser


def _train(args) -> None:
    from anomaly.pipeline import train_run
    from anomaly.runs import load_config

    flags = {k: getattr(args, k) for k in ("epochs", "size", "channels", "seed", "device", "loss",
                                           "batch_size", "lr", "width", "corrupt", "k", "backbone")}
    if args.resume:
        config = load_config(args.out)
    elif args.method == "kmeans":
        if not args.source_run:
            raise ValueError("--method kmeans needs --from RUN (a trained ae, unet or vae run)")
        config = load_config(args.source_run).replace(
            method="kmeans", source_run=str(Path(args.source_run).resolve()), k=args.k, seed=args.seed,
            data=args.data)
    else:
        from anomaly.detectors import get_detector

        get_detector(args.method)  # an unknown method fails here, naming the choices
        if not args.data:
            raise ValueError("train needs --data ROOT")
        config = Config.for_method(args.method, data=str(Path(args.data).resolve()), **flags)
    train_run(config, args.out, resume=args.resume)
    print(f"trained {config.method}: run folder {args.out}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "make-cookies":
            from anomaly.data import make_cookies

            manifest = make_cookies(args.root, preset=args.preset, seed=args.seed, size=args.size,
                                    difficulty=args.difficulty, overwrite=args.overwrite)
            print(f"wrote {args.root}: " + json.dumps(manifest["counts"]))
        elif args.command == "train":
            _train(args)
        elif args.command == "score":
            from anomaly.pipeline import score_run

            _, metrics = score_run(args.run, args.data, overlays=not args.no_overlays)
            shown = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
            print(json.dumps(shown, indent=2, default=str))
            print(f"wrote {args.run}/scores.csv, metrics.json, predictions.npz, overlays/")
        elif args.command == "predict":
            from anomaly.pipeline import predict_images

            results, threshold = predict_images(args.run, args.images)
            for r in results:
                print(f"{r['path']}\t{r['score']:.6g}\t{r['verdict']}")
            print(f"threshold {threshold.value:.6g} ({threshold.rule}); overlays in {Path(results[0]['overlay']).parent}")
        elif args.command == "threshold":
            from anomaly.pipeline import set_threshold

            t = set_threshold(args.run, args.rule, args.value)
            print(f"threshold {t.value:.6g} ({t.rule}) saved to {args.run}/threshold.json")
        elif args.command == "benchmark":
            from anomaly.benchmark import run_benchmark

            run_benchmark(args.data, methods=args.methods, out=args.out, seed=args.seed, smoke=args.smoke)
        elif args.command == "explore":
            from anomaly.explorer import serve

            serve(args.run, port=args.port)
    except (ValueError, FileNotFoundError, KeyError) as err:
        # Our errors name the file and the fix; a traceback from deep inside torch helps nobody.
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
