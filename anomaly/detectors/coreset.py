"""PatchCore's greedy k-center coreset: the memory bank of `patchknn` (and `auto`'s candidates).

Each step adds the patch farthest from those chosen so far, so the bank covers every kind of
normal patch, rare ones included; distances in a fixed random projection (as the paper), and
above `MAX_PART` patches on random parts, each giving its share of the bank, so that the cost
stays linear in the data (`anomaly.detectors.patchknn` says why).
"""

from __future__ import annotations

import math

import torch

PROJECTION_DIM = 128  # coreset distances are computed in a random projection of this size
MAX_PART = 80_000  # patches per coreset part: the greedy search costs bank x part per image set


def greedy_coreset(
    features: torch.Tensor,
    n: int,
    seed: int = 0,
    projection_dim: int = PROJECTION_DIM,
    max_part: int = MAX_PART,
) -> torch.Tensor:
    """Indices of `n` rows of `features` [N, D] chosen by greedy k-center selection.

    Each step adds the row farthest from all rows chosen so far, so the chosen rows cover the
    whole set, rare patches included. Distances are measured after a seeded random Gaussian
    projection to `projection_dim` dimensions (Johnson-Lindenstrauss, as PatchCore). Above
    `max_part` rows, the rows are shuffled into equal parts and each part gives its share of `n`.

    Returns:
        int64 indices [n], in the order they were chosen (part by part).
    """
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
    for p in range(parts):
        rows = order[bounds[p] : bounds[p + 1]] if order is not None else None
        part = features[rows] if rows is not None else features
        z = part @ proj if proj is not None else part
        k = shares[p + 1] - shares[p]
        if k == 0:
            continue
        start = int(torch.randint(len(z), (1,), generator=gen))
        picked = _greedy(z.contiguous(), k, start)
        chosen.append(rows[picked] if rows is not None else picked)
    return torch.cat(chosen)


def _greedy(z: torch.Tensor, k: int, start: int) -> torch.Tensor:
    """Greedy farthest-point selection of k rows of z [N, d], starting from row `start`."""
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
