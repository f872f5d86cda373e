"""The fast paths of `score` and `predict`: patchknn's exact search in onnxruntime, and `predict`
over folders decoding in batches (in worker processes) with its per-file errors. No timings:
benchmarks/score_speed.py measures them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import Textures

from anomaly.config import Config
from anomaly.detectors.knn import SEARCH_ELEMENTS, SEARCH_ROWS, ExactSearch, nearest_distances
from anomaly.detectors.patchknn import PatchKNN

CONFIG = Config(
    method="patchknn",
    size=64,
    channels=3,
    batch_size=8,
    coreset_ratio=0.1,
    backbone="mobilenet_v2",
    feature_pad=16,
    whiten=0.1,
)


def test_exact_search_module_is_the_torch_search():
    gen = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(300, 24, generator=gen), torch.randn(1000, 24, generator=gen)
    want = nearest_distances(queries, bank, (bank * bank).sum(1))
    got = ExactSearch(bank, (bank * bank).sum(1))(queries)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    brute = torch.cdist(queries.double(), bank.double()).amin(1).float()
    torch.testing.assert_close(got, brute, atol=1e-4, rtol=0)


def test_onnxruntime_search_gives_the_torch_scores():
    """runtime onnxruntime searches the bank in onnxruntime too: the same patch distances as
    the torch runtime (today's exact path) within 1e-4, over several calls of SEARCH_ROWS."""
    pytest.importorskip("onnxruntime")
    config = CONFIG.replace(size=80)  # 400 patches an image
    exact = PatchKNN(config.replace(runtime="torch")).fit(Textures(12, seed=1, size=80, channels=3))
    fast = PatchKNN(config.replace(runtime="onnxruntime"))
    fast.load_state_dict(exact.state_dict())
    assert "search" in fast._sessions  # loaded = ready
    images = Textures(5, defective=3, seed=3, size=80, channels=3).images
    queries = fast.embed(images).reshape(-1, fast.extractor.dim)
    assert len(queries) > 2 * SEARCH_ROWS and len(queries) % SEARCH_ROWS  # a partial last call
    torch.testing.assert_close(
        fast._search(queries),
        nearest_distances(queries, exact.bank, exact.bank_sq),
        atol=1e-5,
        rtol=0,
    )
    scores, maps = fast.predict_batch(images)
    want_scores, want_maps = exact.predict_batch(images)
    torch.testing.assert_close(scores, want_scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(maps, want_maps, atol=1e-4, rtol=0)
    assert float(want_scores.std()) > 1e-2  # the images do not all score alike
    fast._set_bank(exact.bank[: len(exact.bank) // 2])  # a new bank: a new search session
    half = nearest_distances(queries, fast.bank, fast.bank_sq)
    torch.testing.assert_close(fast._search(queries), half, atol=1e-5, rtol=0)
    big = torch.randn(SEARCH_ELEMENTS // SEARCH_ROWS + 900, fast.extractor.dim)
    fast._set_bank(big)  # fewer queries per call, the same distances
    want = nearest_distances(queries, fast.bank, fast.bank_sq)
    torch.testing.assert_close(fast._search(queries), want, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def run(tiny_cookies, tmp_path_factory):
    from anomaly.pipeline import train_run

    out = tmp_path_factory.mktemp("score_speed") / "run"
    config = CONFIG.replace(data=str(tiny_cookies), device="cpu", size=48, batch_size=3)
    train_run(config, out, progress=False)
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_predict_over_a_folder_decodes_in_batches_and_names_bad_files(
    run, tiny_cookies, tmp_path, workers
):
    """Batches of 3 that mix readable and unreadable files: every readable image gets the score
    it gets alone, every unreadable one an error naming it, in the order given."""
    from anomaly.data.folder import load_image
    from anomaly.pipeline import load_run
    from anomaly.predict import expand_images, predict_images

    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "workers": workers}))
    folder = tmp_path / "new"
    folder.mkdir()
    good = sorted((tiny_cookies / "test" / "good").iterdir())
    defects = sorted(p for d in (tiny_cookies / "test").iterdir() for p in d.iterdir())
    for p in good[:3] + [p for p in defects if p not in good][:3]:
        shutil.copy(p, folder / f"{p.parent.name}_{p.name}")
    (folder / "b_broken.png").write_bytes(b"not an image")
    (folder / "c_cut.png").write_bytes(good[0].read_bytes()[:200])
    missing = tmp_path / "missing.png"
    results, threshold = predict_images(run, [folder, missing, good[1]], tmp_path / "overlays")
    paths = expand_images([folder, missing, good[1]])
    assert [r["path"] for r in results] == [str(p) for p in paths]
    errors = {r["path"]: r["error"] for r in results if "error" in r}
    assert sorted(errors) == sorted(
        str(p) for p in (folder / "b_broken.png", folder / "c_cut.png", missing)
    )
    for path, error in errors.items():
        assert error.startswith(path)  # names the file
    detector = load_run(run)
    scored = [r for r in results if "error" not in r]
    assert len(scored) == 7
    for r in scored:
        image = load_image(r["path"], size=48, channels=3)
        alone = float(detector.predict_batch(image[None])[0][0])
        assert r["score"] == pytest.approx(alone, abs=1e-4)
        assert r["verdict"] == ("REJECT" if r["score"] >= threshold.value else "PASS")
    overlays = [Path(r["overlay"]) for r in scored]
    assert len(set(overlays)) == len(overlays)
    assert all(o.parent == tmp_path / "overlays" and o.exists() for o in overlays)


def test_score_speed_measures_todays_defaults_and_keeps_an_older_run(tmp_path, monkeypatch):
    """A run left by an earlier `make speed-notes` under older defaults was timed as if it were
    today's (search_refine 0.2 and a float32 search, after the defaults had moved on)."""
    import importlib.util
    from dataclasses import replace

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "score_speed.py"
    spec = importlib.util.spec_from_file_location("score_speed", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    trained = []

    def fake_train(config, run, progress=False):
        trained.append(Path(run))
        Path(run).mkdir(parents=True)
        config.save(Path(run) / "config.json")
        (Path(run) / "model.pt").write_bytes(b"weights")

    monkeypatch.setattr(module, "train_run", fake_train)
    old = tmp_path / "run"
    fake_train(replace(Config.for_method("patchknn", data="d"), search_refine=0.2), old)
    trained.clear()
    used = module.ensure_run(old, "d")
    assert used != old and used.parent == old.parent and trained == [used]
    assert (old / "model.pt").read_bytes() == b"weights"  # the older run is kept as it was
    assert module.stale_settings(old, "d") == ["search_refine 0.2 (default 0.1)"]
    assert module.ensure_run(old, "d") == used and len(trained) == 1  # reused, not retrained
    assert module.ensure_run(used, "d") == used and len(trained) == 1
    empty = tmp_path / "new"
    assert module.ensure_run(empty, "d") == empty and trained[-1] == empty
