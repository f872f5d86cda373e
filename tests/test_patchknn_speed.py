"""patchknn's speed settings: the backbone in onnxruntime (`runtime`) and an approximate search
(`search_clusters`, `search_probes`)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from helpers import Textures

from anomaly.config import Config
from anomaly.detectors.patchknn import PatchKNN

SIZE = 64
CONFIG = Config(
    method="patchknn",
    size=SIZE,
    channels=3,
    batch_size=8,
    coreset_ratio=0.1,
    backbone="mobilenet_v2",
    feature_pad=16,
)


@pytest.fixture(scope="module")
def exact():
    return PatchKNN(CONFIG).fit(Textures(16, seed=1, channels=3))


def test_onnxruntime_runtime_gives_the_same_bank_and_scores(exact):
    pytest.importorskip("onnxruntime")
    fast = PatchKNN(CONFIG.replace(runtime="onnxruntime")).fit(Textures(16, seed=1, channels=3))
    assert fast._sessions, "onnxruntime did not run"
    torch.testing.assert_close(fast.bank, exact.bank, atol=1e-4, rtol=0)
    images = Textures(4, defective=2, seed=3, channels=3).images
    scores, maps = fast.predict_batch(images)
    want_scores, want_maps = exact.predict_batch(images)
    torch.testing.assert_close(scores, want_scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(maps, want_maps, atol=1e-4, rtol=0)
    assert float(want_scores.std()) > 1e-2  # the images do not all score alike


def test_onnxruntime_missing_says_how_to_install(exact, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises
    fast = PatchKNN(CONFIG.replace(runtime="onnxruntime"))
    with pytest.raises(RuntimeError, match=r"pip install onnxruntime.*--runtime torch"):
        fast.load_state_dict(exact.state_dict())  # a loaded detector is ready to predict
    with pytest.raises(RuntimeError, match=r"pip install onnxruntime.*--runtime torch"):
        fast.predict_batch(Textures(1, seed=3, channels=3).images)


def test_export_traces_the_torch_backbone(tmp_path):
    """An exported detector with runtime onnxruntime: the file holds the whole graph (the torch
    extractor traced, not the session) and agrees with the detector."""
    pytest.importorskip("onnxruntime")
    from anomaly.export import OnnxDetector, export_detector

    config = CONFIG.replace(runtime="onnxruntime")
    detector = PatchKNN(config).fit(Textures(8, seed=1, channels=3))
    path = export_detector(detector, tmp_path / "ort.onnx")
    images = Textures(3, defective=2, seed=3, channels=3).images
    scores, maps = OnnxDetector(path).predict(list(images.numpy()))
    want_scores, want_maps = detector.predict_batch(images)
    np.testing.assert_allclose(scores, want_scores.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(maps, want_maps.numpy(), atol=1e-4, rtol=0)


def test_inverted_file_search_is_close_and_never_below_the_exact_one():
    from anomaly.detectors.patchknn import BankIndex, nearest_distances

    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(12, 16, generator=gen) * 1.5
    bank = centres[torch.randint(12, (600,), generator=gen)] + torch.randn(600, 16, generator=gen)
    queries = centres[torch.randint(12, (900,), generator=gen)] + torch.randn(
        900, 16, generator=gen
    )
    exact = nearest_distances(queries, bank, (bank * bank).sum(1))
    every = BankIndex(bank, clusters=8, probes=8).nearest(queries)  # probes all: exact
    torch.testing.assert_close(every, exact, atol=1e-4, rtol=1e-5)
    some = BankIndex(bank, clusters=8, probes=2).nearest(queries)
    assert (some >= exact - 1e-4).all()  # a missed row only makes a distance larger
    hits = ((some - exact).abs() < 1e-4).float().mean()
    assert 0.95 < hits < 1.0, hits  # most patches find their nearest row, not all
    again = BankIndex(bank, clusters=8, probes=2).nearest(queries)
    assert torch.equal(again, some)  # seeded k-means: the same bank gives the same search


def test_detector_with_inverted_file_scores_close_to_the_exact_one(exact, monkeypatch):
    import anomaly.detectors.patchknn as pk

    config = CONFIG.replace(search_clusters=6, search_probes=2)
    small = PatchKNN(config)
    small.load_state_dict(exact.state_dict())
    assert len(exact.bank) < pk.MIN_INDEXED_ROWS and small.index is None  # searched exactly
    monkeypatch.setattr(pk, "MIN_INDEXED_ROWS", 0)
    fast = PatchKNN(config)
    fast.load_state_dict(exact.state_dict())  # the index is built from the bank alone
    assert fast.index is not None and len(fast.index.blocks) == 6
    images = Textures(4, defective=2, seed=3, channels=3).images
    patches, want = fast.patch_scores(images), exact.patch_scores(images)
    assert (patches >= want - 1e-4).all() and (patches - want).abs().mean() < 0.05 * want.mean()
    scores, _ = fast.predict_batch(images)
    assert scores[2:].min() > scores[:2].max()  # the defective images still score highest


def test_score_with_decoding_workers_gives_the_same_predictions(tiny_cookies, tmp_path):
    from anomaly.data import AnomalyDataset
    from anomaly.pipeline import load_run, score_run, train_run

    config = CONFIG.replace(data=str(tiny_cookies), device="cpu", size=48, batch_size=4, workers=2)
    train_run(config, tmp_path / "run", progress=False)
    decoded, metrics = score_run(tmp_path / "run", overlays=False)  # two decoding processes
    plain = load_run(tmp_path / "run").predict(
        AnomalyDataset(tiny_cookies, "test", size=48, channels=3)
    )
    assert decoded.paths == plain.paths and metrics["predict_images_per_s"] > 0
    np.testing.assert_array_equal(decoded.scores, plain.scores)
    np.testing.assert_array_equal(decoded.maps, plain.maps)
    np.testing.assert_array_equal(decoded.masks, plain.masks)


def test_auto_runtime_uses_onnxruntime_when_installed_else_torch(exact, monkeypatch):
    import importlib.util

    auto = PatchKNN(CONFIG.replace(runtime="auto"))
    auto.load_state_dict(exact.state_dict())
    images = Textures(2, seed=3, channels=3).images
    installed = importlib.util.find_spec("onnxruntime") is not None
    assert bool(auto._sessions) == installed  # built on loading, for the config's image size
    scores, _ = auto.predict_batch(images)
    torch.testing.assert_close(scores, exact.predict_batch(images)[0], atol=1e-4, rtol=0)
    bare = PatchKNN(CONFIG.replace(runtime="auto"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # not installed
    bare.load_state_dict(exact.state_dict())
    bare.predict_batch(images)
    assert not bare._sessions  # torch ran the backbone, nothing was asked to install


def test_the_race_splits_cpu_time_into_user_and_system(tiny_cookies, capsys, monkeypatch):
    """The yardstick's CPU time moved 1.6x with what else ran in the process, nearly all of it
    system time (page faults): the race shows the system part and a user-time ratio."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "patchknn_speed.py"
    monkeypatch.syspath_prepend(str(script.parent))
    spec = importlib.util.spec_from_file_location("patchknn_speed", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--data", str(tiny_cookies), "--race", "default", "--rounds", "1", "--threads", "1"]
    module.main([*argv, "--batch-size", "4"])
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head[4] == "of it system ms" and head[-1] == "user-time to mnv2 0-13 (anomalib)"
    rows = {r[0]: r for r in ([c.strip() for c in x.strip("|").split("|")] for x in lines[2:])}
    assert float(rows["mnv2 0-13 (anomalib)"][-1]) == 1.0
    assert 0 < float(rows["default"][-1]) and float(rows["default"][4]) >= 0
