"""The `benchmark` command's flags, and which of them each mode (the tables, `--curve`) reads.

`anomaly.cli_parser` builds the parser and `anomaly.benchmark` runs what the flags ask for;
this module owns the flags and their refusals, so that both stay short.
"""

from __future__ import annotations

from anomaly.benchmark_dirs import BenchmarkError

# `unet_original` is the original project's recipe (`--recipe original`), `+kmeans` the k-means
# on the bottleneck of the row named before the "+" (the original's own k-means for the original)
DEFAULT_METHODS = (
    "ae",
    "unet",
    "vae",
    "unet+kmeans",
    "unet_original",
    "unet_original+kmeans",
    "patchknn",
    "draem",
    "flow",
    "meandiff",
    "auto",
)


def add_arguments(p) -> None:
    """The `benchmark` subcommand's flags (cli.py builds the parser, this module owns them)."""
    p.add_argument(
        "--data",
        action="append",
        required=True,
        help="a data set, or a suite root "
        "whose manifest.json lists its sets (the photo suite); repeat for several",
    )
    p.add_argument("--methods", nargs="+", help=f"default: {' '.join(DEFAULT_METHODS)}")
    p.add_argument(
        "--out",
        help="output folder (default runs/benchmark, for a curve "
        "runs/curves); the benchmark deletes only what it made there",
    )
    p.add_argument("--seed", type=int, default=0, help="the split and training seed (default 0)")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny budgets (64 px, one epoch; a curve: n = 1 2 4 8, one subset each), to check "
        "the wiring, not to measure",
    )
    p.add_argument(
        "--notes",
        help="also write the notes document here, e.g. docs/benchmark-notes.md (`make "
        "benchmark` does; a benchmark of other data never overwrites the project's notes)",
    )
    p.add_argument(
        "--readme",
        help="also rewrite one results table of this file (e.g. README.md; `make benchmark` "
        "does): what lies between the lines <!-- benchmark:BLOCK --> and "
        "<!-- /benchmark:BLOCK -->; needs --readme-block",
    )
    p.add_argument(
        "--readme-block",
        dest="readme_block",
        metavar="BLOCK",
        help="--readme: the BLOCK name of its markers (README.md's: cookies, photos)",
    )
    p.add_argument(
        "--pixel-size",
        metavar="N|full",
        help="compare maps and masks at N x N pixels for pixel AUROC and AUPRO (default 256), "
        "or 'full': at each set's masks' own size, as MVTec AD's evaluation does",
    )
    p.add_argument(
        "--curve",
        choices=("train-size",),
        help="train-size: how many good images a method needs (image AUROC, AUPRO, the escape "
        "rate at the conformal threshold for --alpha, fit time, against n)",
    )
    p.add_argument(
        "--method",
        help="--curve: the method (default patchknn; unet+kmeans: the project's UNet, then "
        "k-means with k = 2 on its encoder's maps; the original recipe is not offered here)",
    )
    p.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        help="--curve: training-set sizes (default 1 2 4 ... 128); all the training images "
        "are always a point too, and sizes above them become it",
    )
    p.add_argument(
        "--seeds",
        type=int,
        help="--curve: random subsets per size, for sizes up to --seeds-up-to (default 3)",
    )
    p.add_argument(
        "--seeds-up-to",
        type=int,
        dest="seeds_up_to",
        metavar="N",
        help="--curve: sizes up to N get --seeds subsets, larger ones one (default 8; README's "
        "patchknn curve used 64)",
    )
    p.add_argument(
        "--alpha",
        type=float,
        help="--curve: the escape rate is measured at the conformal threshold for this "
        "false-reject rate (default 0.01); where too few good images are held out for it, at "
        "the smallest alpha they allow, 1/(n+1) (the point's alpha_used)",
    )


CURVE_FLAGS = {"method": None, "sizes": None, "seeds": 3, "seeds_up_to": 8, "alpha": 0.01}
TABLE_FLAGS = ("methods", "notes", "readme", "readme_block", "pixel_size")


def check_mode_flags(args) -> None:
    """Refuse a flag the chosen mode does not read (`--method` without `--curve` would run
    every method; `--notes` with it would write nothing), then fill in the curve's defaults."""
    curve = getattr(args, "curve", None)
    for name in TABLE_FLAGS if curve else CURVE_FLAGS:
        if getattr(args, name, None) is not None:
            flag = "--" + name.replace("_", "-")
            raise BenchmarkError(
                f"{flag} is read only {'without' if curve else 'with'} --curve; "
                + ("drop it" if curve else "add --curve train-size, or drop it")
                + (" (the tables' methods are --methods)" if name == "method" else "")
            )
    for name, default in CURVE_FLAGS.items():
        if getattr(args, name, None) is None:
            setattr(args, name, default)
    if args.seeds_up_to < 0:
        raise BenchmarkError(f"--seeds-up-to must be 0 or more, got {args.seeds_up_to}")
