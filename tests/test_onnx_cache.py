"""The ONNX exports kept between commands (anomaly.onnx_cache): found again for the same graph
only, the same features, and a damaged file exported again."""

from __future__ import annotations

import pytest
import torch
from helpers import fresh_python

pytest.importorskip("onnxruntime")

from anomaly import onnx_cache
from anomaly.config import Config
from anomaly.detectors.patchknn import PatchKNN


def _extractor(whiten_seed: int | None = None):
    config = Config.for_method("patchknn", size=64, feature_pad=8, device="cpu")
    det = PatchKNN(config)
    if whiten_seed is not None:
        g = torch.Generator().manual_seed(whiten_seed)
        dim = det.extractor.dim
        det._set_whitening(torch.randn(dim, generator=g), torch.randn(dim, dim, generator=g))
    return det.extractor.eval()


def test_the_same_graph_is_found_again_and_a_changed_one_is_not(tmp_path, monkeypatch):
    monkeypatch.setenv("ANOMALY_CACHE", str(tmp_path))
    calls = []

    def export_with(module, example):
        def export(path):
            calls.append(1)
            from anomaly.detectors.ort_sessions import trace_to_onnx

            trace_to_onnx(module, example, path, ["features"])

        return export

    example = torch.zeros(1, 3, 64, 64)
    a = _extractor(whiten_seed=1)
    first = onnx_cache.exported(a, example, "features", export_with(a, example))
    again = onnx_cache.exported(a, example, "features", export_with(a, example))
    assert first == again and len(calls) == 1 and len(list(tmp_path.glob("*.onnx"))) == 1
    # another whitening (kept outside the buffers), another image size, no whitening: new keys
    b = _extractor(whiten_seed=2)
    keys = {
        onnx_cache.key(a, example, "features"),
        onnx_cache.key(b, example, "features"),
        onnx_cache.key(a, torch.zeros(1, 3, 80, 80), "features"),
        onnx_cache.key(_extractor(), example, "features"),
    }
    assert len(keys) == 4
    kept = next(tmp_path.glob("*.onnx"))
    kept.write_bytes(kept.read_bytes()[:-10])  # damaged: exported again, not used
    assert onnx_cache.exported(a, example, "features", export_with(a, example)) == first
    assert len(calls) == 2


@pytest.mark.parametrize(("precision", "n"), [("int8", 3), ("float32", 3)])  # auto: either
def test_a_loaded_run_scores_the_same_from_the_cache(
    tiny_cookies, tmp_path, monkeypatch, precision, n
):
    from anomaly.data.folder import load_image
    from anomaly.pipeline import load_run, train_run

    monkeypatch.setenv("ANOMALY_CACHE", str(tmp_path / "cache"))
    config = Config.for_method(
        "patchknn", data=str(tiny_cookies), size=48, device="cpu", search_precision=precision
    )
    train_run(config, tmp_path / "run", progress=False)
    kept = sorted((tmp_path / "cache").glob("*.onnx"))  # the extractor before and after the
    assert len(kept) == n  # whitening was fitted, and the search (int8: its graph, kept too)
    files = sorted((tiny_cookies / "test").glob("*/*.png"))
    images = torch.stack([load_image(f, size=48, channels=3) for f in files])
    cached = load_run(tmp_path / "run").predict_batch(images)[0]
    assert sorted((tmp_path / "cache").glob("*.onnx")) == kept  # loading exported nothing
    monkeypatch.setenv("ANOMALY_CACHE", "off")
    assert onnx_cache.cache_dir() is None
    fresh = load_run(tmp_path / "run").predict_batch(images)[0]
    torch.testing.assert_close(cached, fresh, rtol=0, atol=0)


def test_the_8_bit_searchs_graph_is_kept_and_onnx_not_imported_again(tmp_path, monkeypatch):
    """Loading a run that searches in 8 bits built its graph with the onnx package each time:
    about 0.7 s of a one-image predict's 2.5 s went to importing onnx. The graph is now kept
    (`onnx_cache.kept`), the same bytes, another bank's under another key."""

    from anomaly.detectors.knn import Int8Search

    monkeypatch.setenv("ANOMALY_CACHE", str(tmp_path / "cache"))
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(50, 8, generator=g)
    search = Int8Search(bank, (bank * bank).sum(1))
    first = search.kept_model()
    assert first == search.onnx_model() and len(list((tmp_path / "cache").iterdir())) == 1
    other = Int8Search(bank * 2, (4 * bank * bank).sum(1)).kept_model()
    assert other != first and len(list((tmp_path / "cache").iterdir())) == 2
    torch.save(bank, tmp_path / "bank.pt")
    code = (
        "import sys, torch; from anomaly.detectors.knn import Int8Search; "
        f"b = torch.load({str(tmp_path / 'bank.pt')!r}); "
        "m = Int8Search(b, (b * b).sum(1)).kept_model(); "
        "print(len(m), 'onnx' in sys.modules)"
    )
    done = fresh_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(len(first)), "False"], done.stderr
