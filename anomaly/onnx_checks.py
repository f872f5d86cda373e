"""Checks of an exported file and of what it is given (`anomaly.onnx_predict` loads and runs it),
standard library only.

An ONNX file from someone else is untrusted input: its graph could hold a Loop of 2**62
iterations (predict would run for ever) or anything else onnxruntime runs. `graph_ops` lists the
ops of the file's nodes from its protobuf bytes (no onnx package needed, so onnx_predict.py and
this file can be copied where only numpy, Pillow and onnxruntime are), and `foreign_parts` names
those `anomaly.export` never writes (`EXPORTED_OPS`), subgraphs, model functions and tensors kept
in other files (external data: onnxruntime would read them), which `OnnxDetector` refuses before
onnxruntime optimises or runs any of them. `contract` and `records` check its metadata (size,
channels, threshold and what it guarantees, the record of the training images) against its graph,
and `array_fault` an array a caller passes in place of a file (0-255 pixels would score without a
word). onnx_predict.py needs this file beside it: without it, it refuses to load any file.
"""

from __future__ import annotations

# onnx_predict.py takes this file from an installed anomaly package only at this version or
# later (else the copy beside it): raise it with every name onnx_predict.py starts to use
CHECKS_VERSION = 5

import json
import math
import os
import re
import warnings
from pathlib import Path

# (domain, op type) of each node anomaly.export writes, "" the standard domain: the union, listed
# with the onnx package, of exports (torch 2.14, opset 17) of patchknn runs of every kind: float32
# and int8 searches, --search-refine 0, 0.3 and 1, --search-clusters, --neighbors, --whiten, grey,
# --feature-pad, --score-topk, each backbone (efficientnet_lite0, mobilenet_v2, resnet18,
# wide_resnet50_2, encoder: of ae, unet and vae runs), and auto's choice (meandiff and the other
# methods do not export). tests/test_onnx_untrusted.py exports each kind afresh and checks that
# every op is here, so a change of the exporter (or of torch's tracer) that writes another op
# fails there, not at a user's predict. Gemm: exports of the package as of 2026-12-01 (006acaa)
# wrote one, and a file exported then must still be read (an upgrade walkthrough).
_STANDARD_OPS = """Abs Add And AveragePool Cast Clip Concat Constant ConstantOfShape Conv CumSum
Div Equal Expand EyeLike Gather GatherElements Gemm Greater GreaterOrEqual Identity LeakyRelu
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
    function: the node's op and what failed, control characters escaped, at most 200 chars."""
    text = re.sub(r"\[ONNXRuntimeError\] : \d+ : \w+ : ", "", str(err))
    node = re.search(r"while running (\w+) node", text)
    text = re.sub(r"^\S+:\d+ .*?\) ", "", text.rpartition("Status Message: ")[2].strip())
    text = (f"{node[1]} node: " if node else "") + " ".join(text.split())
    return escaped(text)[:200]  # a file's node names are untrusted


def escaped(text) -> str:
    """`text` with its unprintable characters written as escapes (`\\x1b`): a file's name or a
    graph's node name cannot rewrite the terminal line it is printed on."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


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


# --- the file's metadata ---------------------------------------------------------------------
class ExportError(ValueError):
    """A run that cannot be exported, or a file that is not an exported detector."""


def bad_file(path: Path, what: str) -> ExportError:
    return ExportError(
        f"{path}: {what}, so it is not a file `export` wrote, or it was changed since; "
        "export the run again (`python -m anomaly export --run RUN`)"
    )


def json_object(path: Path, meta: dict, key: str) -> dict | None:
    """The JSON object in metadata `key` (None when there is none), or ExportError naming it."""
    if key not in meta:
        return None
    try:
        value = json.loads(meta[key])
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise bad_file(path, f"its metadata {key} is {meta[key]!r:.60}, not a JSON object")
    return value


def _rate(x) -> bool:
    return type(x) in (int, float) and 0 <= x <= 1


# the saved threshold's params an export carries: what its guarantee is and whether it holds
# (`anomaly.threshold_file.PARAMS`), each with the test a file's value must pass
THRESHOLD_PARAMS = {
    "alpha": lambda x: _rate(x) and 0 < x < 1,
    **dict.fromkeys(("q", "false_reject_rate", "escape_rate"), _rate),
    **dict.fromkeys(("n", "n_normal", "rank"), lambda x: type(x) is int and x >= 0),
    # printed to a terminal: no control characters (escape sequences)
    "guarantee": lambda x: isinstance(x, str) and len(x) <= 1000 and x.isprintable(),
    **dict.fromkeys(("earlier_model", "in_sample"), lambda x: isinstance(x, bool)),
}
# (these keys are all a reader before 2026-12-05 knows, and it refuses any other: what was
# added since is in metadata keys of its own, which older readers pass over: threshold_train)
TRAIN_THRESHOLD = ("held_out", "training_images")  # metadata threshold_train: train set it


def records(path: Path, meta: dict) -> tuple[dict | None, dict | None]:
    """(threshold_params, images) from a file's metadata, each checked field by field (None
    when the file has none: exported before they were stored); ExportError names a bad one."""
    params = json_object(path, meta, "threshold_params")
    if params is not None and "threshold" not in meta:
        raise bad_file(path, "its metadata has threshold_params but no threshold")
    for key, value in (params or {}).items():
        if key not in THRESHOLD_PARAMS or not THRESHOLD_PARAMS[key](value):
            raise bad_file(path, f"its metadata threshold_params.{key:.40} is {value!r:.60}")
    if meta.get("threshold_train", TRAIN_THRESHOLD[0]) not in TRAIN_THRESHOLD:
        raise bad_file(path, f"its metadata threshold_train is {meta['threshold_train']!r:.40}")
    images = json_object(path, meta, "images")
    if images and not is_images_record(images):
        raise bad_file(
            path, f"its metadata images is {meta['images']!r:.80}, not what export writes"
        )
    return params, images


def is_images_record(d) -> bool:
    """Whether `d` (split.json's "images", or an export's metadata "images"; from a folder or a
    file that may be someone else's) is what `image_kind.summarize` writes: lists of flags
    (colour, transparent) and of bit depths (8, 16 or 32), [low, high] pairs of aspect ratios
    and of sides in whole pixels, 0 < low <= high < 1e9, and of the 16-bit images' largest values
    (peak, 0-65535). Older runs and files lack some of the fields: fine."""
    if not isinstance(d, dict):
        return False

    def listed(key: str, ok) -> bool:
        v = d.get(key, [])
        return type(v) is list and all(ok(x) for x in v)

    def pair(key: str, kinds: tuple) -> bool:
        v = d.get(key, [1, 1])
        ok = listed(key, lambda x: type(x) in kinds and 0 < x < 1e9)
        return ok and len(v) == 2 and v[0] <= v[1]

    flags = lambda x: type(x) is bool
    peak = d.get("peak", [0, 0])  # the 16-bit images' largest values, low and high
    return (
        listed("colour", flags) and listed("transparent", flags)
        and listed("bits", lambda x: type(x) is int and x in (8, 16, 32))
        and pair("aspect", (int, float)) and pair("side", (int,))
        and listed("peak", lambda x: type(x) is int and 0 <= x <= 65535)
        and len(peak) == 2 and peak[0] <= peak[1]
    )  # fmt: skip


def contract(path: Path, meta: dict, session) -> tuple[int, int, float | None, list | None]:
    """(size, channels, threshold or None, map_range or None) from a file's metadata, checked
    against its graph: an exported file is untrusted input, and one ExportError names it."""
    bad = lambda what: bad_file(path, what)

    def number(key: str, kind: type):
        try:
            value = kind(meta[key])
        except (KeyError, ValueError):
            raise bad(f"its metadata {key} is {meta.get(key, 'missing')!r:.60}") from None
        if kind is float and not math.isfinite(value):
            raise bad(f"its metadata {key} is {value}, not a finite number")
        return value

    if meta.get("value_range", "0,1") != "0,1":  # what `preprocess` feeds, whatever it says
        raise bad(f"its metadata value_range is {meta['value_range']!r:.40}, not '0,1'")
    size, channels = number("size", int), number("channels", int)
    if not 0 < size <= 65536 or channels not in (1, 3):
        raise bad(f"its metadata says size {size} and channels {channels} (1 or 3)")
    inputs, want = session.get_inputs(), [1, channels, size, size]
    if len(inputs) != 1 or inputs[0].name != "images" or len(session.get_outputs()) != 2:
        raise bad("its graph does not take one input 'images' and give two outputs")
    shape = list(inputs[0].shape)
    if len(shape) != 4 or any(isinstance(d, int) and d != w for d, w in zip(shape, want)):
        raise bad(f"its graph takes images of shape {shape}, its metadata says {want}")
    threshold = number("threshold", float) if "threshold" in meta else None
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", meta.get("threshold_rule", "none")):
        raise bad(f"its metadata threshold_rule is {meta['threshold_rule']!r:.60}")
    if "map_range" not in meta:
        return size, channels, threshold, None
    try:
        low, high = (float(x) for x in json.loads(meta["map_range"]))
    except (ValueError, TypeError, RecursionError):  # not JSON, not a list, not two numbers
        low = high = math.nan
    if not math.isfinite(high - low) or low > high or max(abs(low), abs(high)) > 1e30:
        raise bad(f"its metadata map_range is {meta['map_range']!r:.60}, not [low, high]")
    return size, channels, threshold, [low, high]


# --- what a caller gives -----------------------------------------------------------------------
# Pixel values a little outside [0, 1] are what a bicubic resize of [0, 1] images gives (-0.12
# to 1.22 across a sharp edge, measured); 0-255 values, or ImageNet-normalised ones (-2.1 to
# 2.6), lie far outside. The package's own check (`anomaly.detectors.inputs`) takes it from here.
RANGE_SLACK = 0.3
# the image files a folder given to `predict_onnx` holds (`anomaly.data.files.IMAGE_EXTENSIONS`)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
# files Windows puts in every folder of pictures, and folders of a USB stick's or a macOS zip's
# own (its Recycle Bin, __MACOSX/ of ._ files): skipped without a word, as hidden ones are
SYSTEM_FILES = frozenset(("thumbs.db", "ehthumbs.db", "ehthumbs_vista.db", "desktop.ini"))
SYSTEM_FOLDERS = frozenset(("__macosx", "$recycle.bin", "recycler", "system volume information"))
# copies still being made (browsers, FTP and copy tools, editors' backups): skipped too
PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".filepart", ".download", "~")


def skipped_silently(name: str) -> bool:
    """Whether a folder's entry `name` is left out of its images without a word: hidden (.x,
    macOS's ._x.png), one of `SYSTEM_FILES` or `SYSTEM_FOLDERS`, or a copy still being made."""
    low = name.lower()
    system = low in SYSTEM_FILES or low in SYSTEM_FOLDERS
    return name.startswith(".") or system or low.endswith(PARTIAL_SUFFIXES)


def unfinished(path, fmt: str) -> str | None:
    """Why the image file `path` of Pillow's format `fmt` is not yet whole, or None: it ends in
    16+ zero bytes, and a JPEG's first picture has no end-of-image marker, a PNG no IEND chunk.
    A camera or a copy that sets a file's size first and fills it in leaves such a tail, read
    as image data without a word (a part scored with its lower 70 % grey); one padded with
    zeros or other data (a motion photo's video) after its end is whole. Other formats: None."""
    if fmt not in ("JPEG", "MPO", "PNG"):
        return None
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 16))
        if f.read().strip(b"\0") or f.tell() < 16:
            return None
        f.seek(0)
        data = f.read()  # not mmap: a file cut while mapped kills the process (SIGBUS)
    if data.strip(b"\0") and (b"IEND" in data if fmt == "PNG" else _jpeg_ends(data)):
        return None
    return (
        f"this {'PNG' if fmt == 'PNG' else 'JPEG'} ends in zero bytes before its end: a file "
        "still being written (a camera or a copy that sets its size first), or cut short; "
        "read it again once it is complete, or copy it again"
    )


def _jpeg_ends(data) -> bool:
    """Whether the JPEG bytes `data` reach the end-of-image marker of their first picture: its
    segments walked from the start, each scan's coded data to the next marker (0xFF followed by
    neither 0x00 nor a restart marker), whatever follows that end."""
    i, n = 2, len(data)
    while i + 1 < n:
        # stray bytes between segments: skipped, as libjpeg does
        if data[i] != 0xFF and ((i := data.find(b"\xff", i)) < 0 or i + 1 >= n):
            return False
        marker = data[i + 1]
        if marker == 0xFF:  # fill bytes before a marker
            i += 1
        elif marker == 0xD9:
            return True
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:
            i += 2
        else:
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
            while marker == 0xDA:  # a scan: its coded data runs to the next marker
                i = data.find(b"\xff", i)
                if i < 0 or i + 1 >= n:
                    return False
                if data[i + 1] not in (0x00, 0xFF) and not 0xD0 <= data[i + 1] <= 0xD7:
                    break
                i += 1 if data[i + 1] == 0xFF else 2
    return False


def array_fault(x, want: tuple) -> str | None:
    """Why the numpy array `x`, given in place of an image file, is not the input `want`
    (channels, size, size) of float pixel values in [0, 1] (as `onnx_predict.preprocess` makes),
    with the fix; None when it is. 0-255 integers, or values normalised by a mean and std, would
    score without a word (about ten times too high)."""
    got = tuple(x.shape)
    if got != want:
        last = "; channels last: use a.transpose(2, 0, 1)" if got == want[1:] + want[:1] else ""
        return (
            f"takes images of shape {want}, got {got}{last}; pass file paths to have them resized"
        )
    if x.dtype.kind != "f":
        return (
            f"takes pixel values as floats in [0, 1], not {x.dtype}: divide 8-bit values by 255 "
            "and 16-bit ones by 65535, as files are read (12-bit data in them too), or pass "
            "file paths"
        )
    lo, hi = float(x.min()), float(x.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "was given an image with NaN or infinite pixel values; check how it was made"
    if lo < -RANGE_SLACK or hi > 1 + RANGE_SLACK:
        return (
            f"takes pixel values in [0, 1]; these run from {lo:.4g} to {hi:.4g}: divide 0-255 "
            "values by 255 (16-bit ones by 65535, as files are read) and leave out any "
            "normalisation (mean and std): the file does its own"
        )
    return None


def score_text(score: float, threshold: float | None = None) -> str:
    """`score` in 6 significant digits (`predict`'s rows, and onnx_predict.py's), or as many more
    as it takes to read on the same side of `threshold` as the score itself (10.702990 printed
    as 10.703 would read as at a threshold of 10.703, and so REJECT, while it passes)."""
    score = float(score)
    for digits in range(6, 18):
        text = f"{score:.{digits}g}"
        if threshold is None or (float(text) < threshold) == (score < threshold):
            return text
    return repr(score)


def image_paths(images) -> list:
    """`images` (a path, or an iterable of paths and arrays) as a list, a folder replaced by the
    image files in it (sorted; not hidden ones, nor the folders below: other files are named in
    a warning), each file once. A folder without images is kept, so that reading it says so;
    "" is kept too (it would be the working folder)."""
    one = isinstance(images, (str, Path)) or getattr(images, "ndim", 0) in (2, 3)  # not rows
    one = one or hasattr(images, "getbands")  # a PIL image: array_fault says what to pass
    items = [images] if one else list(images)  # a path, not letters; an image, not its rows
    out, seen = [], set()
    for item in items:
        inside = []
        if isinstance(item, (str, Path)) and str(item) != "" and Path(item).is_dir():
            entries = sorted(p for p in Path(item).iterdir() if not skipped_silently(p.name))
            named_so = (p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES)
            inside = [p for p in named_so if p.is_file() or p.is_symlink()]  # a broken link too
            folders = sorted(p.name + "/" for p in entries if p.is_dir())
            other = sorted(p.name for p in entries if p not in inside and not p.is_dir())
            for what, names in (("folders, not searched", folders), ("other files", other)):
                if names:
                    warnings.warn(
                        f"{escaped(item)}: skipping {len(names)} {what} "
                        f"({', '.join(map(repr, names[:5]))}{' ...' * (len(names) > 5)})",
                        stacklevel=3,
                    )
        for x in inside or [item]:  # each path once, as given (a link to it is another row)
            key = os.path.abspath(x) if isinstance(x, (str, Path)) and x else id(x)
            if key not in seen:
                seen.add(key)
                out.append(x)
    return out


def not_a_file(path) -> str | None:
    """Why `path` is no image file to open: a folder (predict_onnx and predict --onnx pass on
    one without images), nothing there, a pipe or a device (waited on for ever, or read without
    end), an empty file; None for a file with bytes in it."""
    p = Path(path)
    if p.is_dir():
        return f"{path} is a folder with no images in it; give image files"
    if not p.exists():
        return f"{path}: no such file; check its path"
    if not p.is_file():
        return f"{path} is not a file (a pipe or a device); give image files"
    if p.stat().st_size == 0:
        return f"{path} is empty (0 bytes); copy the image again, or delete it"
    return None


def scrambled_planes(im) -> str | None:
    """Why the opened `im` is refused: an uncompressed TIFF of over 8 bits a sample, its colour
    planes one after another (PlanarConfiguration 2: scientific cameras), which Pillow 13 decodes
    scrambled (a set's AUROC 1.0 read as 0.83); None for others (compressed, 8-bit: right)."""
    tags = getattr(im, "tag_v2", None) if im.format == "TIFF" else None
    planar = tags is not None and (tags.get(284), tags.get(259, 1)) == (2, 1)  # uncompressed
    bits = tags.get(258, 8) if planar else 8
    if max(bits if isinstance(bits, tuple) else (bits,)) <= 8:
        return None
    return (
        "cannot read this image correctly (16-bit colour planes one after another, uncompressed: "
        "this Pillow decodes them scrambled). Save it again with its colours interleaved "
        "(tifffile: planarconfig='contig'), or compressed (Deflate), and use that file"
    )


FLAT = 0.999  # an image this much of one value (each channel) has nothing to inspect
SAME = 0.5 / 65535  # one value: within half a 16-bit step (a faint texture of 12-bit data is not)


def flat_image(a) -> str | None:
    """Why a decoded image `a` (float [H, W, C] in 0-1) gets no verdict: (nearly) all of it is
    one value, an empty synthetic frame, a fully transparent picture, a picture saturated to
    white, or a float image whose values were out of 0-1 and clipped; None for an ordinary image,
    however plain (a camera's noise, or a 16-bit image's faint texture, is something to inspect).
    Its score would say nothing, and a PASS would send an empty frame down the line. (Array
    methods only: this file imports no numpy.)"""
    step = max(1, int((a.shape[0] * a.shape[1] / 200_000) ** 0.5))  # some 200,000 pixels
    sample = a[::step, ::step].reshape(-1, a.shape[-1])
    ordered = sample.copy()
    ordered.sort(axis=0)
    colour = ordered[len(ordered) // 2]  # each channel's median
    share = float((abs(sample - colour) <= SAME).all(axis=-1).mean())
    if not share >= FLAT:  # NaN pixels: no share, refused where they are read
        return None
    return (
        f"{share:.1%} of it is one flat colour "
        f"({', '.join(f'{c:.2f}' for c in colour)} of 1): an empty frame or picture, fully "
        "transparent, saturated, or a float image whose values lie outside 0-1 and were clipped. "
        "There is nothing to inspect, so it gets no verdict (ERROR, not PASS)"
    )
