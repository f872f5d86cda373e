"""Deploy a `patchknn` run without this package: one ONNX file, run with onnxruntime alone.

`export_onnx(run_dir, out_path)` traces the run's own `PatchKNN.predict_batch` (backbone, patch
features, distance to the memory bank, upsampled and smoothed map, image score) with
`torch.onnx.export`, so the file computes what the detector computes, whatever its backbone,
stages, padding or image score: the bank and the map matrices become constants of the graph.
Scoring with the file is `anomaly.onnx_predict` (numpy, Pillow and onnxruntime alone, one file
to copy; its names are importable from here too); `predict --onnx` is
`anomaly.export_predict.predict_files`. The file's contract is in `anomaly.onnx_predict`.

Only `patchknn` runs export (and `auto` runs that chose patchknn: their choice is exported):
the other methods' scores are not one traced graph of fixed size.
The file searches the patches the run searches (`--search-refine`: the choice of patches is
part of the traced graph), always against the whole memory bank: a run trained with an
approximate search (`--search-clusters`) exports the exact search, whose scores are never
higher than the run's. The choice is the same wherever the two compute the same distances; where
rounding swaps two distances at the cut, one patch of the low ground is searched in one and
interpolated in the other (1 of 140 cookie test images in one check: its map differed by up
to 2.8 % of its maximum there, while every image score agreed within 3e-6).
The backbone is traced from torch whatever the run's `--runtime`. A run with `--search-precision
int8` exports its 8-bit search (`anomaly.detectors.knn.Int8Search.traced`: onnxruntime's
com.microsoft MatMulIntegerToFloat, which its CPU provider holds, and the exact search of the
queries beyond the bank's range), so its file scores as the run does, not as a float32 run:
from the image files, within 1.3e-7 on the cookies: the package's loader resizes with the file's
own preprocessing (`onnx_predict.resize_channels`), so both see the same input, bit for bit
(docs/measurements.md).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

# the file's contract and scoring with it (numpy, Pillow and onnxruntime alone); imported from
# here by callers and tests too
from anomaly.decision import rested_on
from anomaly.onnx_checks import THRESHOLD_PARAMS, TRAIN_THRESHOLD, is_images_record
from anomaly.onnx_predict import (  # noqa: F401
    FORMAT,
    INSTALL,
    ExportError,
    OnnxDetector,
    predict_each,
    predict_onnx,
    preprocess,
    require,
)
from anomaly.safe_files import sha256_file  # noqa: F401  (cli: the file's, printed)
from anomaly.terminal import shell_word
from anomaly.threshold_file import (
    MODEL_RECORD,
    UNRECORDED,
    UNSUPPORTED,
    drop_guarantee,
    model_record,
)

OPSET = 17
PREPROCESSING = (  # the file's metadata "preprocessing": what `onnx_predict.preprocess` does
    "Decode the file; apply its EXIF orientation (PIL.ImageOps.exif_transpose); divide 8-bit "
    "values by 255 and 16-bit values by 65535; composite images with transparency on white; "
    "grey->RGB repeats the channel, RGB->grey is 0.299 R + 0.587 G + 0.114 B. Resize each "
    "channel to size x size with Pillow's BILINEAR filter on float32 data (mode 'F'; "
    "antialiased when shrinking; torch's interpolate with antialias=True comes within about 2e-5 "
    "of it, not bit for bit), aspect ratio not kept; "
    "clip to [0, 1]. Feed float32 [1, channels, size, size], channel order RGB. Where the "
    "metadata's decode is 'draft', open a JPEG (or MPO) with Pillow's draft mode first "
    "(Image.draft(mode, (d, d)), d the metadata's draft_size, else 2 size; before anything "
    "reads its pixels)."
)


# --- export (needs torch, onnx and the package) ------------------------------------------------
def export_onnx(run_dir: str | Path, out_path: str | Path | None = None) -> Path:
    """Write the patchknn run in `run_dir` as one ONNX file (default `run_dir/model.onnx`).

    The graph is traced from the detector's own `predict_batch` on one image of the run's size,
    so it takes exactly one image per call. Returns the path written.
    """
    from anomaly.build import load_run
    from anomaly.runs import RunDir

    run = RunDir(run_dir).require()
    config = run.config()
    if config.method not in ("patchknn", "auto"):
        raise ExportError(
            f"{run}: only patchknn runs (and auto runs that chose patchknn) export to ONNX, "
            f"this run is {config.method!r}; train one with "
            f"`python -m anomaly train --method patchknn --data ROOT --out RUN`"
        )
    out_path = Path(out_path) if out_path is not None else run.file("model.onnx")
    if out_path.is_dir():
        raise ExportError(
            f"{out_path} is a folder; give the ONNX file's name, e.g. {out_path / 'model.onnx'}"
        )
    earlier = _export_meta(out_path)
    if (out_path.exists() or out_path.is_symlink()) and earlier is None:
        raise ExportError(
            f"{out_path} exists and is not a detector exported by anomaly.export, so it is left "
            "as it is; choose another --out, or move the file away first"
        )
    with run.lock_unless_outside("export", out_path.parent):  # model.pt and threshold.json of
        detector = load_run(run, device="cpu")  # one moment: none rewritten meanwhile
        if config.method == "auto":  # its choice is what predicts: export that
            detector = _auto_choice(run, detector, config.size)
        meta = metadata(detector.config, run)
        if getattr(detector, "int8", False):  # else they saturate without VNNI (onnx_predict)
            from anomaly.detectors.knn import WEIGHT_MAX

            meta["int8_weight_max"] = str(WEIGHT_MAX)
        if config.decode == "draft":  # the run's decoding (auto: not its choice's
            meta["draft_size"] = str(2 * config.size)  # size), so both decode a JPEG alike
        written = export_detector(detector, out_path, meta)
    if earlier is not None and not _same_model(earlier, meta):
        warnings.warn(
            f"{out_path} held an export of another model (other settings or data), which this "
            "one replaces",
            stacklevel=2,
        )
    if not run.has_threshold():
        warnings.warn(
            f"{run} has no threshold.json, so {written} holds no threshold: `predict --onnx` "
            "refuses it (onnx_predict.predict_onnx still gives scores and maps, no verdicts). "
            f"Set one, then export again: python -m anomaly threshold --run {shell_word(run)} --rule "
            "conformal --value 0.05",
            stacklevel=2,
        )
    return written


def _same_model(earlier: dict[str, str], meta: dict[str, str]) -> bool:
    """Whether the export `earlier` (its metadata) holds the model `meta` describes: the same
    model.pt, or, for an export from before exports recorded it (2026-12-01), the same config
    in every field that export wrote (fields added since are the newer version's)."""
    if earlier.get(MODEL_RECORD) is not None:
        return earlier.get(MODEL_RECORD) == meta.get(MODEL_RECORD)
    try:
        then, now = json.loads(earlier.get("config", "")), json.loads(meta["config"])
    except ValueError:
        return False
    return isinstance(then, dict) and all(now.get(k, v) == v for k, v in then.items())


def _export_meta(path: Path) -> dict[str, str] | None:
    """The metadata of `path` when it is a plain file holding an ONNX model this module wrote,
    else None (export overwrites only those: an earlier export of a run, made again after a new
    threshold)."""
    if path.is_symlink() or not path.is_file():
        return None
    onnx = require("onnx")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001  (not ONNX at all: protobuf's and onnx's own errors)
        return None
    meta = {p.key: p.value for p in model.metadata_props}
    return meta if meta.get("format") == FORMAT else None


def exported_model(path: Path) -> str | None:
    """The SHA-256 of the model.pt that the export at `path` was made from, as it records it;
    None for a file that is not an export of this module, one from before exports recorded it,
    or without the onnx package to read it."""
    try:
        meta = _export_meta(path)
    except ExportError:  # no onnx package: nothing to tell
        return None
    return (meta or {}).get(MODEL_RECORD)


def use_the_run(run) -> str:
    """How to predict with `run`'s own model where an export of another model sits in it."""
    return (
        f"export it again (python -m anomaly export --run {shell_word(run)}: patchknn runs, and auto runs "
        f"that chose patchknn), or use python -m anomaly predict --run {shell_word(run)}"
    )


def _auto_choice(run, auto, run_size: int):
    """The patchknn detector an auto run chose (ExportError if it chose another method)."""
    inner = auto.inner
    if inner is None or inner.config.method != "patchknn":
        method = inner.config.method if inner is not None else None
        raise ExportError(
            f"{run}: this auto run chose {method!r}, and only patchknn exports to ONNX; train "
            "a patchknn run with the settings in its selection.json instead"
        )
    if inner.config.size > run_size:  # it learned images enlarged from run_size
        raise ExportError(
            f"{run}: auto's choice works at {inner.config.size} px, but the run gave it images "
            f"of {run_size} px, enlarged: it learned blurred images. The ONNX file resizes each "
            f"image once, to {inner.config.size} px, so it would see them sharper and score "
            "them higher than the run's threshold expects. Train auto at --size "
            f"{inner.config.size} or more (its default) to export it"
        )
    if inner.config.size != run_size:
        warnings.warn(
            f"{run}: auto's choice works at {inner.config.size} px and the run at {run_size} px; "
            f"the ONNX file resizes each image once, to {inner.config.size} px, while `predict "
            f"--run` resizes to {run_size} px first: scores can differ a little",
            stacklevel=3,
        )
    return inner


def export_detector(detector, out_path: str | Path, meta: dict[str, str] | None = None) -> Path:
    """Write a fitted `PatchKNN` (on the CPU) as one ONNX file with metadata `meta` (default:
    `metadata(detector.config)`). Returns the path written."""
    import torch
    from torch import nn

    from anomaly.detectors.ort_sessions import trace_to_onnx
    from anomaly.safe_files import disk_full_named, temporary_beside

    onnx = require("onnx")

    class Traced(nn.Module):  # the detector's own forward, as one module for the tracer
        def __init__(self, det) -> None:
            super().__init__()
            self.extractor = det.extractor  # its weights, for the tracer's parameter list
            self.det = det

        def forward(self, images: torch.Tensor):
            return self.det.predict_batch(images)

    config, out_path = detector.config, Path(out_path)
    example = torch.rand(
        1, config.channels, config.size, config.size, generator=torch.Generator().manual_seed(0)
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with disk_full_named(out_path), temporary_beside(out_path) as (fd, tmp):  # no link followed
        os.close(fd)  # torch and onnx write it by name
        with torch.no_grad():
            trace_to_onnx(Traced(detector).eval(), example, tmp, opset=OPSET)
        model = onnx.load(str(tmp))
        del model.metadata_props[:]
        meta = dict(meta or metadata(config))
        if getattr(detector, "int8", False):  # its bank weights are 7-bit: no saturation warning
            from anomaly.detectors.knn import WEIGHT_MAX

            meta.setdefault("int8_weight_max", str(WEIGHT_MAX))
        for key, value in meta.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        model.doc_string = "anomaly patchknn detector: " + PREPROCESSING
        _share_constants(model.graph)
        onnx.save(model, str(tmp))
    return out_path


def _share_constants(graph, min_bytes: int = 1024) -> int:
    """Keep one of each set of identical Constant nodes of `graph` (of `min_bytes` or more),
    the first, and point the others' consumers at it: the tracer writes a constant once per use
    (the float32 search's bank weights once per block of queries: 8 copies, 4.5 of a cookie
    export's 6.5 MB). The computation is the same. Returns how many nodes were dropped."""
    if any(a.g.node or a.graphs for node in graph.node for a in node.attribute):
        return 0  # names used inside a subgraph would need renaming there too
    outputs = {out.name for out in graph.output}
    first: dict[bytes, str] = {}
    renamed: dict[str, str] = {}
    kept = []
    for node in graph.node:
        value = node.attribute[0].t if node.op_type == "Constant" and node.attribute else None
        if value is not None and len(value.raw_data) >= min_bytes:
            key = value.SerializeToString()  # type, shape and bytes
            if key in first and node.output[0] not in outputs:
                renamed[node.output[0]] = first[key]
                continue
            first[key] = node.output[0]
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
        kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    return len(renamed)


def metadata(config, run=None) -> dict[str, str]:
    """The strings stored in the file's metadata_props (all a user needs besides onnxruntime)."""
    meta = {
        "format": FORMAT,
        "method": config.method,
        "size": str(config.size),
        "channels": str(config.channels),
        "color": "RGB" if config.channels == 3 else "L",
        "value_range": "0,1",
        "batch": "1",
        "input": "images",
        "outputs": "scores,maps",
        "preprocessing": PREPROCESSING,
        "decode": config.decode,
        "config": json.dumps(_config_dict(config)),
        "exported_by": json.dumps(exported_by()),  # what wrote the file (an audit's question)
    }
    if run is not None and run.has_threshold():
        threshold = run.threshold()
        meta["threshold"] = repr(float(threshold.value))
        meta["threshold_rule"] = threshold.rule
        params = dict(threshold.params)
        void = [flag for flag in (UNRECORDED, UNSUPPORTED) if params.pop(flag, False) is True]
        if void:  # not known to be this model's, or not from its scores: as older readers of
            drop_guarantee(params)  # exports know it, "earlier_model" (no guarantee claimed);
            meta["threshold_void"] = void[0]  # newer ones say why (`exported_threshold`)
        # a param that predict would refuse is left out
        params = {
            k: v for k, v in params.items() if k in THRESHOLD_PARAMS and THRESHOLD_PARAMS[k](v)
        }
        meta["threshold_params"] = json.dumps(params)
        if good := rested_on(run, threshold):  # predict --onnx compares a batch with them
            meta["good_scores"] = json.dumps([float(x) for x in good])
        if threshold.params.get("set_by") == "train":  # predict --onnx says what train said
            on_training = threshold.params.get("on_training_images") is True
            meta["threshold_train"] = TRAIN_THRESHOLD[on_training]
    if run is not None:  # predict --onnx tells an export of an earlier model of the run
        meta.update(model_record(run.file(run.MODEL)))
    if run is not None and run.file(run.VAL_SCORES).is_file():  # the colour scale of its overlays
        from anomaly.overlays import run_scale

        scale = run_scale(run)  # the held-out good maps' floor, and the saved pixel threshold
        meta["map_range"] = json.dumps([scale.floor, scale.pixel_threshold])
    from anomaly.build import trained_images

    images = trained_images(run) if run is not None else None  # a run from before it: none
    if isinstance(images, dict) and images and is_images_record(images):
        meta["images"] = json.dumps(images)
    return meta


def exported_by() -> dict:
    """The versions that export a file (its metadata's "exported_by"): the package and the code
    it ran from, Python, the processor and the libraries that trace, write and check the graph."""
    from importlib.metadata import PackageNotFoundError, version

    from anomaly.run_versions import versions

    made = versions()  # (onnxruntime's among them; onnx, which writes the file, is not)
    keys = ("anomaly", "code", "python", "processor", "torch", "numpy", "onnxruntime")
    record = {k: made[k] for k in keys}
    try:
        record["onnx"] = version("onnx")
    except PackageNotFoundError:
        record["onnx"] = None
    return record


def _config_dict(config) -> dict:
    from dataclasses import asdict

    return asdict(config)
