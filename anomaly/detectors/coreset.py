"""PatchCore's greedy k-center coreset: the memory bank of `patchknn` (and `auto`'s candidates).

Each step adds the patch farthest from those chosen so far, so the bank covers every kind of
normal patch, rare ones included; distances in a fixed random projection (as the paper), and
above `MAX_PART` patches on random parts, each giving its share of the bank, so that the cost
stays linear in the data (`anomaly.detectors.patchknn` says why). On the CPU the search makes a
pass over a part's rows only every `WINDOW` picks or so (`_greedy_pooled`): the same rows as a
pass per pick (two near-tied picks, equal to float32's rounding, may come in the other order),
7x faster on the cookies (docs/measurements.md).
"""

from __future__ import annotations

import math

import torch

PROJECTION_DIM = 128  # coreset distances are computed in a random projection of this size
MAX_PART = 80_000  # patches per coreset part: the greedy search costs bank x part per image set
POOL = 2048  # farthest rows measured against each pick between passes (`_greedy_pooled`)
WINDOW = 128  # picks at most between two passes over all rows
PASS_ROWS = 8192  # rows per matrix product in a pass: at most 4 MB of distances


def greedy_coreset(
    features: torch.Tensor,
    n: int,
    seed: int = 0,
    projection_dim: int = PROJECTION_DIM,
    max_part: int = MAX_PART,
    progress: bool = False,
) -> torch.Tensor:
    """Indices of `n` rows of `features` [N, D] chosen by greedy k-center selection.

    Each step adds the row farthest from all rows chosen so far, so the chosen rows cover the
    whole set, rare patches included. Distances are measured after a seeded random Gaussian
    projection to `projection_dim` dimensions (Johnson-Lindenstrauss, as PatchCore). Above
    `max_part` rows, the rows are shuffled into equal parts and each part gives its share of `n`.

    Returns:
        int64 indices [n], in the order they were chosen (part by part). `progress`: a bar of
        the picks (on a large training set, most of a fit's time after its features).
    """
    from tqdm.auto import tqdm

    num, dim = features.shape
    n = max(1, min(int(n), num))
    gen = torch.Generator().manual_seed(int(seed))
    device = features.device
    proj = None
    if dim > projection_dim:
        proj = (torch.randn(dim, projection_dim, generator=gen) / math.sqrt(projection_dim)).to(
            device
        )
    parts = math.ceil(num / max_part)
    order = torch.randperm(num, generator=gen).to(device) if parts > 1 else None
    bounds = [round(i * num / parts) for i in range(parts + 1)]
    shares = [round(i * n / parts) for i in range(parts + 1)]
    chosen = []
    with tqdm(total=n, desc="coreset", unit="pick", disable=not progress, leave=False) as bar:
        for p in range(parts):
            rows = order[bounds[p] : bounds[p + 1]] if order is not None else None
            part = features[rows] if rows is not None else features
            z = part @ proj if proj is not None else part
            k = shares[p + 1] - shares[p]
            if k == 0:
                continue
            start = int(torch.randint(len(z), (1,), generator=gen))
            picked = _greedy(z.contiguous(), k, start, bar.update)
            chosen.append(rows[picked] if rows is not None else picked)
    return torch.cat(chosen)


TICK = 256  # picks between two updates of the progress bar


def _greedy(z: torch.Tensor, k: int, start: int, tick=None) -> torch.Tensor:
    """Greedy farthest-point selection of k rows of z [N, d], starting from row `start`;
    `tick(m)`, when given, is told of every `TICK` picks (and of the last ones)."""
    if z.device.type != "cpu":  # one pass over z per pick: fast on a GPU, and no syncs
        picked = _greedy_passes(z, k, start)
    else:
        picked = _greedy_pooled(z, k, start, tick)
    if tick is not None and z.device.type != "cpu":
        tick(k)
    return picked


def _greedy_passes(z: torch.Tensor, k: int, start: int) -> torch.Tensor:
    """`_greedy` measuring every row's distance to each new pick: k passes over z."""
    sq = (z * z).sum(1)
    picked = torch.empty(k, dtype=torch.long, device=z.device)
    idx = torch.tensor(start, device=z.device)
    min_dist = torch.full_like(sq, float("inf"))
    for i in range(k):
        picked[i] = idx
        dist = torch.mv(z, z[idx]).mul_(-2).add_(sq).add_(sq[idx])  # squared distance to idx
        torch.minimum(min_dist, dist, out=min_dist)
        idx = torch.argmax(min_dist)
    return picked


def _greedy_pooled(z: torch.Tensor, k: int, start: int, tick=None) -> torch.Tensor:
    """`_greedy` with the picks of `_greedy_passes` (up to the order of near-ties in float32),
    in a few passes over z instead of k.

    A pass over z (N x d floats) per pick is bound by memory bandwidth once z outgrows the CPU's
    cache. Here a pass gives every row its squared distance to the nearest pick so far and takes
    the `POOL` farthest rows aside; until the next pass each pick is measured against those rows
    only, which is exact while the farthest of them stays farther than the row just outside the
    pool was at the pass (a row's distance to the picks only falls). A pass is made again when
    that fails or `WINDOW` picks have gone by, as one matrix product with all of them. Ties go to
    the lowest row, as `torch.argmax` does.
    """
    num = len(z)
    sq = (z * z).sum(1)
    picked = torch.empty(k, dtype=torch.long)
    nearest = torch.full_like(sq, math.inf)  # squared distance to the nearest pick of the passes
    since: list[int] = []  # picks since the last pass
    idx, outside, told = int(start), math.inf, 0
    rows = pool = pool_sq = far = torch.empty(0)  # the pool: its rows, z, squares, distances
    for i in range(k):
        picked[i] = idx
        since.append(idx)
        if tick is not None and ((i + 1) % TICK == 0 or i == k - 1):
            tick(i + 1 - told)
            told = i + 1
        if i == k - 1:
            break
        if len(rows) and len(since) < WINDOW:
            dist = torch.mv(pool, z[idx]).mul_(-2).add_(pool_sq).add_(sq[idx])
            torch.minimum(far, dist, out=far)
            j = int(torch.argmax(far))
            if float(far[j]) > outside:  # no row outside the pool can be farther
                idx = int(rows[j])
                continue
        recent = torch.tensor(since)
        for first in range(0, num, PASS_ROWS):
            part = slice(first, first + PASS_ROWS)
            dist = torch.addmm(sq[recent], z[part], z[recent].T, alpha=-2).add_(sq[part, None])
            torch.minimum(nearest[part], dist.amin(1), out=nearest[part])
        since = []
        if num > POOL:
            top = torch.topk(nearest, POOL + 1)
            outside, rows = float(top.values[-1]), top.indices[:-1].sort().values
        else:
            outside, rows = -math.inf, torch.arange(num)
        pool, pool_sq, far = z[rows], sq[rows], nearest[rows]
        idx = int(torch.argmax(nearest))
    return picked
