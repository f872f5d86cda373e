"""onnxruntime sessions that run several inputs at once, one thread each
(`anomaly.detectors.ort_sessions.ParallelSession`): the same numbers, in order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from anomaly.detectors.ort_sessions import onnxruntime_session

pytest.importorskip("onnxruntime")


def test_run_all_equals_one_input_at_a_time(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    session = onnxruntime_session(net, torch.zeros(1, 3, 16, 16), "features")
    assert session.narrow is not None  # two threads: a one-thread session beside
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.rand(n, 3, 16, 16, generator=gen).numpy() for n in (1, 3, 2, 1, 4)]
    together = session.run_all(inputs)
    alone = [session.run(None, {"images": a})[0] for a in inputs]
    assert [t.shape for t in together] == [a.shape for a in alone]
    for t, a in zip(together, alone):
        np.testing.assert_allclose(t, a, rtol=0, atol=1e-6)
    assert session.run_all([]) == []


def test_one_thread_runs_one_session(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    net = nn.Conv2d(3, 2, 1).eval()
    session = onnxruntime_session(net, torch.zeros(1, 3, 4, 4), "features")
    assert session.narrow is None
    x = np.ones((2, 3, 4, 4), np.float32)
    (out,) = session.run_all([x])
    np.testing.assert_allclose(out, session.run(None, {"images": x})[0])


def test_a_forked_child_runs_on_a_pool_of_its_own(monkeypatch):
    """A child forked after the pool started (a DataLoader worker) would wait forever on the
    parent's threads, which it does not have."""
    import multiprocessing

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    net = nn.Conv2d(3, 2, 1).eval()
    session = onnxruntime_session(net, torch.zeros(1, 3, 4, 4), "features")
    inputs = [np.ones((1, 3, 4, 4), np.float32)] * 3
    session.run_all(inputs)  # the pool is running now
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()

    def child() -> None:  # forked: the session is the parent's, no pickling
        results.put([o.shape for o in session.run_all(inputs)])

    proc = ctx.Process(target=child)
    proc.start()
    proc.join(timeout=60)
    alive = proc.is_alive()
    if alive:
        proc.kill()
    assert not alive, "the forked child hung on the parent's thread pool"
    assert results.get(timeout=5) == [(1, 2, 4, 4)] * 3
