"""patchknn's coarse-to-fine search (`config.search_refine`, `anomaly.detectors.knn.coarse_to_fine`):
which patches it searches, what the others get, ties, and runs made before it."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from anomaly.config import Config
from anomaly.detectors.knn import coarse_to_fine, nearest_distances


class Counting:
    """A search that records every query it was given (as rows of the feature grid)."""

    def __init__(self, bank: torch.Tensor) -> None:
        self.bank, self.sq, self.seen = bank, (bank * bank).sum(1), []

    def __call__(self, queries: torch.Tensor) -> torch.Tensor:
        self.seen.append(queries.clone())
        return nearest_distances(queries, self.bank, self.sq)


def _grid(h: int, w: int, b: int = 2, d: int = 6, seed: int = 0) -> torch.Tensor:
    """Smooth random features [b, h, w, d]: neighbouring patches are alike, as a backbone's."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(b, d, max(2, h // 4), max(2, w // 4), generator=gen)
    smooth = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    smooth[:, 0] += 1e-3 * torch.arange(h * w).view(h, w)  # no two patches alike
    return smooth.permute(0, 2, 3, 1)


def _searched_cells(search: Counting, features: torch.Tensor) -> torch.Tensor:
    """[b, h, w] bool: the patches whose features `search` was given."""
    seen = torch.cat(search.seen)
    flat = features.reshape(-1, features.shape[-1])
    return (flat[:, None] == seen[None]).all(-1).any(1).view(features.shape[:3])


@pytest.mark.parametrize(("h", "w"), [(16, 16), (15, 17), (9, 8)])
def test_searches_the_even_cells_and_the_highest_share_of_the_rest(h, w):
    features, bank = _grid(h, w), torch.randn(40, 6, generator=torch.Generator().manual_seed(1))
    exact = nearest_distances(features.reshape(-1, 6), bank, (bank * bank).sum(1)).view(2, h, w)
    search = Counting(bank)
    out = coarse_to_fine(features, search, 0.3)
    searched = _searched_cells(search, features)
    coarse = torch.zeros(h, w, dtype=torch.bool)
    coarse[::2, ::2] = True
    others = h * w - int(coarse.sum())
    assert searched[:, coarse].all()
    assert (searched & ~coarse).sum((1, 2)).tolist() == [round(0.3 * others)] * 2
    # searched patches hold the exact distance, the others lie between their searched neighbours
    torch.testing.assert_close(out[searched], exact[searched])
    lo = -F.max_pool2d(-exact.masked_fill(~coarse, float("inf"))[:, None], 3, 1, 1)[:, 0]
    hi = F.max_pool2d(exact.masked_fill(~coarse, -1.0)[:, None], 3, 1, 1)[:, 0]
    rest = ~searched & ~coarse
    assert (out[rest] >= lo[rest] - 1e-5).all() and (out[rest] <= hi[rest] + 1e-5).all()
    # the chosen patches are those whose searched neighbourhood reached highest
    estimate = hi.masked_fill(coarse, -1.0)
    for i in range(2):
        chosen, left = estimate[i][searched[i] & ~coarse], estimate[i][rest[i]]
        assert chosen.min() >= left.max()


def test_a_peak_between_the_searched_patches_is_searched():
    """A defect at an odd row and column, felt by its neighbours too (as a backbone's receptive
    fields overlap): its own distance, not an average of its neighbours'."""
    features = torch.zeros(1, 12, 12, 4)
    features[0, 4:7, 6:9] = 2.0
    features[0, 5, 7] = 5.0
    bank = torch.zeros(3, 4)
    exact = nearest_distances(features.reshape(-1, 4), bank, (bank * bank).sum(1)).view(1, 12, 12)
    out = coarse_to_fine(features, Counting(bank), 0.25)
    assert out[0, 5, 7] == exact[0, 5, 7] == out.max() == 10.0


def test_refine_one_searches_every_patch_once():
    features, bank = _grid(10, 10), torch.randn(30, 6)
    search = Counting(bank)
    out = coarse_to_fine(features, search, 1.0)
    assert sum(len(q) for q in search.seen) == 2 * 10 * 10
    torch.testing.assert_close(
        out, nearest_distances(features.reshape(-1, 6), bank, (bank * bank).sum(1)).view(2, 10, 10)
    )


def test_ties_at_the_cut_go_to_the_first_patches():
    """Equal estimates everywhere: the first patches in reading order are searched, a rule that
    needs no arithmetic, so a traced graph (the ONNX export) chooses the same ones."""
    features = torch.arange(64.0).view(1, 8, 8, 1)  # each patch's feature is its index
    seen = []

    def flat(queries: torch.Tensor) -> torch.Tensor:  # the same distance for every patch
        seen.append(queries[:, 0].long().tolist())
        return torch.ones(len(queries))

    out = coarse_to_fine(features, flat, 0.25)
    coarse = [8 * r + c for r in range(0, 8, 2) for c in range(0, 8, 2)]
    k = round(0.25 * (64 - 16))
    assert seen[0] == coarse
    assert sorted(seen[1]) == [i for i in range(64) if i not in coarse][:k]
    assert (out == 1).all()


def test_grids_too_small_to_thin_are_searched_whole():
    features, bank = _grid(2, 9), torch.randn(5, 6)
    search = Counting(bank)
    coarse_to_fine(features, search, 0.1)
    assert sum(len(q) for q in search.seen) == 2 * 2 * 9


def test_runs_made_before_the_setting_search_every_patch(tmp_path):
    """A run's config.json without search_refine (written before it existed) loads as 1: its
    threshold was calibrated on fully searched maps, and they stay so."""
    config = Config.for_method("patchknn")
    assert config.search_refine < 1
    raw = json.loads(json.dumps(config.__dict__))
    del raw["search_refine"]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    assert Config.load(tmp_path / "config.json").search_refine == 1.0
    with pytest.raises(ValueError, match="--search-refine"):
        Config.for_method("patchknn", search_refine=1.5).validate()
