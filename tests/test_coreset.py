"""The greedy k-center coreset: the pooled search picks exactly the rows of one pass per pick."""

from __future__ import annotations

import pytest
import torch

from anomaly.detectors import coreset


def _clusters(rows: int, dim: int, seed: int) -> torch.Tensor:
    """Rows in tight clusters of unequal size plus a few far outliers, as patch features are."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(12, dim, generator=gen) * 4
    which = torch.randint(12, (rows,), generator=gen) ** 2 % 12  # some clusters much larger
    points = centres[which] + torch.randn(rows, dim, generator=gen) * 0.5
    points[:5] *= 6  # outliers
    return points


@pytest.mark.parametrize(
    ("rows", "dim", "picks", "pool", "window"),
    [
        (3000, 16, 200, 64, 16),  # the pool runs dry and the window ends often
        (3000, 56, 300, 2048, 128),  # the shipped sizes
        (500, 8, 120, 2048, 128),  # fewer rows than the pool
        (2000, 32, 1, 64, 16),  # one pick
    ],
)
def test_pooled_search_picks_the_rows_of_one_pass_per_pick(
    monkeypatch, rows, dim, picks, pool, window
):
    monkeypatch.setattr(coreset, "POOL", pool)
    monkeypatch.setattr(coreset, "WINDOW", window)
    monkeypatch.setattr(coreset, "PASS_ROWS", 700)  # passes in several products
    z = _clusters(rows, dim, seed=rows + dim).double()  # in float32 near-ties may round apart
    expected = coreset._greedy_passes(z, picks, start=7)
    got = coreset._greedy_pooled(z, picks, start=7)
    assert torch.equal(got, expected)
    assert len(set(got.tolist())) == picks


def test_pooled_search_in_float32_takes_the_farthest_row_each_time():
    """Each pick is the row farthest from the picks before it, to float32's rounding."""
    z = _clusters(3000, 56, seed=1)
    picked = coreset._greedy_pooled(z, 300, start=7).tolist()
    exact = z.double()
    nearest = torch.full((len(z),), float("inf"), dtype=torch.float64)
    for i, row in enumerate(picked):
        if i:
            assert nearest[row] >= nearest.max() * (1 - 1e-5), f"pick {i} is not the farthest"
        torch.minimum(nearest, ((exact - exact[row]) ** 2).sum(1), out=nearest)


def test_pooled_search_breaks_ties_as_argmax(monkeypatch):
    """On a lattice every distance is exact and many tie: both searches take the lowest row."""
    monkeypatch.setattr(coreset, "POOL", 20)
    monkeypatch.setattr(coreset, "WINDOW", 8)
    grid = torch.stack(torch.meshgrid(torch.arange(15.0), torch.arange(15.0), indexing="ij"))
    z = torch.cat([grid.reshape(2, -1).T, grid.reshape(2, -1).T])  # every point twice
    expected = coreset._greedy_passes(z, 60, start=112)
    assert torch.equal(coreset._greedy_pooled(z, 60, start=112), expected)


def test_cpu_coreset_uses_the_pooled_search(monkeypatch):
    """greedy_coreset on the CPU goes through the pooled search, part by part."""
    calls = []
    real = coreset._greedy_pooled
    monkeypatch.setattr(coreset, "_greedy_pooled", lambda *a: calls.append(a[1]) or real(*a))
    points = _clusters(900, 8, seed=3)
    idx = coreset.greedy_coreset(points, 30, seed=0, max_part=300)
    assert calls == [10, 10, 10] and len(set(idx.tolist())) == 30


class _Drawing(torch.utils.data.Dataset):
    """Images drawn from torch's global generator as they are read, noting the reading thread."""

    def __init__(self):
        self.threads = set()

    def __len__(self):
        return 12

    def __getitem__(self, i):
        import threading

        self.threads.add(threading.current_thread().name)
        return {"image": torch.rand(3, 32, 32)}


def test_patchknn_fit_reads_ahead_in_a_thread_and_keeps_the_random_draws():
    """patchknn's fit decodes the next batch in a thread; a data set that draws random numbers
    as it is read gives the same bank as when read in the caller's thread."""
    import anomaly.detectors.patchknn as pk
    from anomaly.config import Config

    config = Config.for_method("patchknn", size=32, coreset_ratio=0.1, batch_size=4)
    banks = []
    for ahead in (True, False):
        data = _Drawing()
        torch.manual_seed(0)
        with pytest.MonkeyPatch.context() as mp:
            if not ahead:
                mp.setattr(pk, "read_ahead", lambda batches: (b for b in batches))
            banks.append(pk.PatchKNN(config).fit(data).bank)
        assert ("MainThread" not in data.threads) == ahead, data.threads
    assert torch.equal(banks[0], banks[1])
