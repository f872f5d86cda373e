"""Does a patch classifier trained on synthetic quiet defects help `patchknn` on photos? (No.)

    python benchmarks/synthetic_head.py --suite data/photos
    python benchmarks/synthetic_head.py --suite data/photos --sets page tissue --source draem

A probe for a possible next step of issue 12 (not used by any method yet). Per set of the suite,
with auto's 448 px candidate (`anomaly.detectors.auto.FINE_448`):

1. fit `patchknn` on 80 % of the training images (seeded split); hold out the rest;
2. make `--reps` synthetic defects of each held-out image (`--source alter`: the quiet local
   ones of `anomaly.synthetic.alter`; `draem`: DRAEM's pasted Perlin blobs, `synthesize`;
   `both`: one of each);
3. fit a logistic regression (class-balanced, L2 strength `--C`) on patch features: each patch's
   whitened feature and the log of its distance to the memory bank; negatives are every patch of
   the clean held-out images, positives the patches at least half inside a synthetic mask;
4. score the test images three ways, each patch map smoothed and reduced to an image score as
   `patchknn` does (the 448 px candidate's smoothing and border): the k-NN distance (`knn`), the
   classifier's logit (`head`), and their sum after each is standardised by the held-out clean
   images' image scores (`fused`). With `--refit` the test images are scored with a bank of
   all the training images instead (as `auto` ships the candidate); the classifier and the
   standardisation stay those fitted with the 80 % bank. `--folds 5` cross-fits: each fifth of
   the training images is held out in turn against a bank of the other four fifths, one
   classifier learns from all five, and the test images meet a bank of all the images.

Result (docs/measurements.md): cross-fitted, the fused score is no better than the distance.

Prints image AUROC per set and way, with the quiet kinds (blur, stain, discolour) apart, then the
mean and the worst set per way. Numbers are deterministic for a given suite and seed.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as every command runs (anomaly/__init__.py)

import numpy as np
import torch
import torch.nn.functional as F

WAYS = ("knn", "head", "fused")
QUIET = ("blur", "stain", "discolour")


def _stack(data) -> torch.Tensor:
    return torch.stack([data[i]["image"] for i in range(len(data))])


def run_set(
    folder: Path, source: str, reps: int, c: float, seed: int, refit: bool, folds: int
) -> dict:
    """Image AUROC of the three ways on one set, overall and per quiet kind."""
    from sklearn.linear_model import LogisticRegression

    from anomaly.config import Config
    from anomaly.data import AnomalyDataset
    from anomaly.detectors.auto import FINE_448
    from anomaly.detectors.patchknn import PatchKNN, map_matrix
    from anomaly.maps import image_score
    from anomaly.metrics import image_auroc
    from anomaly.synthetic import alter, synthesize

    settings = {k: v for k, v in FINE_448.items() if k != "method"}
    config = Config.for_method("patchknn", seed=seed, **settings).validate()
    shape = {"size": config.size, "channels": config.channels, "decode": config.decode}
    train, test = AnomalyDataset(folder, "train", **shape), AnomalyDataset(folder, "test", **shape)
    images = _stack(train)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=gen)
    n = len(images)

    def fit(x: torch.Tensor) -> PatchKNN:
        detector = PatchKNN(config)
        return detector.fit([{"image": image} for image in x])

    def features(detector: PatchKNN, x: torch.Tensor) -> torch.Tensor:
        """[B, h, w, D + 1]: whitened patch features and log distance to the bank."""
        out = []
        for chunk in x.split(8):
            dist = detector.patch_scores(chunk).clamp(min=1e-6).log()
            out.append(torch.cat([detector.embed(chunk), dist.unsqueeze(-1)], -1))
        return torch.cat(out)

    clean, positives = [], []  # per held-out fifth: its clean features; synthetic patches
    for k in range(folds):
        lo, hi = k * n // 5, (k + 1) * n // 5
        held = images[order[lo:hi]]
        detector = fit(images[torch.cat([order[:lo], order[hi:]])])
        clean.append(features(detector, held))
        for _ in range(reps):
            for kind in ("alter", "draem") if source == "both" else (source,):
                if kind == "alter":
                    fake, masks = alter(held, gen)
                else:
                    fake, masks = synthesize(held, gen)[:2]
                f = features(detector, fake)
                cover = F.adaptive_avg_pool2d(masks[:, None].float(), f.shape[1:3])[:, 0]
                positives.append(f[cover >= 0.5])
    negatives = torch.cat([f.flatten(0, 2) for f in clean])
    x = torch.cat([negatives, *positives]).double().numpy()
    y = np.r_[np.zeros(len(negatives)), np.ones(len(x) - len(negatives))]
    mu, sd = x.mean(0), x.std(0) + 1e-9
    clf = LogisticRegression(C=c, class_weight="balanced", max_iter=500).fit((x - mu) / sd, y)
    weight = torch.tensor(clf.coef_[0] / sd, dtype=torch.float32)
    bias = float(clf.intercept_[0] - (clf.coef_[0] * mu / sd).sum())
    side = images.shape[-1]

    def image_scores(f: torch.Tensor) -> dict[str, np.ndarray]:
        patches = {"knn": f[..., -1].exp(), "head": f @ weight + bias}
        rows = map_matrix(side, f.shape[1], config.smooth_sigma)
        cols = map_matrix(side, f.shape[2], config.smooth_sigma)
        return {
            k: image_score(rows @ p @ cols.T, config.score_topk, config.score_border).numpy()
            for k, p in patches.items()
        }

    ref = image_scores(torch.cat(clean))  # every held-out image against the bank it was out of
    if refit:  # the bank from every training image; the classifier and `ref` stay as they are
        detector = fit(images)
    scores = image_scores(features(detector, _stack(test)))
    scores["fused"] = sum(
        (scores[k] - ref[k].mean()) / (ref[k].std() + 1e-9) for k in ("knn", "head")
    )
    labels = np.array([test[i]["label"] for i in range(len(test))])
    kinds = np.array([test[i]["defect"] for i in range(len(test))])
    good = kinds == "good"
    row = {}
    for way in WAYS:
        s = scores[way]
        row[way] = image_auroc(labels, s)
        for kind in QUIET:
            if (kinds == kind).any():
                pick = good | (kinds == kind)
                row[f"{way} {kind}"] = image_auroc(labels[pick], s[pick])
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", required=True, help="a photo suite folder (make-photos ROOT)")
    p.add_argument("--sets", nargs="+", help="only these sets")
    p.add_argument("--source", choices=("alter", "draem", "both"), default="alter")
    p.add_argument("--reps", type=int, default=3, help="synthetic defects per held-out image")
    p.add_argument("--C", type=float, default=0.1, help="inverse L2 strength of the classifier")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--folds",
        type=int,
        default=1,
        choices=range(1, 6),
        help="train the classifier on this many of the five held-out fifths, each against the "
        "bank of the other images (5 = cross-fitting; implies --refit)",
    )
    p.add_argument(
        "--refit",
        action="store_true",
        help="score the test images with a bank of all training images (the held-out too)",
    )
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    folders = [
        d
        for d in sorted(Path(args.suite).iterdir())
        if (d / "train").is_dir() and (not args.sets or d.name in args.sets)
    ]
    if not folders:
        raise SystemExit(f"no sets with a train/ folder under {args.suite}")
    cols = [*WAYS, *(f"{w} {k}" for w in ("knn", "fused") for k in QUIET)]
    refit = args.refit or args.folds > 1
    print(
        f"source {args.source}, {args.reps} per held-out image, C {args.C}, seed {args.seed}, "
        f"classifier on {args.folds} held-out fifth(s)"
        + (", test images against a bank of all training images" if refit else "")
    )
    print("| set | " + " | ".join(cols) + " |")
    print("|" + "---|" * (len(cols) + 1))
    rows = {}
    for folder in folders:
        rows[folder.name] = row = run_set(
            folder, args.source, args.reps, args.C, args.seed, refit, args.folds
        )
        cells = [f"{row[c]:.3f}" if c in row else "-" for c in cols]
        print(f"| {folder.name} | " + " | ".join(cells) + " |", flush=True)
    for label, pick in (("mean", np.mean), ("worst", np.min)):
        cells = [f"{pick([r[w] for r in rows.values()]):.3f}" for w in WAYS]
        print(f"| {label} | " + " | ".join(cells) + " |" + " |" * (len(cols) - len(WAYS)))


if __name__ == "__main__":
    main()
