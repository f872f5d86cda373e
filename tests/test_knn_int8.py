"""patchknn's 8-bit search (`config.search_precision` "int8", `anomaly.detectors.knn.Int8Search`):
the arithmetic its onnxruntime graph does, its distances against the exact search (within the
stated bound), a saved run's scores, and where it is refused."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch
from helpers import Textures

from anomaly.config import Config
from anomaly.detectors.knn import WEIGHT_MAX, ExactSearch, Int8Search, nearest_distances
from anomaly.detectors.ort_sessions import onnxruntime_session, trace_to_onnx
from anomaly.detectors.patchknn import PatchKNN

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

CONFIG = Config(
    method="patchknn",
    size=64,
    channels=3,
    batch_size=8,
    coreset_ratio=0.1,
    backbone="mobilenet_v2",
    feature_pad=16,
    whiten=0.1,
    runtime="onnxruntime",
)


def _session(search: Int8Search):
    torch.set_num_threads(1)
    return onnxruntime_session(search.onnx_model(), torch.zeros(2, 1), "distances")


def _run(session, queries: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(session.run(None, {"images": queries.numpy()})[0])


def _real_like(n_bank: int, n_queries: int, dim: int = 56, seed: int = 0):
    """Whitened-patch-like rows: heavy tails, per-dimension spreads from 0.3 to 1, the bank
    holding the extremes (as a k-center coreset does), the queries mostly inside its range."""
    gen = np.random.default_rng(seed)
    spread = np.linspace(1.0, 0.3, dim)
    rows = gen.standard_t(5, size=(20 * n_bank, dim)) * spread
    far = np.argsort(-np.abs(rows).max(1))[: n_bank // 10]  # the coreset keeps the extremes
    bank = np.concatenate([rows[far], rows[gen.choice(len(rows), n_bank - len(far))]])
    queries = gen.standard_t(5, size=(n_queries, dim)) * spread * 0.8
    return torch.tensor(bank, dtype=torch.float32), torch.tensor(queries, dtype=torch.float32)


def test_graph_does_the_stated_arithmetic():
    """uint8 queries (zero point 128, the bank's range at 127) times int8 columns (each bank
    row on its own scale, at most 63), rescaled, plus |b|^2, row minimum, plus |q|^2: as numpy
    does it. Exactly, on any CPU: with 127 a CPU without VNNI saturated sums of two products."""
    gen = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(300, 24, generator=gen), torch.randn(500, 24, generator=gen) * 0.7
    search = Int8Search(bank, (bank * bank).sum(1))
    got = _run(_session(search), queries).numpy()
    a, q = np.float32(search.query_scale), queries.numpy()
    q8 = np.clip(np.rint(q / a) + 128, 0, 255).astype(np.int64) - 128
    w8 = search.weights.numpy().astype(np.int64)
    # each row on its own scale, seven bits: no pair of products saturates 16 bits without VNNI
    assert np.abs(w8).max() == WEIGHT_MAX == 63 and (np.abs(w8).max(0) == WEIGHT_MAX).all()
    scale = (a * search.row_scales.numpy()).astype(np.float64)
    products = (q8 @ w8) * scale + search.bank_sq.numpy()
    want = np.sqrt(np.maximum(products.min(1) + (q.astype(np.float64) ** 2).sum(1), 0))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("data", ["gaussian", "real-like"])
def test_distances_within_the_bound_and_close_to_the_exact_search(data):
    if data == "gaussian":
        gen = torch.Generator().manual_seed(1)
        bank, queries = torch.randn(800, 56, generator=gen), torch.randn(3000, 56, generator=gen)
    else:
        bank, queries = _real_like(800, 3000)
    bank_sq = (bank * bank).sum(1)
    search = Int8Search(bank, bank_sq)
    inside = queries.abs().amax(1) <= search.limit
    assert inside.float().mean() > 0.5
    queries = queries[inside]
    exact = nearest_distances(queries, bank, bank_sq)
    got = _run(_session(search), queries)
    squared_error = (got.double() ** 2 - exact.double() ** 2).abs()
    bound = search.error_bound(queries).double()
    assert (squared_error <= bound + 1e-4 * (1 + exact.double() ** 2)).all()
    relative = ((got - exact).abs() / exact).numpy()
    # the stated tolerance (docs/measurements.md): median under 1 %, 99th percentile under 3 %
    assert np.median(relative) < 0.01 and np.quantile(relative, 0.99) < 0.03, (
        np.median(relative),
        np.quantile(relative, 0.99),
    )
    assert (relative > 1e-4).mean() > 0.5  # approximate indeed: the test sees the rounding


def test_queries_beyond_the_bank_range_are_searched_exactly():
    bank, queries = _real_like(400, 200, seed=2)
    bank_sq = (bank * bank).sum(1)
    search = Int8Search(bank, bank_sq)
    queries[::2] *= 4 * search.limit / queries[::2].abs().amax(1, keepdim=True)  # out of range
    clipped = _run(_session(search), queries)
    exact = nearest_distances(queries, bank, bank_sq)
    squared_error = (clipped[::2].double() ** 2 - exact[::2].double() ** 2).abs()
    beyond = squared_error > search.error_bound(queries[::2])  # uint8 clipped them: the bound
    assert beyond.float().mean() > 0.9  # (for in-range queries) fails for nearly all
    fixed = search.exact_rows(queries, clipped.clone())
    torch.testing.assert_close(fixed[::2], exact[::2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fixed[1::2], clipped[1::2], rtol=0, atol=0)  # the rest: as was


@pytest.fixture(scope="module")
def float_run():
    return PatchKNN(CONFIG).fit(Textures(16, seed=1, channels=3))


def test_detector_scores_close_to_float32_and_a_float_run_loads(float_run):
    int8 = PatchKNN(CONFIG.replace(search_precision="int8"))
    state = float_run.state_dict()
    assert state.pop("search_precision") == "float32"
    int8.load_state_dict(state)  # a run saved before the option: loads as is
    assert isinstance(int8._sessions["search"][1], Int8Search)  # loaded = ready
    images = Textures(4, defective=2, seed=3, channels=3).images
    patches, want = int8.patch_scores(images), float_run.patch_scores(images)
    assert not torch.equal(patches, want)
    relative = (patches - want).abs() / want
    assert float(relative.median()) < 0.01 and float(relative.max()) < 0.05
    scores, _ = int8.predict_batch(images)
    assert scores[2:].min() > scores[:2].max()  # the defective images still score highest


def test_saved_run_gives_identical_scores(tiny_cookies, tmp_path):
    from anomaly.data import AnomalyDataset
    from anomaly.pipeline import load_run, train_run

    config = CONFIG.replace(data=str(tiny_cookies), device="cpu", size=48, batch_size=4)
    trained = train_run(config.replace(search_precision="int8"), tmp_path / "run", progress=False)
    assert trained.int8 and isinstance(trained._sessions["search"][1], Int8Search)
    test = AnomalyDataset(tiny_cookies, "test", size=48, channels=3)
    first = trained.predict(test)
    loaded = load_run(tmp_path / "run")
    assert loaded.config.search_precision == "int8"  # config.json keeps the choice
    again = loaded.predict(test)
    np.testing.assert_array_equal(again.scores, first.scores)
    np.testing.assert_array_equal(again.maps, first.maps)
    floats = PatchKNN(config)
    floats.load_state_dict(loaded.state_dict())
    assert not np.array_equal(floats.predict(test).maps, first.maps)  # int8 did run


@pytest.mark.parametrize(
    ("change", "fix"),
    [
        ({"runtime": "torch"}, "--runtime onnxruntime"),
        ({"search_clusters": 16}, "--search-clusters 0"),
        ({"neighbors": 3}, "--neighbors 1"),
    ],
)
def test_refused_where_it_cannot_run(change, fix):
    with pytest.raises(ValueError, match=f"--search-precision int8 .*{fix}.*float32"):
        PatchKNN(CONFIG.replace(search_precision="int8", **change))
    PatchKNN(CONFIG.replace(**change))  # float32 takes them all


def test_refused_with_auto_runtime_and_no_onnxruntime(monkeypatch):
    find_spec = importlib.util.find_spec
    missing = {"onnxruntime": None}  # not installed; the rest as they are
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: missing.get(name, find_spec(name, *a))
    )
    with pytest.raises(ValueError, match="pip install onnxruntime"):
        PatchKNN(CONFIG.replace(runtime="auto", search_precision="int8"))
    with pytest.raises(ValueError, match="--search-precision 'int4'"):
        CONFIG.replace(search_precision="int4").validate()


def test_missing_onnx_names_the_fix(float_run, monkeypatch):
    int8 = PatchKNN(CONFIG.replace(search_precision="int8"))
    int8._set_bank(float_run.bank)
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises
    monkeypatch.setenv("ANOMALY_CACHE", "off")  # a kept graph needs no onnx to build it
    with pytest.raises(RuntimeError, match=r"pip install onnx .*--search-precision float32"):
        int8._search(torch.zeros(4, float_run.bank.shape[1]))  # the search alone


@pytest.fixture(scope="module")
def traced_export(tmp_path_factory):
    """`Int8Search.traced` of a bank exported alone (batch size free), traced on queries none of
    which lie beyond the bank's range: the search and its graph."""
    bank, queries = _real_like(400, 64, seed=4)
    search = Int8Search(bank, (bank * bank).sum(1))

    class Traced(torch.nn.Module):
        def forward(self, x):
            return search.traced(x)

    path = tmp_path_factory.mktemp("traced") / "search.onnx"
    inside = queries[queries.abs().amax(1) <= search.limit]
    trace_to_onnx(Traced(), inside[:8], path, ["distances"])
    return search, str(path)


@pytest.mark.parametrize("far_rows", [0, 5, 64])
def test_the_export_records_the_graph_and_the_exact_rows(traced_export, far_rows):
    """What an int8 run's ONNX export holds (`Int8Search.traced`): the search's own graph, then
    the queries beyond the bank's range searched exactly (`exact_rows`), whatever their number;
    run eagerly, the same distances in torch (`Int8Graph.forward`)."""
    import onnx

    search, path = traced_export
    model = onnx.load(path)
    assert "MatMulIntegerToFloat" in {node.op_type for node in model.graph.node}
    assert ("com.microsoft", 1) in [(o.domain, o.version) for o in model.opset_import]
    _, queries = _real_like(400, 64, seed=5)
    queries = queries.clamp(-search.limit, search.limit)
    queries[:far_rows] *= 4 * search.limit / queries[:far_rows].abs().amax(1, keepdim=True)
    assert int((queries.abs().amax(1) > search.limit).sum()) == far_rows
    want = search.exact_rows(queries, _run(_session(search), queries))
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"images": queries.numpy()})[0])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(search.traced(queries), want, rtol=1e-5, atol=1e-5)


def test_patchknn_searches_in_int8_by_default_where_it_can(monkeypatch):
    """patchknn's default is "auto": int8 where onnxruntime runs the exact search on a CPU that
    multiplies 8-bit integers fast (VNNI), float32 (never an error) where it cannot or the CPU
    has no VNNI (there the 8-bit search was slower)."""
    import anomaly.detectors.knn as knn_module

    default = Config.for_method("patchknn")
    assert default.search_precision == "auto" and Config().search_precision == "float32"
    monkeypatch.setattr(knn_module, "fast_int8", lambda: False)
    assert PatchKNN(CONFIG.replace(search_precision="auto")).search_precision() == "float32"
    assert PatchKNN(CONFIG.replace(search_precision="int8")).search_precision() == "int8"
    monkeypatch.setattr(knn_module, "fast_int8", lambda: True)
    assert PatchKNN(CONFIG.replace(search_precision="auto")).search_precision() == "int8"
    for change in ({"runtime": "torch"}, {"search_clusters": 16}, {"neighbors": 3}):
        knn = PatchKNN(CONFIG.replace(search_precision="auto", **change))
        assert knn.search_precision() == "float32", change
    find_spec = importlib.util.find_spec
    for gone in ("onnxruntime", "onnx"):
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda n, *a, g=gone: None if n == g else find_spec(n, *a)
        )
        assert PatchKNN(CONFIG.replace(runtime="auto", search_precision="auto")).int8 is False


def test_fast_int8_reads_the_cpus_flags(tmp_path):
    """VNNI in /proc/cpuinfo's flags (AVX512 or AVX): the 8-bit search is faster there; AVX2
    alone, another processor's words, or no such file: float32."""
    from anomaly.detectors.knn import fast_int8

    def cpuinfo(text: str) -> str:
        path = tmp_path / f"cpuinfo{len(list(tmp_path.iterdir()))}"
        path.write_text(text)
        return str(path)

    head = "processor\t: 0\nmodel name\t: AMD EPYC\n"
    assert fast_int8(cpuinfo(head + "flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni\n"))
    assert fast_int8(cpuinfo(head + "flags\t\t: fpu sse2 avx2 avx_vnni\n"))
    assert not fast_int8(cpuinfo(head + "flags\t\t: fpu sse2 avx2 fma avx512f\n"))
    assert not fast_int8(cpuinfo("processor\t: 0\nFeatures\t: fp asimd asimddp\n"))  # ARM
    assert not fast_int8(str(tmp_path / "missing"))


def test_a_run_trained_before_the_seven_bit_bank_says_its_threshold_is_older(float_run):
    """A run trained in int8 before the bank was rounded to 7 bits (no int8_weight_max in its
    model.pt) now scores a little differently from the held-out scores its threshold came from:
    said, with the fix; a run saved today is not."""
    import warnings

    state = {**float_run.state_dict(), "search_precision": "int8"}
    assert state["int8_weight_max"] == WEIGHT_MAX
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PatchKNN(CONFIG.replace(search_precision="int8")).load_state_dict(state)
    del state["int8_weight_max"]
    with pytest.warns(UserWarning, match=r"before the 8-bit search rounded .*Train the run again"):
        PatchKNN(CONFIG.replace(search_precision="int8")).load_state_dict(state)
    float_state = {**float_run.state_dict()}
    del float_state["int8_weight_max"]
    with warnings.catch_warnings():  # a float32 run: its rounding never mattered
        warnings.simplefilter("error")
        PatchKNN(CONFIG.replace(search_precision="float32")).load_state_dict(float_state)


def test_a_run_searches_as_it_was_trained_or_says_it_cannot(float_run, recwarn, monkeypatch):
    """An auto run trained where int8 could not run (a GPU, no onnxruntime) searches in float32
    wherever it is loaded; one trained in int8 and loaded where int8 cannot run warns, since its
    threshold is of int8 scores. On a CPU without VNNI, too: there `auto` trains in float32."""
    import anomaly.detectors.knn as knn_module

    monkeypatch.setattr(knn_module, "fast_int8", lambda: False)
    auto = PatchKNN(CONFIG.replace(search_precision="auto"))
    auto.load_state_dict(float_run.state_dict())  # recorded: float32
    assert auto.search_precision() == "float32" and not recwarn.list
    assert isinstance(auto._sessions["search"][1], ExactSearch)
    trained = PatchKNN(CONFIG.replace(search_precision="auto"))
    trained.load_state_dict({**float_run.state_dict(), "search_precision": "int8"})
    assert trained.search_precision() == "int8" and not recwarn.list  # on any CPU: as trained
    assert isinstance(trained._sessions["search"][1], Int8Search)
    elsewhere = PatchKNN(CONFIG.replace(search_precision="auto", runtime="torch"))
    with pytest.warns(UserWarning, match=r"in int8 where it was trained .* float32 here.*pip"):
        elsewhere.load_state_dict(trained.state_dict())
