"""K-means on learned features: the original project's second method, and a version that localises.

k-means is fitted to the features of normal training images, taken from a trained run's encoder
(AE, UNet or VAE; `anomaly.build` loads it from `--from RUN`), at that run's channels and
size (`check_source` refuses others); a test image's score is its distance to the nearest
centroid. `config.kmeans_features` says which features:

- "original": the original project's (its `UNet.forward_features` and `kmeans.py`): the
  bottleneck max-pooled 2x2 once more, flattened, not standardised; Euclidean distance.
- "flat": the flattened bottleneck, each element standardised by its mean and spread over the
  training images, so that no channel dominates the distance by scale alone.
- "cell": k-means at every bottleneck position separately (one cell covers 8x8 pixels of a
  4-level UNet), each channel standardised over the training images at that position.
- "patch" (the project's default): the same per-cell k-means on patch features of the encoder's
  feature maps at 1/2 and 1/4 of the image size (for the UNet its second and third levels),
  each averaged over a 3x3 neighbourhood, the coarser one upsampled to the finer and the two
  concatenated, as PatchCore builds its patch features (Roth et al., "Towards Total Recall in
  Industrial Anomaly Detection", CVPR 2022); a cell covers 2x2 pixels.

For "cell" and "patch", a cell's distance to its nearest centroid, over the square root of the
channels, is the anomaly map (upsampled, smoothed); the image score is the maximum of the map
("patch": of the smoothed map; "cell": over cells). A small defect moves a few cells a lot,
while in a whole-image vector it is diluted by every other cell. The per-cell k-means is Lloyd's
algorithm run for all cells at once (k-means++ starts, the best of three).

`config.k` is the number of clusters; 0 chooses it by rule: the k in 2..10 with the best
silhouette of the training images' vectors (Rousseeuw, "Silhouettes", J. Comput. Appl. Math.
1987), if that silhouette reaches 0.25, below which Kaufman and Rousseeuw ("Finding Groups in
Data", 1990) find no substantial cluster structure; otherwise k = 1 (the distance to the mean).
The vectors are first projected onto the span of the training set, which keeps every distance
between them (so the rule is the same) and makes it cheap for long vectors.
`kmeans_features` "" and `k` 0 under `--recipe original` mean the original's: "original", k = 2.

Every variant returns a per-cell map ("original" and "flat": the bottleneck cells with k = 1),
so the original's k-means, which had none, can be compared on localisation too.

Why "patch": on the cookie benchmark, with two trainings of the UNet and on a benchmark made
with another seed, it ranked images clearly better than the bottleneck alone ("cell", "flat",
"original") and localised better: the finer levels see small defects that the bottleneck blurs
away. On two real-photo sets it did better on one (moon) and ranked at about chance, as the
bottleneck did, on the other (dahlia). Standardising per cell is what makes per-cell distances
work (one scale for all positions, or centroids shared by all cells, ranked far worse), and on
normal cookies the rule finds no cluster structure (k = 1). The numbers are in
docs/measurements.md.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from anomaly.config import Config
from anomaly.detectors.base import Detector
from anomaly.detectors.registry import register
from anomaly.features import local_patch_features
from anomaly.maps import gaussian_blur
from anomaly.terminal import shell_word

K_CANDIDATES = range(2, 11)  # what the k rule tries
MIN_SILHOUETTE = 0.25  # Kaufman and Rousseeuw: below this, no substantial structure
FEATURES = ("original", "flat", "cell", "patch")
PATCH_STRIDES = (2, 4)  # "patch": the encoder maps at 1/2 and 1/4 of the image size
PER_CELL = ("cell", "patch")


def span_coordinates(vectors: np.ndarray | torch.Tensor) -> np.ndarray:
    """Coordinates [N, N] of N vectors in the span of their centred set: the same distances
    between them as the vectors themselves, however long (from the Gram matrix)."""
    x = torch.as_tensor(vectors)
    gram = torch.zeros(len(x), len(x), dtype=torch.float64)
    for part in x.split(1 << 16, dim=1):
        part = part.double()
        part = part - part.mean(0)
        gram += part @ part.T
    values, vecs = torch.linalg.eigh(gram)
    return (vecs * values.clamp(min=0).sqrt()).numpy()


def choose_k(vectors: np.ndarray | torch.Tensor, seed: int = 0) -> int:
    """The k rule: the best-silhouette k in 2..10 if its silhouette is at least 0.25, else 1."""
    from sklearn.cluster import KMeans  # imported here: loading any run needs no sklearn
    from sklearn.metrics import silhouette_score

    points = span_coordinates(vectors)
    best_k, best = 1, MIN_SILHOUETTE
    for k in K_CANDIDATES:
        if k >= len(points):
            break
        labels = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(points)
        score = silhouette_score(points, labels)
        if score >= best:
            best_k, best = k, score
    return best_k


def _capped(k: int, n: int) -> int:
    """k, or the n training images when --k asks for more centres than there are images to
    cluster (each image its own centre: a nearest-neighbour search, not clusters), with a
    warning that says so."""
    if k > n:
        warnings.warn(
            f"--k {k} asks for more centres than the {n} training images it clusters, so k = "
            f"{n}: every training image is its own centre. Give --k {n} or less, or leave --k "
            "out to choose it by rule",
            stacklevel=3,
        )
    return min(k, n)


def _centers(vectors: np.ndarray, k: int, seed: int, n_init: int = 10) -> torch.Tensor:
    """k-means centroids [k, D] of `vectors` [N, D] (k = 1: the mean, without k-means)."""
    k = min(k, len(vectors))
    if k == 1:
        return torch.as_tensor(vectors.mean(0, keepdims=True), dtype=torch.float32)
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(vectors)
    return torch.as_tensor(km.cluster_centers_, dtype=torch.float32)


def cell_kmeans(
    cells: torch.Tensor, k: int, seed: int = 0, restarts: int = 3, iters: int = 50
) -> torch.Tensor:
    """k-means of every cell at once: `cells` [M, N, C] (N vectors at each of M cells) ->
    centroids [M, k, C]. Lloyd's algorithm from k-means++ starts; per cell, the restart with
    the least inertia. k = 1 is the mean."""
    m, n, _ = cells.shape
    k = min(k, n)
    if k == 1:
        return cells.mean(1, keepdim=True)
    g = torch.Generator().manual_seed(seed)
    rows = torch.arange(m)
    best, best_inertia = None, None
    for _ in range(restarts):
        picks = [cells[rows, torch.randint(n, (m,), generator=g)]]
        d2 = (cells - picks[0][:, None]).square().sum(-1)  # [M, N] to the nearest pick
        for _ in range(1, k):
            weights = d2 + 1e-12 * (d2.sum(1, keepdim=True) == 0)  # all equal: uniform
            picks.append(cells[rows, torch.multinomial(weights, 1, generator=g)[:, 0]])
            d2 = torch.minimum(d2, (cells - picks[-1][:, None]).square().sum(-1))
        centers = torch.stack(picks, 1)
        labels = torch.full((m, n), -1)
        active = rows  # the cells whose assignment still changes
        for _ in range(iters):
            part, old = cells[active], centers[active]
            new = torch.cdist(part, old).argmin(2)
            moved = (new != labels[active]).any(1)
            labels[active] = new
            onehot = F.one_hot(new, k).to(cells.dtype)  # [active, N, k]
            counts = onehot.sum(1)[..., None]
            sums = onehot.transpose(1, 2) @ part
            centers[active] = torch.where(counts > 0, sums / counts.clamp(min=1), old)
            active = active[moved]
            if not len(active):
                break
        inertia = torch.cdist(cells, centers).amin(2).square().sum(1)
        if best is None:
            best, best_inertia = centers, inertia
        else:
            better = inertia < best_inertia
            best = torch.where(better[:, None, None], centers, best)
            best_inertia = torch.minimum(inertia, best_inertia)
    return best


def encoder_maps(model: torch.nn.Module, images: torch.Tensor) -> dict[int, torch.Tensor]:
    """The feature maps of `model.forward_features(images)` by their width: at each width, the
    last map a layer gave (for the UNet, the output of each level's double convolution)."""
    found: dict[int, torch.Tensor] = {}

    def keep(_module, _inputs, out) -> None:
        if isinstance(out, torch.Tensor) and out.dim() == 4:
            found[out.shape[-1]] = out

    hooks = [m.register_forward_hook(keep) for m in model.modules() if m is not model]
    try:
        model.forward_features(images)
    finally:
        for hook in hooks:
            hook.remove()
    return found


def _spread(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation along `dim`; the deviation floored at 1e-3 of its mean so
    that constant elements (a dead ReLU) do not blow up."""
    std = x.std(dim, keepdim=True) if x.shape[dim] > 1 else torch.zeros_like(x.mean(dim, True))
    return x.mean(dim, keepdim=True), std.clamp(min=1e-3 * float(std.mean()) + 1e-12)


def encoder_mismatch(
    source: str, trained: Config, config: Config, leave_out: str = ""
) -> str | None:
    """Why a run with `config` cannot take features from the encoder `source` names (`--from
    RUN` here, `--backbone encoder:RUN` for patchknn and flow: `anomaly.build`), trained with
    `trained` (that run's config); None when it has that run's channels and size.

    Its first layer takes only those channels. At another size it runs, but every such encoder
    is an auto-encoder trained from scratch (ae, unet, vae), which learned every part at one
    scale (a 3x3 neighbourhood covers another share of the part): its features are not the ones
    it learned to give, and nothing would say so. `leave_out`: why leaving the flags out gives
    the encoder's settings (kmeans: it takes its --from run's)."""
    wrong = [
        (flag, mine)
        for flag, mine, asked in (
            ("--channels", trained.channels, config.channels),
            ("--size", trained.size, config.size),
        )
        if mine != asked
    ]
    if not wrong:
        return None
    fix = " ".join(f"{flag} {value}" for flag, value in wrong)
    if leave_out:
        fix += f" (or leave {'them' if len(wrong) > 1 else 'it'} out: {leave_out})"
    scale = ""
    if trained.size != config.size:
        scale = ", where it would see every part at another scale than it learned"
        fix += f", or train an ae, unet or vae run at {config.size} px to take them from"
    return (
        f"{source}: its encoder was trained on {trained.channels}-channel images at "
        f"{trained.size} px and takes only those, not {config.channels}-channel ones at "
        f"{config.size} px{scale}; use {fix}"
    )


def check_encoder(
    source: str, trained: Config, config: Config, leave_out: str = "", run: str | None = None
) -> None:
    """ValueError when `encoder_mismatch` finds one: refused rather than silently replaced,
    since the flags were asked for. `run`: a run already trained so (before sizes were
    checked), which loads with a warning at another size and scores as it did; other channels
    cannot run at all."""
    problem = encoder_mismatch(source, trained, config, leave_out)
    if problem and (run is None or trained.channels != config.channels):
        raise ValueError(problem)
    if problem:
        warnings.warn(
            f"{run} was trained before this was refused, and scores as it did: {problem}",
            stacklevel=3,
        )


def check_source(config: Config, source: Config, trained: bool = False) -> None:
    """`check_encoder` for kmeans' --from run; `trained`: this kmeans run is already trained."""
    run = config.source_run or "its source run"
    leave_out = "kmeans takes its --from run's settings"
    check_encoder(
        f"--from {shell_word(run)}",
        source,
        config,
        leave_out,
        "this kmeans run" if trained else None,
    )


@register("kmeans")
class KMeansDetector(Detector):
    """Distance to the nearest k-means centroid of normal encoder features."""

    def __init__(self, config, source=None) -> None:
        super().__init__(config)
        self.source = source  # the trained reconstruction detector whose encoder gives features
        if source is not None and not hasattr(source, "features"):  # before a run folder exists
            raise ValueError(
                f"kmeans needs an ae, unet or vae run; {config.source_run} is a {source.name} run"
            )
        if source is not None:
            check_source(config, source.config)
        original = getattr(config, "recipe", "project") == "original"
        self.kind = config.kmeans_features or ("original" if original else "patch")
        if self.kind not in FEATURES:
            raise ValueError(
                f"--kmeans-features {self.kind!r}: choose one of {', '.join(FEATURES)}"
            )
        self.k = config.k or (2 if original else 0)  # 0: by rule, in fit
        self.centers: torch.Tensor | None = None  # [k, D], or [cells, k, C] per cell
        self.mean: torch.Tensor | None = None  # standardising ("flat"): [D]
        self.scale: torch.Tensor | None = None
        self.cell_mean: torch.Tensor | None = None  # per cell and channel: [cells, 1, C]
        self.cell_scale: torch.Tensor | None = None

    def modules(self) -> dict[str, torch.nn.Module]:
        return self.source.modules() if self.source is not None else {}

    def _load_source(self) -> None:
        if self.source is None:  # anomaly.pipeline.build_detector loads it from --from RUN
            raise ValueError(
                "The kmeans method needs features from a trained run: "
                "train --method kmeans --from RUN (an ae, unet or vae run)"
            )
        if not hasattr(self.source, "features"):
            raise ValueError(
                f"kmeans needs an ae, unet or vae run; {self.config.source_run} is "
                f"a {self.source.name} run"
            )
        self.source.to(self.device)

    @torch.no_grad()
    def _features(self, images: torch.Tensor) -> torch.Tensor:
        """The feature map [B, C, h, w]: the bottleneck, or the patch features ("patch")."""
        if self.kind != "patch":
            return self.source.features(images).float().cpu()
        model = self.source.model
        model.eval()
        found = encoder_maps(model, images)
        widths = [images.shape[-1] // s for s in PATCH_STRIDES]
        if any(w not in found for w in widths):
            raise ValueError(
                f"kmeans --kmeans-features patch needs the encoder's maps at 1/2 and 1/4 of "
                f"the image width ({widths} px); this {self.source.name} run has "
                f"{sorted(found, reverse=True)}. Use --kmeans-features cell"
            )
        return local_patch_features([found[w].float() for w in widths]).cpu()

    def _vectors(self, fmap: torch.Tensor) -> torch.Tensor:
        """Whole-image vectors [B, D] ("original", "flat"; standardised for "flat")."""
        if self.kind == "original":
            return F.max_pool2d(fmap, 2).flatten(1)
        return (fmap.flatten(1) - self.mean) / self.scale

    def _cells(self, fmap: torch.Tensor) -> torch.Tensor:
        """Standardised vectors per cell: [cells, B, C]."""
        b, c, h, w = fmap.shape
        return (fmap.permute(2, 3, 0, 1).reshape(h * w, b, c) - self.cell_mean) / self.cell_scale

    def fit(
        self,
        train_data,
        val_data=None,
        *,
        progress: bool = False,
        resume: bool = False,
        checkpoints=None,
    ):
        self.refuse_resume(resume)
        self._load_source()
        fmap = torch.cat(
            [self._features(batch["image"].to(self.device)) for batch in self.loader(train_data)]
        )
        b, c, h, w = fmap.shape
        self.cell_mean, self.cell_scale = _spread(fmap.permute(2, 3, 0, 1).reshape(h * w, b, c), 1)
        seed = self.config.seed
        if self.kind in PER_CELL:
            cells = self._cells(fmap)  # [cells, B, C]
            del fmap
            if self.k == 0:
                self.k = choose_k(cells.permute(1, 0, 2).reshape(b, -1), seed)
            self.k = _capped(self.k, b)
            self.centers = cell_kmeans(cells, self.k, seed)
        else:
            if self.kind == "flat":
                self.mean, self.scale = (t[0] for t in _spread(fmap.flatten(1), 0))
            vectors = self._vectors(fmap).numpy()
            if self.k == 0:
                self.k = choose_k(vectors, seed)
            self.k = _capped(self.k, len(vectors))
            self.centers = _centers(vectors, self.k, seed)
        return self

    @torch.no_grad()
    def predict_batch(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self._features(images)
        b, c, h, w = fmap.shape
        cells = self._cells(fmap)  # [cells, B, C]
        if self.kind in PER_CELL:
            dist = torch.cdist(cells, self.centers).min(dim=2).values
        else:
            dist = cells.norm(dim=2)  # to the per-cell mean: the map only
        dist = (dist / math.sqrt(c)).T.reshape(b, 1, h, w)
        maps = F.interpolate(dist, size=images.shape[-2:], mode="bilinear", align_corners=False)
        maps = gaussian_blur(maps[:, 0], self.config.smooth_sigma)
        if self.kind == "patch":
            scores = maps.flatten(1).amax(dim=1)
        elif self.kind == "cell":
            scores = dist.flatten(1).amax(dim=1)
        else:
            scores = torch.cdist(self._vectors(fmap), self.centers).min(dim=1).values
        return scores, maps

    def state_dict(self) -> dict:
        from dataclasses import asdict

        state = {
            "source_config": asdict(self.source.config),
            "source": self.source.state_dict(),
            "kind": self.kind,
            "k": self.k,
            "centers": self.centers,
            "cell_mean": self.cell_mean,
            "cell_scale": self.cell_scale,
        }
        if self.kind == "flat":
            state.update(mean=self.mean, scale=self.scale)
        return state

    def load_state_dict(self, state: dict) -> None:
        from anomaly.detectors import get_detector

        if "cell_mean" not in state or (state.get("kind") == "flat" and "mean" not in state):
            raise RuntimeError(
                "this kmeans run was made by an older anomaly (no per-cell "
                "statistics); train it again: train --method kmeans --from "
                "SOURCE_RUN --out RUN"
            )
        source_config = Config(**state["source_config"])
        check_source(self.config, source_config, trained=True)
        self.source = get_detector(source_config.method)(source_config)
        self.source.load_state_dict(state["source"])
        self.source.to(self.device)
        self.kind, self.k, self.centers = state["kind"], int(state["k"]), state["centers"]
        self.cell_mean, self.cell_scale = state["cell_mean"], state["cell_scale"]
        self.mean, self.scale = state.get("mean"), state.get("scale")
