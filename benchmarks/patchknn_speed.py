"""Speed, memory and accuracy of `patchknn` at several image sizes, or settings against
MobileNetV2 in interleaved rounds (`--race`).

    python benchmarks/patchknn_speed.py                      # 300 synthetic textures in memory
    python benchmarks/patchknn_speed.py --data data/cookies  # an MVTec AD style folder
    python benchmarks/patchknn_speed.py --data data/cookies --race default speed-ort

For each size it fits `patchknn` at its defaults (or `--backbone`, `--coreset-ratio`,
`--channels` as given) on the training images (300 by default), predicts the test images, and
prints fit seconds, predict images/s (wall clock) and CPU milliseconds per predicted image (all
threads), the peak resident memory of a fresh process, the memory bank size, and image / pixel
AUROC. Each size runs in its own process so the peaks do not mix.

`--race SETTING ...` (names from `benchmarks/photos_sweep.py`'s SETTINGS) fits each setting on
--data's train/good and then, in `--rounds` interleaved rounds (the order rotates), times each
setting's whole `predict` on the test images already decoded in memory, next to three MobileNetV2
yardsticks on the same images: torchvision's model as anomalib's PatchCore runs it (features.0-13,
eager, batch norms unfolded, ImageNet normalisation), torchvision's whole model (classifier
included), and the package's folded features.0-17 (`photos_sweep.py`'s `mnv2_ms`). It prints CPU
ms per image (median and minimum over the rounds; all threads of this process), its system
part, each setting's ratio to each yardstick's median, and the ratio of user time alone to
anomalib's features.0-13's (torch's page faults, which what ran before in the process moves, are
system time: docs/measurements.md), with image AUROC and fit time. `--search` also times
each setting's nearest-neighbour search alone (`<setting> search`: `patch_scores` on the test
images' patch features, extracted once before the rounds), in the same rounds.

Without --data the images are smooth random grayscale textures, made at 256 px and resized, so
every size sees the same images; a third of the test images get a small defect (a dark hole, a
thin bright scratch or a square of coarse grain) with its mask.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as every command runs (anomaly/__init__.py)

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

BASE = 256  # synthetic images are drawn at this size, then resized


class SyntheticTextures(Dataset):
    """Smooth random textures (two octaves of noise plus fine grain), optionally with defects."""

    def __init__(self, n: int, size: int, defective: int = 0, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)

        def noise(cells: int) -> torch.Tensor:
            z = torch.randn(n, 1, cells, cells, generator=gen)
            return F.interpolate(z, size=(BASE, BASE), mode="bicubic", align_corners=False)

        img = 0.5 + 0.08 * noise(6) + 0.05 * noise(24) + 0.03 * noise(96)
        masks = torch.zeros(n, 1, BASE, BASE)
        yy, xx = torch.meshgrid(torch.arange(BASE), torch.arange(BASE), indexing="ij")
        self.labels, self.defects = [0] * n, ["good"] * n
        for i in range(n - defective, n):
            kind = ("hole", "scratch", "grain")[i % 3]
            cy, cx = (torch.rand(2, generator=gen) * (BASE - 80) + 40).tolist()
            if kind == "hole":  # a sharp dark disc
                m = ((yy - cy) ** 2 + (xx - cx) ** 2 < 10.0**2).float()
                img[i, 0] = img[i, 0] * (1 - m) + 0.05 * m
            elif kind == "scratch":  # a thin bright line
                a = float(torch.rand(1, generator=gen)) * math.pi
                along = (xx - cx) * math.cos(a) + (yy - cy) * math.sin(a)
                across = -(xx - cx) * math.sin(a) + (yy - cy) * math.cos(a)
                m = ((along.abs() < 30) & (across.abs() < 2)).float()
                img[i, 0] += 0.35 * m
            else:  # a square of coarse grain that the normal texture never has
                m = (((yy - cy).abs() < 14) & ((xx - cx).abs() < 14)).float()
                img[i, 0] += 0.25 * m * torch.randn(BASE, BASE, generator=gen).sign()
            masks[i, 0] = m
            self.labels[i], self.defects[i] = 1, kind
        self.images = F.interpolate(
            img.clamp(0, 1), size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        self.masks = (
            F.interpolate(
                masks, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )[:, 0]
            > 0.5
        ).float()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {
            "image": self.images[i],
            "mask": self.masks[i],
            "label": self.labels[i],
            "defect": self.defects[i],
            "path": f"synthetic/{i:04d}.png",
        }


def datasets(args, size: int, channels: int):
    if args.data:
        from anomaly.config import NEW_RUNS
        from anomaly.data import AnomalyDataset

        shape = {"size": size, "channels": channels, "decode": NEW_RUNS["decode"]}  # the run's
        train, test = (
            AnomalyDataset(args.data, "train", **shape),
            AnomalyDataset(args.data, "test", **shape),
        )
        return train, test
    return (
        SyntheticTextures(args.train, size, seed=1),
        SyntheticTextures(args.test, size, defective=args.test // 3, seed=2),
    )


def run_one(args, size: int) -> dict:
    """Fit and predict at one size, in this (fresh) process."""
    from anomaly.config import Config
    from anomaly.detectors.patchknn import PatchKNN
    from anomaly.metrics import image_auroc, pixel_auroc

    torch.set_num_threads(args.threads)
    config = Config.for_method(  # patchknn's defaults; flags given override them
        "patchknn",
        size=size,
        channels=args.channels or (None if args.data else 1),  # the textures are grey
        backbone=args.backbone,
        coreset_ratio=args.coreset_ratio,
        batch_size=args.batch_size,
        seed=0,
    )
    train, test = datasets(args, size, config.channels)
    detector = PatchKNN(config)
    for data in (train, test):  # decode and cache the images before timing (the folder data
        for _ in detector.loader(data):  # set caches them; synthetic ones live in memory)
            pass
    t0 = time.perf_counter()
    detector.fit(train)
    fit_s = time.perf_counter() - t0
    detector.predict_batch(test[0]["image"][None])  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    pred = detector.predict(test)
    predict_s, predict_cpu = time.perf_counter() - t0, time.process_time() - c0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    row = {
        "size": size,
        "train": len(train),
        "fit_s": fit_s,
        "img_per_s": len(test) / predict_s,
        "cpu_ms_img": 1000 * predict_cpu / len(test),
        "peak_mb": peak_mb,
        "bank": len(detector.bank),
        "patches": len(train) * (size // detector.extractor.stride) ** 2,
    }
    if 0 < pred.labels.sum() < len(pred.labels):
        row["image_auroc"] = image_auroc(pred.labels, pred.scores)
        if pred.has_masks and hasattr(test, "samples"):  # as `score`: at 256 px (pixel_eval)
            import numpy as np

            from anomaly.pixel_eval import at_eval_size

            pixels = at_eval_size(pred, [s.mask_path for s in test.samples])
            known = np.ones(len(pred), bool) if pred.mask_known is None else pred.mask_known
            row["pixel_auroc"] = pixel_auroc(pixels.masks[known], pixels.maps[known])
    return row


class _InMemory(Dataset):
    """Decoded test items, so that `predict` times no decoding."""

    def __init__(self, items: list[dict]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def yardsticks(batch: int) -> dict:
    """name -> images [B, 3, H, W] in [0, 1] -> None: the MobileNetV2 forward passes."""
    import torchvision

    from anomaly.features import IMAGENET_MEAN, IMAGENET_STD, MobileNetV2, mobilenet_v2_weights

    net = torchvision.models.mobilenet_v2(weights=None)
    net.load_state_dict(torch.load(mobilenet_v2_weights(), map_location="cpu", weights_only=True))
    net = net.eval().requires_grad_(False)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    folded = MobileNetV2(("features.17",))

    def run(model):
        @torch.inference_mode()
        def forward(images):
            for chunk in images.split(batch):
                model((chunk - mean) / std)

        return forward

    def run_folded(images):
        with torch.inference_mode():
            for chunk in images.split(8):  # as photos_sweep.reference_ms
                folded(chunk)

    return {
        "mnv2 0-13 (anomalib)": run(net.features[:14]),
        "mnv2 whole": run(net),
        "mnv2 folded 0-17": run_folded,
    }


def search_only(detector, test: _InMemory):
    """() -> None: the detector's search (`grid_distances`) on `test` in batches of
    `config.batch_size`, its features extracted once here."""
    images = torch.stack([it["image"] for it in test.items]).split(detector.config.batch_size)
    feats = [detector.embed(batch) for batch in images]

    def run() -> None:
        with torch.inference_mode():
            for features in feats:
                detector.grid_distances(features)

    run()  # warm-up: builds the search's session
    return run


def race(args) -> None:
    """Fit each setting, then time predicts and yardsticks in interleaved rounds."""
    import statistics

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from cpu_clocks import clocks
    from photos_sweep import SETTINGS

    from anomaly.config import Config
    from anomaly.data import AnomalyDataset
    from anomaly.detectors import get_detector
    from anomaly.metrics import image_auroc

    torch.set_num_threads(args.threads)
    entries, info, cache = {}, {}, {}
    for name in args.race:
        setting = SETTINGS[name]
        overrides = {k: v for k, v in setting.items() if k != "method"}
        config = Config.for_method(setting["method"], **overrides).replace(device="cpu")
        key = (config.size, config.channels)
        if key not in cache:
            shape = {"size": config.size, "channels": config.channels, "decode": config.decode}
            train = AnomalyDataset(args.data, "train", **shape)
            test = AnomalyDataset(args.data, "test", **shape)
            cache[key] = (train, _InMemory([test[i] for i in range(len(test))]))
        train, test = cache[key]
        detector = get_detector(config.method)(config)
        t0, c0 = time.perf_counter(), time.process_time()
        detector.fit(train)
        fit = (time.perf_counter() - t0, time.process_time() - c0)
        pred = detector.predict(test)  # also the warm-up
        info[name] = {"fit_s": fit[0], "fit_cpu_s": fit[1], "image_auroc": None}
        if 0 < pred.labels.sum() < len(pred.labels):
            info[name]["image_auroc"] = image_auroc(pred.labels, pred.scores)
        entries[name] = lambda d=detector, t=test: d.predict(t)
        if args.search and hasattr(detector, "patch_scores"):
            entries[f"{name} search"] = search_only(detector, test)
    size, _ = next(iter(cache))  # the yardsticks see the first setting's images
    images = torch.stack([it["image"] for it in next(iter(cache.values()))[1].items])
    n = len(images)
    refs = yardsticks(args.batch_size)
    for name, forward in refs.items():
        forward(images[: args.batch_size])  # warm-up
        entries[name] = lambda f=forward: f(images)
    names = list(entries)
    cpu, user, system = ({k: [] for k in names} for _ in range(3))
    for r in range(args.rounds):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            start = clocks()
            entries[k]()
            c, _, u, s = (b - a for a, b in zip(start, clocks(), strict=True))
            cpu[k].append(1000 * c / n)
            user[k].append(1000 * u / n)
            system[k].append(1000 * s / n)
    med = {k: statistics.median(v) for k, v in cpu.items()}
    med_user = {k: statistics.median(v) for k, v in user.items()}
    first = next(iter(refs))  # anomalib's features.0-13: the user-time ratio's yardstick
    print(
        f"{n} test images of {args.data}, yardsticks at {size} px (settings at their own "
        f"sizes), {args.rounds} interleaved rounds, {args.threads} threads, torch "
        f"{torch.__version__}, load average after {os.getloadavg()[0]:.1f}"
    )
    head = ["name", "image AUROC", "fit s (CPU s)", "CPU ms/img median (min)", "of it system ms"]
    head += [*refs, f"user-time to {first}"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for k in names:
        i = info.get(k, {})
        auroc = "-" if i.get("image_auroc") is None else f"{i['image_auroc']:.3f}"
        fit = f"{i['fit_s']:.1f} ({i['fit_cpu_s']:.1f})" if i else "-"
        ratios = [f"{med[k] / med[ref]:.2f}" for ref in refs]
        ratios.append(f"{med_user[k] / med_user[first]:.2f}")
        print(
            f"| {k} | {auroc} | {fit} | {med[k]:.2f} ({min(cpu[k]):.2f}) | "
            f"{statistics.median(system[k]):.2f} | {' | '.join(ratios)} |"
        )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="an MVTec AD style folder (default: synthetic textures)")
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 224, 256])
    p.add_argument("--train", type=int, default=300, help="synthetic training images")
    p.add_argument("--test", type=int, default=150, help="synthetic test images")
    p.add_argument("--channels", type=int, help="default: patchknn's (1 for the textures)")
    p.add_argument("--backbone", help="default: patchknn's")
    p.add_argument("--coreset-ratio", type=float, help="default: patchknn's")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--race", nargs="+", help="photos_sweep setting names to time in rounds")
    p.add_argument("--rounds", type=int, default=5, help="--race: interleaved rounds")
    p.add_argument("--search", action="store_true", help="--race: also time each search alone")
    args = p.parse_args(argv)
    if args.race:
        if not args.data:
            p.error("--race needs --data (a folder with train/good and test)")
        race(args)
        return

    cols = [
        "size",
        "train",
        "fit_s",
        "img_per_s",
        "cpu_ms_img",
        "peak_mb",
        "patches",
        "bank",
        "image_auroc",
        "pixel_auroc",
    ]
    print(
        f"patchknn at its defaults but backbone {args.backbone or '-'}, coreset ratio "
        f"{args.coreset_ratio or '-'} ('-': the default), "
        f"{args.threads} threads, torch {torch.__version__}, load average before "
        f"{os.getloadavg()[0]:.1f} (other processes slow every number down)"
    )
    print(" | ".join(f"{c:>11}" for c in cols))
    for size in args.sizes:
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            row = pool.submit(run_one, args, size).result()
        print(
            " | ".join(
                f"{row[c]:>11.3f}" if isinstance(row.get(c), float) else f"{row.get(c, '-'):>11}"
                for c in cols
            )
        )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
