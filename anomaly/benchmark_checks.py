"""What the benchmark checks before it trains anything or touches a folder: its data sets (one set,
or a suite root whose `manifest.json` lists its sets), its `--methods` and its `--seed`.

Each refusal is a `BenchmarkError` (or the data's own `DataError`) that names what is wrong and
the fix, raised before the first method trains, so a mistake costs seconds, not the hours of the
methods listed before it.
"""

from __future__ import annotations

import os
from pathlib import Path

from anomaly.benchmark_dirs import BenchmarkError
from anomaly.terminal import shell_word
from anomaly.written_files import plain_relative

# the rows whose encoder features a `<row>+kmeans` row clusters (`unet_original`: the original)
KMEANS_SOURCES = ("ae", "unet", "vae", "unet_original")


# ---------------------------------------------------------------------------------------------
# Data sets: one set, or a suite root whose manifest lists its sets
# ---------------------------------------------------------------------------------------------
def discover_sets(roots: str | Path | list) -> list[dict]:
    """Every data set under the `--data` roots: [{"suite", "name", "path"}], in order.

    A root with a `manifest.json` naming `sets` (the photo suite) gives one entry per set; any
    other root is one set named after its folder."""
    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    found = []
    for root in map(Path, roots):
        if not root.is_dir():
            what = "a file, not a data set's folder" if root.exists() else "no such folder"
            raise BenchmarkError(f"--data {shell_word(root)}: {what}")
        named = Path(os.path.abspath(root)).name  # `--data .` and `..`: the folder's own name
        if names := _suite_sets(root / "manifest.json"):
            found += [{"suite": named, "name": n, "path": str(root / n)} for n in names]
        else:
            found.append({"suite": named, "name": named, "path": str(root)})
    names = [f["name"] for f in found]
    for f in found:  # two roots may hold sets with one name
        if names.count(f["name"]) > 1:
            f["name"] = f"{f['suite']}-{f['name']}"
    paths = [os.path.abspath(f["path"]) for f in found]
    names = [f["name"] for f in found]
    for f, path in zip(found, paths):
        if paths.count(path) > 1:
            raise BenchmarkError(f"--data names the set {f['path']} twice; give each set once")
        if names.count(f["name"]) > 1:  # v1/cookies and v2/cookies: one run folder, one row
            others = [g["path"] for g in found if g["name"] == f["name"]]
            raise BenchmarkError(
                f"the sets {' and '.join(others)} would share the name {f['name']!r} (their "
                "folders and their suites' folders have the same names), so one's runs and "
                "row would replace the other's; rename one of the folders"
            )
    return found


def _suite_sets(manifest: Path) -> list[str]:
    """The set folders a suite's `manifest.json` names (`"sets"`, as make-photos writes it),
    or [] for a root that is one set (no manifest, or one of another tool). A set must be a
    plain folder name: the manifest may be anyone's."""
    from anomaly.data.generated import read_manifest  # no pipe, no gigabytes, no deep nesting

    sets = (read_manifest(manifest) or {}).get("sets")  # not JSON, not an object: not a suite's
    if isinstance(sets, dict):
        names = list(sets)
    elif isinstance(sets, list):
        names = [s.get("name") if isinstance(s, dict) else s for s in sets]
    else:
        return []
    bad = [n for n in names if not (isinstance(n, str) and plain_relative(n) and "/" not in n)]
    if bad:
        raise BenchmarkError(
            f"{manifest} names the set {str(bad[0])[:60]!r}, which is not a folder name inside "
            f"{manifest.parent}; correct the manifest, or give the sets' folders as --data"
        )
    return names


def check_sets(sets: list[dict], pixel_size: int | str | None = None) -> list[int]:
    """Open every set's training and test images once (file lists and headers, no pixels),
    before any method trains: data that training or scoring would refuse is refused here with
    its DataError, and a set whose test images are all good or all defective too (image AUROC,
    the benchmark's measure, needs both). One message lists every such set. With `pixel_size`
    (`pixel_eval.parse_pixel_size`'s), the pixel metrics' sizes and memory are checked too, as
    `score` checks them: test images and masks of several sizes for "full", more pixels than
    memory holds. Returns each set's count of training images (train/good, or the plain
    layout's good/ less its test images)."""
    from anomaly.data import AnomalyDataset
    from anomaly.data.files import DataError

    one_kind, tests, counts = [], [], []
    for ds in sets:
        try:
            counts.append(len(AnomalyDataset(ds["path"], "train", cache=False)))
        except DataError as err:  # a folder of sets: how the benchmark takes several
            if "It holds data sets" not in str(err):
                raise
            raise BenchmarkError(
                f"{err} Or benchmark them all: repeat --data for each, or list them in "
                f'{Path(ds["path"]) / "manifest.json"} as {{"sets": ["name", ...]}}'
            ) from None
        test = AnomalyDataset(ds["path"], "test", cache=False)
        tests.append(test)
        n_bad = int(test.labels.sum())
        n_good = len(test) - n_bad
        mvtec = test.layout == "mvtec"
        if n_bad == 0:
            where = "test/<defect>/" if mvtec else "<defect>/ (one folder per defect kind)"
            one_kind.append(
                f"{ds['path']}: its test images are {n_good} good and no defective ones; put "
                f"defective images in {where}"
            )
        elif n_good == 0:
            where = (
                "test/good/"
                if mvtec
                else "good/ (a fifth of the good images, spread by name, are test images)"
            )
            one_kind.append(
                f"{ds['path']}: its test images are {n_bad} defective and no good ones; put "
                f"good images in {where}"
            )
    if one_kind:
        raise BenchmarkError(
            "image AUROC, what the benchmark measures, needs both good and defective test "
            "images, and nothing was trained:\n  "
            + "\n  ".join(one_kind)
            + "\nor leave such sets out of --data (a photo suite: make it again with --good "
            "and --defect of at least 1)"
        )
    for test in tests if pixel_size is not None else []:
        _check_pixel_metrics(test.samples, pixel_size)
    return counts


def check_enough_for_auto(sets: list[dict], counts: list[int], config_of) -> None:
    """Refuse sets with too few training images for `auto` (`detectors.auto.check_enough`),
    when it is in --methods, before the methods listed before it train: it failed after them.
    `config_of(ds)`: the Config the benchmark trains auto with on set `ds`."""
    from anomaly.detectors.auto import MIN_IMAGES
    from anomaly.train import split_indices

    few = []
    for ds, n in zip(sets, counts):
        config = config_of(ds)
        fits_on = len(split_indices(n, config.val_fraction, config.seed)[0])
        if fits_on < MIN_IMAGES:
            few.append(f"{ds['path']}: {n} training images, {fits_on} once some are held out")
    if few:
        raise BenchmarkError(
            f"auto needs at least {MIN_IMAGES} training images to fit on (it holds some out "
            "for its synthetic defects), and nothing was trained:\n  "
            + "\n  ".join(few)
            + "\nleave auto out of --methods, or such sets out of --data"
        )


def _check_pixel_metrics(samples, pixel_size: int | str) -> None:
    from anomaly.pixel_eval import FULL, check_memory, full_size
    from anomaly.safe_files import available_memory

    masks = [s.mask_path for s in samples]
    hw = full_size(masks, [s.path for s in samples]) if pixel_size == FULL else None
    if any(masks):
        check_memory(len(samples), hw or (int(pixel_size),) * 2, available_memory())


# ---------------------------------------------------------------------------------------------
# Methods: names it knows, each once, and every +kmeans row after the row it clusters
# ---------------------------------------------------------------------------------------------


def _in_order(methods: list[str]) -> list[str]:
    """`methods` with each +kmeans row's source row just before it, and each row once."""
    fixed: list[str] = []
    for m in methods:
        source = m.removesuffix("+kmeans")
        if m != source and source not in fixed:
            fixed.append(source)
        if m not in fixed:
            fixed.append(m)
    return fixed


def check_methods(methods, kept=None) -> None:
    """Refuse, before anything runs, `--methods` the benchmark would fail on only when their turn
    came: a name it does not know (it knows a method, the original recipe `unet_original`, and
    `<ae|unet|vae|unet_original>+kmeans`), plain `kmeans` (it needs a run to cluster), a name
    given twice (one run folder each), and a `<row>+kmeans` without its row before it in the list
    (it clusters that row's run, trained by this benchmark; `kept(row)` True: a run of that row
    already in --out, trained alike, which it may cluster instead)."""
    from anomaly.config import METHODS

    methods = list(methods)
    unknown = [
        m
        for m in methods
        if not (m in METHODS or m == "unet_original" or m.removesuffix("+kmeans") in KMEANS_SOURCES)
    ]
    if unknown:
        raise BenchmarkError(
            f"unknown methods {unknown}: choose from {', '.join(METHODS)}, unet_original, and "
            + ", ".join(f"{s}+kmeans" for s in KMEANS_SOURCES)
        )
    if "kmeans" in methods:
        raise BenchmarkError(
            "--methods kmeans: k-means clusters the encoder features of another run, so the "
            "benchmark names it after that row: "
            + ", ".join(f"{s}+kmeans" for s in KMEANS_SOURCES)
            + " (after its row in --methods, e.g. --methods ae ae+kmeans); nothing was trained"
        )
    twice = sorted({m for m in methods if methods.count(m) > 1})
    if twice:
        raise BenchmarkError(
            f"--methods names {', '.join(twice)} more than once (each method has one run folder "
            "and one row); name each once. Nothing was trained"
        )
    late = [
        f"{m} clusters the encoder features of the {s} row, which comes "
        + ("after it" if s in methods else "nowhere in --methods")
        for m in methods
        if (s := m.removesuffix("+kmeans")) != m
        and s not in methods[: methods.index(m)]
        and not (s not in methods and kept is not None and kept(s))
    ]
    if late:
        raise BenchmarkError(
            "; ".join(late)
            + ". Put each row before its +kmeans row: --methods "
            + " ".join(_in_order(methods))
            + " (a row left out is clustered from --out only when its run there was trained "
            "with the same data, seed and settings). Nothing was trained"
        )


def check_seed(seed: int) -> None:
    """Refuse a --seed the methods cannot take (`Config`'s range), before anything runs."""
    from anomaly.config import Config

    Config(seed=seed).validate()


def check_curve_method(method: str) -> None:
    """Refuse, before the curve's folder is made, a `--method` its every point would fail on: the
    curve fits a method on its own (`unet+kmeans`: a UNet, then k-means on its encoder maps)."""
    from anomaly.config import METHODS

    known = [m for m in METHODS if m != "kmeans"] + ["unet+kmeans"]
    if method not in known:
        why = " (k-means needs a run to cluster)" if method.endswith("kmeans") else ""
        raise BenchmarkError(
            f"--method {method}: the train-size curve fits one of {', '.join(known)}{why}; "
            "nothing was trained"
        )
