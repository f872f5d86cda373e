"""Checks of an exported file's graph (`anomaly.onnx_predict` loads it), standard library only.

An ONNX file from someone else is untrusted input: its graph could hold a Loop of 2**62
iterations (predict would run for ever) or anything else onnxruntime runs. `graph_ops` lists the
ops of the file's nodes from its protobuf bytes (no onnx package needed, so onnx_predict.py and
this file can be copied where only numpy, Pillow and onnxruntime are), and `foreign_parts` names
those `anomaly.export` never writes (`EXPORTED_OPS`), subgraphs, model functions and tensors kept
in other files (external data: onnxruntime would read them), which `OnnxDetector` refuses before
onnxruntime optimises or runs any of them.
"""

from __future__ import annotations

import re
import warnings

# (domain, op type) of each node anomaly.export writes, "" the standard domain: the union, listed
# with the onnx package, of exports (torch 2.14, opset 17) of patchknn runs of every kind: float32
# and int8 searches, --search-refine 0, 0.3 and 1, --search-clusters, --neighbors, --whiten, grey,
# --feature-pad, --score-topk, each backbone (efficientnet_lite0, mobilenet_v2, resnet18,
# wide_resnet50_2, encoder: of ae, unet and vae runs), and auto's choice (meandiff and the other
# methods do not export). tests/test_onnx_untrusted.py exports each kind afresh and checks that
# every op is here, so a change of the exporter (or of torch's tracer) that writes another op
# fails there, not at a user's predict.
_STANDARD_OPS = """Abs Add And AveragePool Cast Clip Concat Constant ConstantOfShape Conv CumSum
Div Equal Expand EyeLike Gather GatherElements Greater GreaterOrEqual Identity LeakyRelu
LessOrEqual MatMul MaxPool Mod Mul NonZero Or Pad QuantizeLinear ReduceMax ReduceMean ReduceMin
ReduceSum ReduceSumSquare Relu Reshape Resize ScatterElements ScatterND Shape Slice Split Sqrt Sub
TopK Transpose Unsqueeze Where"""
INT8_OP = ("com.microsoft", "MatMulIntegerToFloat")  # an 8-bit search (`--search-precision int8`)
EXPORTED_OPS = frozenset([INT8_OP] + [("", op) for op in _STANDARD_OPS.split()])


def _fields(data: bytes, i: int, end: int) -> list[tuple[int, int | tuple[int, int] | None]]:
    """(number, value) of each field of the protobuf message data[i:end], value an int or a
    length-delimited field's (start, end) (its bytes are not copied: a bank of 100 MB is
    skipped, not read); ValueError where the bytes are not a message."""

    def varint() -> int:
        nonlocal i
        n = shift = 0
        while i < end and shift < 64:
            i, n, shift = i + 1, n | (data[i] & 0x7F) << shift, shift + 7
            if data[i - 1] < 0x80:
                return n
        raise ValueError("a truncated number")

    fields = []
    while i < end:
        if data[i] < 0x80:  # a one-byte key (fields 1 to 15), most of them: read faster
            key, i = data[i], i + 1
        else:
            key = varint()
        kind = key & 7
        if kind == 2:
            n = varint()
            fields.append((key >> 3, (i, i + n)))
            i += n
        else:  # a number, or 8 or 4 bytes skipped; other wire types are not ONNX's
            fields.append((key >> 3, varint() if kind == 0 else None))
            i += {0: 0, 1: 8, 5: 4}.get(kind, end + 1)
    if i > end:
        raise ValueError("a truncated field")
    return fields


def graph_ops(data: bytes) -> tuple[set[tuple[str, str]], list[str]]:
    """The (domain, op type) of each node of the ONNX model `data` ("" the standard domain),
    and what else it holds that `anomaly.export` never writes (a subgraph: an attribute of
    type GRAPH or GRAPHS, as Loop, If and Scan have; model functions; training info), read
    from its protobuf fields as onnxruntime does (of a field given twice, the last);
    ValueError where the bytes are not a model. A few ms for a patchknn export."""
    top, found, other = _fields(data, 0, len(data)), set(), []
    if any(n in (20, 25) for n, _ in top):  # ModelProto.training_info, .functions
        other.append("model functions")
    for graph in (v for n, v in top if n == 7 and type(v) is tuple):  # ModelProto.graph
        parts = [(n, v) for n, v in _fields(data, *graph) if type(v) is tuple]
        if any(n in (5, 15) and _external(data, v, n == 15) for n, v in parts):  # initializers
            other.append("tensors stored outside the file (external data)")
        for node in (v for n, v in parts if n == 1):
            op = domain = (0, 0)  # NodeProto.op_type 4, .domain 7
            for n, v in _fields(data, *node):
                if type(v) is not tuple:
                    continue
                if n == 4 or n == 7:
                    op, domain = (v, domain) if n == 4 else (op, v)
                elif n == 5:  # an attribute: g 6, graphs 11, or type 20 GRAPH(S) 5, 10
                    attr = _fields(data, *v)
                    if any(k in (6, 11) or (k == 20 and w in (5, 10)) for k, w in attr):
                        other.append("a subgraph")
                    if any(
                        k in (5, 10) and type(w) is tuple and _external(data, w) for k, w in attr
                    ):
                        other.append("tensors stored outside the file (external data)")
            found.add((data[slice(*domain)], data[slice(*op)]))
    ops = {(d.decode(errors="replace"), o.decode(errors="replace")) for d, o in found}
    return {("" if d == "ai.onnx" else d, o) for d, o in ops}, other


def _external(data: bytes, span: tuple[int, int], sparse: bool = False) -> bool:
    """Whether the TensorProto data[span] (of a SparseTensorProto: its values 1 or indices 2)
    keeps its numbers in another file: external_data 13, or data_location 14 EXTERNAL (1).
    onnxruntime would read that file, beside the model or wherever it names."""
    fields = _fields(data, *span)
    if sparse:
        return any(n in (1, 2) and type(v) is tuple and _external(data, v) for n, v in fields)
    return any(n == 13 or (n == 14 and v == 1) for n, v in fields)


def foreign_parts(ops: set[tuple[str, str]], other: list[str]) -> str:
    """What of `graph_ops`' answer `anomaly.export` never writes, in words ("" where nothing):
    up to five ops (repr: a file's names may hold control characters), then a subgraph or
    functions."""
    foreign = sorted(f"{domain}.{op}" if domain else op for domain, op in ops - EXPORTED_OPS)
    named = [f"{name!r:.60}" for name in foreign[:5]] + [f"{len(foreign) - 5} more ops"] * (
        len(foreign) > 5
    )
    return ", ".join(named + other[:1])


def short_error(err: Exception) -> str:
    """onnxruntime's message of a graph that failed, without its codes, source file and C++
    function: the node's op and what failed, at most 200 characters."""
    text = re.sub(r"\[ONNXRuntimeError\] : \d+ : \w+ : ", "", str(err))
    node = re.search(r"while running (\w+) node", text)
    text = re.sub(r"^\S+:\d+ .*?\) ", "", text.rpartition("Status Message: ")[2].strip())
    return ((f"{node[1]} node: " if node else "") + " ".join(text.split()))[:200]


def warn_saturating(path, meta: dict, ops: set[tuple[str, str]]) -> None:
    """Warn of a file whose 8-bit search (`INT8_OP` among its `ops`) has bank weights of eight
    bits (exported before they were seven, `anomaly.detectors.knn.WEIGHT_MAX`): where the CPU
    has no VNNI, onnxruntime adds pairs of its products in 16 bits, which saturate."""
    if "int8_weight_max" in meta or INT8_OP not in ops:
        return
    warnings.warn(
        f"{path} searches in 8 bits as files exported before 2026-12-04 did, with bank weights "
        "that overflow onnxruntime's 16-bit sums on a CPU without VNNI (most AVX2 ones): there "
        "a few % of the patch distances come out up to 16 % off. Export the run again "
        "(python -m anomaly export --run RUN) and use the new file",
        stacklevel=3,
    )
