"""Nearest-neighbour search of patch features in a memory bank, on a CPU or a GPU.

`nearest_distances` is the exact search: one matrix product per block of queries, kept in the
CPU's cache. `ExactSearch` is the same search (one nearest row) as a module, which
`anomaly.detectors.patchknn` exports to onnxruntime: its matrix products ran the search in about
half of torch's CPU time on two cores (`benchmarks/score_speed.py`). `BankIndex` is an
approximate one, an inverted file of k-means clusters (as faiss's IndexIVFFlat; Jegou, Douze and
Schmid, "Product Quantization for Nearest Neighbor Search", TPAMI 2011), that compares each
query with a few clusters only. `Int8Search` is the exact search's arithmetic in 8-bit integers
(`config.search_precision` "int8"), for onnxruntime on a CPU: about half the float search's time
on a CPU with AVX512-VNNI, each distance within a stated bound (`Int8Search.error_bound`); the
ONNX export (`anomaly.export`) writes the same graph into its file (`Int8Graph`).
`anomaly.detectors.patchknn` uses all four, each through `coarse_to_fine`, which decides which
patches of a grid are searched at all (`config.search_refine`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CHUNK_ELEMENTS = 2**19  # rows x bank entries of one distance block (2 MB of float32: in cache)
SEARCH_ROWS = 256  # queries per onnxruntime call of `ExactSearch`: their block stays in cache,
SEARCH_ELEMENTS = 2**20  # and fewer for a large bank: at most this many rows x bank entries


def product_weights(rows: torch.Tensor, rows_sq: torch.Tensor | None = None) -> torch.Tensor:
    """[D + 1, N]: the columns [-2 b, |b|^2] of rows b [N, D] (`rows_sq`: their |b|^2, if known).
    `with_ones(q) @ product_weights(b)` is |b|^2 - 2 q.b for every pair, which orders the rows
    as |q - b| does and gives |q - b|^2 once |q|^2 is added: one matrix product per block."""
    sq = (rows * rows).sum(1) if rows_sq is None else rows_sq
    return torch.cat([rows * -2.0, sq.unsqueeze(1).to(rows.dtype)], 1).T.contiguous()


def with_ones(queries: torch.Tensor) -> torch.Tensor:
    """[M, D + 1]: queries [M, D] with a column of ones, the partner of `product_weights`
    (written with `ones_like`, so a traced graph keeps its batch size free)."""
    return torch.cat([queries, torch.ones_like(queries[:, :1])], 1)


def nearest_distances(
    queries: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor, k: int = 1
) -> torch.Tensor:
    """Mean Euclidean distance of each query [M, D] to its k nearest bank rows [N, D] -> [M].

    Uses |q - b|^2 = |q|^2 - 2 q.b + |b|^2: one matrix product gives |b|^2 - 2 q.b, whose row
    minimum picks the nearest bank rows (|q|^2 is the same along a row, so it is added to the k
    minima only). |b|^2 rides in the product as one more dimension ([q, 1] . [-2 b, |b|^2]), so
    no separate pass adds it to every block (a third less time than `addmm` on two cores). Rows
    go in chunks whose block stays in the CPU's cache between the product and the minimum: on
    two cores that halved the time against 16 MB blocks.
    """
    k = max(1, min(int(k), len(bank)))
    rows = max(1, CHUNK_ELEMENTS // max(1, len(bank)))
    weights = product_weights(bank, bank_sq)
    augmented = with_ones(queries)
    out = torch.empty(len(queries), device=queries.device, dtype=queries.dtype)
    for i in range(0, len(queries), rows):
        q = queries[i : i + rows]
        partial = augmented[i : i + rows] @ weights
        if k == 1:
            near = partial.amin(1, keepdim=True)
        else:
            near = partial.topk(k, dim=1, largest=False).values
        out[i : i + rows] = near.add_((q * q).sum(1, keepdim=True)).clamp_(min=0).sqrt_().mean(1)
    return out


def coarse_to_fine(
    features: torch.Tensor, search: Callable[[torch.Tensor], torch.Tensor], refine: float
) -> torch.Tensor:
    """Distances of a patch grid `features` [B, h, w, D] to the bank -> [B, h, w], searching
    every patch only where the map is high.

    `search(queries [M, D]) -> [M]` runs first on every other row and column of the grid (a
    quarter of the patches). Every other patch gets an estimate, the largest searched distance
    within one cell of it; the `refine` fraction of them with the largest estimates, per image,
    is searched too, and the rest take the bilinear interpolation of their searched neighbours.
    So the high region of each map, which the image score and a pixel threshold read, holds
    searched distances, and only the low ground between them is interpolated (the measured cost
    is in docs/measurements.md). A patch far above all of its searched neighbours would be
    missed, but a backbone's receptive fields overlap (one cell of a stride-4 stage sees tens of
    pixels), so whatever moves one patch's features moves its neighbours' too. `refine` 1
    searches every patch: `search` of all of them.

    The choice is made without arithmetic on the distances (copies, maxima and an order), and
    ties at the cut are broken by position, so a traced graph (`anomaly.export`) chooses the same
    patches as the detector did wherever their searched distances agree.
    """
    b, h, w, d = (int(n) for n in features.shape)  # plain numbers while traced, too: the
    if refine >= 1 or h < 3 or w < 3:  # export's graph is for one fixed size
        return search(features.reshape(-1, d)).view(b, h, w)
    coarse = features[:, ::2, ::2]
    ch, cw = (h + 1) // 2, (w + 1) // 2
    near = search(coarse.reshape(-1, d)).view(b, 1, ch, cw)
    up = F.interpolate(near, size=(2 * ch, 2 * cw), mode="nearest")[..., :h, :w]
    on_rows = torch.arange(h, device=features.device) % 2 == 0
    on_cols = torch.arange(w, device=features.device) % 2 == 0
    searched = on_rows[:, None] & on_cols[None, :]
    # distances are >= 0, so -1 is never the largest of a neighbourhood, nor chosen below
    estimate = F.max_pool2d(torch.where(searched, up, -1.0), 3, stride=1, padding=1)
    estimate = estimate.reshape(b, h * w).masked_fill(searched.reshape(1, h * w), -1.0)
    # fine cell y lies at coarse coordinate y / 2: corners aligned on 2 ch - 1 cells, then the
    # last row and column of an even grid copied out
    between = F.interpolate(
        near, size=(2 * ch - 1, 2 * cw - 1), mode="bilinear", align_corners=True
    )
    between = F.pad(between, (0, w - 2 * cw + 1, 0, h - 2 * ch + 1), mode="replicate")
    out = torch.where(searched, up, between).reshape(b, h * w)
    k = round(refine * (h * w - ch * cw))
    if k <= 0:
        return out.view(b, h, w)
    cut = estimate.topk(k, dim=1).values[:, -1:]  # the k-th largest, whatever the ties' order
    above = estimate > cut
    at_cut = estimate == cut
    wanted = k - above.sum(1, keepdim=True)  # filled from the ties at the cut, first first
    chosen = above | (at_cut & (at_cut.long().cumsum(1) <= wanted))
    index = chosen.to(features.dtype).topk(k, dim=1).indices  # exactly the k chosen, any order
    picked = features.reshape(b, h * w, d).gather(1, index.unsqueeze(2).expand(b, k, d))
    out = out.scatter(1, index, search(picked.reshape(b * k, d)).view(b, k))
    return out.view(b, h, w)


class ExactSearch(nn.Module):
    """`nearest_distances` with k = 1 as a module: queries [M, D] -> distances [M] to the
    nearest bank row, by the same product with [-2 b, |b|^2] and the same row minimum. Made to be
    exported (`PatchKNN` runs it in onnxruntime, `SEARCH_ROWS` queries per call)."""

    def __init__(self, bank: torch.Tensor, bank_sq: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weights", product_weights(bank, bank_sq))

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        near = (with_ones(queries) @ self.weights).amin(1)
        return near.add((queries * queries).sum(1)).clamp(min=0).sqrt()


class BankIndex:
    """An inverted-file index of the memory bank (IVF, as faiss's IndexIVFFlat): an approximate
    nearest-neighbour search that compares each query with the rows of its `probes` nearest
    k-means clusters only, about probes / clusters of the full search's arithmetic.

    A query whose nearest row lies in a cluster it does not probe gets the distance to the
    nearest row it did see: never less than the true one. The bank's rows are reordered so that
    each cluster is one slice; the k-means is seeded, so the same bank gives the same index.
    """

    def __init__(
        self, bank: torch.Tensor, clusters: int, probes: int, seed: int = 0, iters: int = 20
    ) -> None:
        k = max(1, min(int(clusters), len(bank)))
        gen = torch.Generator().manual_seed(int(seed))
        x = bank.double()
        centroids = x[torch.randperm(len(x), generator=gen)[:k].to(x.device)]
        for _ in range(iters):  # Lloyd's k-means; an emptied cluster keeps its centroid
            assign = torch.cdist(x, centroids).argmin(1)
            sums = torch.zeros_like(centroids).index_add_(0, assign, x)
            counts = torch.bincount(assign, minlength=k).unsqueeze(1)
            centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        assign = torch.cdist(x, centroids).argmin(1)
        rows = bank[torch.argsort(assign, stable=True)]
        sizes = torch.bincount(assign, minlength=k)
        # a cluster left empty (repeated bank rows, or a centroid that lost every row) is never
        # probed: a query whose probes all found no row would get an infinite distance
        centroids, sizes = centroids[sizes > 0], sizes[sizes > 0].tolist()
        self.probes = max(1, min(int(probes), len(sizes)))
        self.to_centroids = product_weights(centroids.float())  # orders them as |q - c| does
        self.blocks = [w.contiguous() for w in product_weights(rows).split(sizes, dim=1)]

    def nearest(self, queries: torch.Tensor) -> torch.Tensor:
        """Euclidean distance of each query [M, D] to the nearest row it probes -> [M]."""
        augmented = with_ones(queries)
        probed = (augmented @ self.to_centroids).topk(self.probes, 1, largest=False)[1]
        flat = probed.flatten()
        order = torch.argsort(flat)
        owners = order // self.probes  # the query of each (query, cluster) pair, by cluster
        best = torch.full((len(queries),), math.inf, device=queries.device, dtype=queries.dtype)
        counts = torch.bincount(flat, minlength=len(self.blocks)).tolist()
        for block, rows in zip(self.blocks, owners.split(counts)):
            if len(rows) and block.shape[1]:
                step = max(1, CHUNK_ELEMENTS // block.shape[1])
                near = torch.cat([(part @ block).amin(1) for part in augmented[rows].split(step)])
                best.scatter_reduce_(0, rows, near, "amin")
        return best.add_((queries * queries).sum(1)).clamp_(min=0).sqrt_()


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str] | None:
    """The CPU's feature flags as Linux's /proc/cpuinfo lists them (its "flags" line), or None
    where it cannot be read or has no such line (not Linux, or not x86-64)."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            line = next((line for line in f if line.startswith("flags")), None)
    except OSError:
        return None
    return None if line is None else set(line.partition(":")[2].split())


def fast_int8(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies 8-bit integers faster than floats in onnxruntime: an x86-64
    one with AVX512-VNNI or AVX-VNNI (Linux's /proc/cpuinfo says). Without VNNI (an AVX2 AMD
    EPYC) the 8-bit search was slower than the float one (docs/measurements.md); on other
    processors it was not measured, so they search in float32, which is exact."""
    return bool({"avx512_vnni", "avx_vnni"} & (cpu_flags(cpuinfo) or set()))


def wants_int8(config, fast: bool | None = None) -> bool:
    """Whether the exact search runs in 8 bits (`Int8Search`): `config.search_precision` "int8"
    (a ValueError naming the fix where it cannot run: it is onnxruntime's, of the exact search,
    for one nearest row), or "auto" (patchknn's default) where it can: onnxruntime and onnx
    installed and the run's runtime onnxruntime (or auto), exact search, one nearest row, and
    the CPU multiplies 8-bit integers fast (`fast`, default `fast_int8()`; a run trained in int8
    passes True when it is loaded: its threshold is of int8 scores)."""
    precision = getattr(config, "search_precision", "float32")
    if precision not in ("int8", "auto"):
        return False
    runtime = getattr(config, "runtime", "torch")
    problem = ""
    if runtime == "torch" or not importlib.util.find_spec("onnxruntime"):
        problem = "runs in onnxruntime: use --runtime onnxruntime (pip install onnxruntime)"
    elif not importlib.util.find_spec("onnx"):
        problem = "builds its onnxruntime graph with the package onnx: pip install onnx"
    elif getattr(config, "search_clusters", 0) > 0:
        problem = "is a form of the exact search: use --search-clusters 0"
    elif getattr(config, "neighbors", 1) != 1:
        problem = "finds one nearest bank row: use --neighbors 1"
    if problem and precision == "int8":
        raise ValueError(f"--search-precision int8 {problem}, or --search-precision float32")
    if precision == "auto" and not problem and not (fast_int8() if fast is None else fast):
        return False
    return not problem


# `Int8Search`'s graph, written by `Int8Search.onnx_model` and into the export's (`Int8Graph`):
# (domain, operator, inputs, output, integer attributes); "images" are the float queries [M, D],
# "" an input left out, the others the constants (`Int8Search.constants`) and earlier outputs
INT8_GRAPH = (
    ("", "QuantizeLinear", ("images", "query_scale", "zero"), "q8", {}),
    (  # |b|^2 - 2 q.b, approximately, for every pair
        "com.microsoft",
        "MatMulIntegerToFloat",
        ("q8", "weights", "query_scale", "row_scales", "zero", "", "bank_sq"),
        "products",
        {},
    ),
    ("", "ReduceMin", ("products",), "near", {"axes": [1], "keepdims": 0}),
    ("", "ReduceSumSquare", ("images",), "queries_sq", {"axes": [1], "keepdims": 0}),
    ("", "Add", ("near", "queries_sq"), "squared", {}),
    ("", "Relu", ("squared",), "clamped", {}),
    ("", "Sqrt", ("clamped",), "distances", {}),
)
INT8_CONSTANTS = ("weights", "query_scale", "row_scales", "bank_sq", "zero")
# The bank's 8-bit weights use seven bits: on a CPU without VNNI (AVX2, AVX-512 before it)
# onnxruntime multiplies uint8 by int8 with vpmaddubsw, which adds two products into 16 bits and
# saturates beyond 32,767; 2 x 255 x 63 stays below, 2 x 255 x 127 did not (2 % of the distances
# came out up to 16 % off, tests/test_knn_int8.py). Rounding the bank more coarsely costs less
# than rounding the queries so: docs/measurements.md.
WEIGHT_MAX = 63


class Int8Search:
    """`ExactSearch` with 8-bit products, as an onnxruntime graph: queries [M, D] -> distances [M]
    to the nearest bank row, about half the float search's CPU time where the CPU multiplies 8-bit
    integers fast (AVX512-VNNI, AVX-VNNI), and approximate.

    The bank's product columns -2 b are rounded to int8, each bank row on its own scale (its
    largest |2 b_j| is `WEIGHT_MAX`, 63: seven bits, see there); the queries are rounded to uint8
    (zero point 128) on one scale, the bank's largest |b_j| at 127. onnxruntime's
    MatMulIntegerToFloat multiplies them, rescales each column and adds the exact |b|^2, in one
    pass; a row minimum as the float search's. Every scale comes from the bank alone, so a saved
    run searches the same way once loaded. The bank is a k-center coreset, which keeps the
    training patches' extremes: its range is theirs.

    Each squared distance is off by at most `error_bound` (rounding). A query beyond the bank's
    range (any |q_j| > its largest |b_j|, where uint8 would clip it; a patch unlike any training
    patch) is searched exactly instead (`exact_rows`). The ONNX export of a run writes both, the
    graph and the exact search of those queries, into its own graph (`traced`).
    """

    def __init__(self, bank: torch.Tensor, bank_sq: torch.Tensor) -> None:
        self.bank = bank.detach().float().cpu().contiguous()
        self.bank_sq = bank_sq.detach().float().cpu()
        self.limit = float(self.bank.abs().max()) or 1.0  # queries beyond: searched exactly
        self.query_scale = self.limit / 127
        twice = self.bank * -2.0
        self.row_scales = (twice.abs().amax(1) / WEIGHT_MAX).clamp(min=1e-30)  # [N]
        quantised = torch.round(twice / self.row_scales.unsqueeze(1))
        quantised = quantised.clamp(-WEIGHT_MAX, WEIGHT_MAX)
        self.weights = quantised.to(torch.int8).T.contiguous()  # [D, N]

    def error_bound(self, queries: torch.Tensor) -> torch.Tensor:
        """[M]: the most each query's squared distance can be off (rounding alone): each product
        q_j (-2 b_j) is off by at most |q_j| s_b / 2 + |2 b_j| s_q / 2 + s_q s_b / 4 (s_q, s_b: the
        query's and the bank row's steps), summed over j, at worst over the bank rows."""
        a = self.query_scale
        per_row = a / 2 * 2 * self.bank.abs().sum(1) + self.row_scales * a / 4 * self.bank.shape[1]
        q1 = queries.detach().float().cpu().abs().sum(1, keepdim=True)
        return (q1 * (self.row_scales / 2) + per_row).amax(1)

    def exact_rows(self, queries: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
        """`distances` of `queries` [M, D] with the rows beyond the bank's range (clipped by
        uint8) replaced by their exact distance (`nearest_distances`), in place."""
        far = queries.abs().amax(1) > self.limit
        if bool(far.any()):
            distances[far] = nearest_distances(queries[far].float(), self.bank, self.bank_sq)
        return distances

    def constants(self) -> dict[str, torch.Tensor]:
        """The graph's constants (`INT8_GRAPH`) by name, for its own model and the export's."""
        values = (
            self.weights,
            torch.tensor(self.query_scale, dtype=torch.float32),
            self.row_scales,
            self.bank_sq,
            torch.tensor(128, dtype=torch.uint8),
        )
        return dict(zip(INT8_CONSTANTS, values))

    def traced(self, queries: torch.Tensor) -> torch.Tensor:
        """The search with `exact_rows` in torch ops, as `torch.onnx.export` records it
        (`anomaly.export`): the graph itself (`Int8Graph`), then the rows beyond the bank's range
        found, searched as `ExactSearch` does and put back, in ops whose graph holds for any
        number of them, none included. Run eagerly: the same distances in torch alone."""
        distances = Int8Graph.apply(queries, *self.constants().values())
        rows = (queries.abs().amax(1) > self.limit).nonzero()[:, 0]
        far = queries.index_select(0, rows)
        near = (with_ones(far) @ product_weights(self.bank, self.bank_sq)).amin(1)
        return distances.index_put((rows,), near.add((far * far).sum(1)).clamp(min=0).sqrt())

    def kept_model(self) -> bytes:
        """`onnx_model()`, kept between commands (`anomaly.onnx_cache.kept`): building it imports
        the onnx package, about 0.7 s of a one-image predict's 2.5. Its key: this file (the
        graph, `INT8_GRAPH`), the onnx package's version and every constant."""
        from importlib.metadata import PackageNotFoundError, version

        from anomaly.onnx_cache import kept

        h = hashlib.sha256(Path(__file__).read_bytes())
        with contextlib.suppress(PackageNotFoundError):  # not installed: onnx_model says so
            h.update(f"int8-search onnx {version('onnx')}".encode())
        for name, t in self.constants().items():
            h.update(f"{name} {t.dtype} {tuple(t.shape)}".encode() + t.cpu().numpy().tobytes())
        return kept(h.hexdigest(), self.onnx_model)

    def onnx_model(self) -> bytes:
        """The search as an ONNX model: input "images" (float queries [M, D]), output
        "distances" [M]. Needs the package onnx to build, onnxruntime to run (a com.microsoft
        operator, MatMulIntegerToFloat)."""
        try:
            from onnx import helper
        except ImportError:
            raise RuntimeError(
                "patchknn --search-precision int8 builds its onnxruntime graph with the package "
                "onnx: pip install onnx (or 'anomaly[export]'), or use --search-precision float32"
            ) from None
        nodes = [
            helper.make_node(op, list(inputs), [output], domain=domain or None, **attributes)
            for domain, op, inputs, output, attributes in INT8_GRAPH
        ]
        inits = []
        for name, t in self.constants().items():
            a = t.numpy()
            kind = helper.np_dtype_to_tensor_dtype(a.dtype)
            inits.append(helper.make_tensor(name, kind, a.shape, a.tobytes(), raw=True))
        float32 = helper.np_dtype_to_tensor_dtype(np.dtype(np.float32))
        graph = helper.make_graph(
            nodes,
            "int8_search",
            [helper.make_tensor_value_info("images", float32, ["batch", self.bank.shape[1]])],
            [helper.make_tensor_value_info("distances", float32, ["batch"])],
            inits,
        )
        opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
        return helper.make_model(graph, opset_imports=opsets).SerializeToString()


class Int8Graph(torch.autograd.Function):
    """`Int8Search`'s graph inside a traced one (`Int8Search.traced`), applied to the queries
    and the constants (`Int8Search.constants`, in order): `symbolic` writes its nodes
    (`INT8_GRAPH`) into the graph that `torch.onnx.export` records (the TorchScript tracer's,
    which then declares the com.microsoft domain as the search's own model does); `forward`
    computes their distances in torch: rounded as QuantizeLinear (half to even, saturated to
    0..255), integer products (exact in float64), each column rescaled and |b|^2 added in
    float32 as MatMulIntegerToFloat does, the rest as the graph. The tracer records `forward`'s
    own ops as well, so the constants come in as inputs (a tensor it took from elsewhere breaks
    the second call: "unordered_map::at") and it makes no alias of the queries (`.float()` of
    float32 queries made the traced graph's later uses of them read a Cast)."""

    @staticmethod
    def forward(ctx, queries, weights, query_scale, row_scales, bank_sq, zero):
        shift = zero.float()  # queries: float32, as the graph's
        q8 = (torch.round(queries / query_scale) + shift).clamp(0, 255) - shift
        products = (q8.double() @ weights.double()).float()
        products = products * (query_scale * row_scales) + bank_sq
        return (products.amin(1) + (queries * queries).sum(1)).relu().sqrt()

    @staticmethod
    def symbolic(g, queries, *constants):
        values = {"images": queries, "": g.op("prim::Constant")}  # "": an input left out
        values[""].setType(torch._C.OptionalType.ofTensor())
        values.update(zip(INT8_CONSTANTS, constants))
        for domain, op, inputs, output, attributes in INT8_GRAPH:
            ints = {f"{key}_i": value for key, value in attributes.items()}
            name = f"{domain}::{op}" if domain else op
            values[output] = g.op(name, *(values[i] for i in inputs), **ints)
        return values["distances"]
