"""Deploy a `patchknn` run without this package: one ONNX file, run with onnxruntime alone.

`export_onnx(run_dir, out_path)` traces the run's own `PatchKNN.predict_batch` (backbone, patch
features, distance to the memory bank, upsampled and smoothed map, image score) with
`torch.onnx.export`, so the file computes what the detector computes, whatever its backbone,
stages, padding or image score: the bank and the map matrices become constants of the graph.
`predict_onnx(onnx_path, images)` scores image files with that file using only numpy, Pillow and
onnxruntime: it never imports torch (a test checks), and its half of this module (`preprocess`,
`OnnxDetector`, `predict_onnx`) imports nothing else of the package but the Pillow-only
`anomaly.data.image_kind`, for its warnings (skipped when absent), so it can be copied to a
machine that has only those three. `predict --onnx` is `anomaly.export_predict.predict_files`.

The file's contract, also stored in its `metadata_props` (read them with
`onnxruntime.InferenceSession(path).get_modelmeta().custom_metadata_map`):

- input `images`: float32 [1, channels, size, size], RGB (channels 3) or grey (channels 1),
  values in [0, 1]: one image per call;
- outputs `scores` [1] (higher = more anomalous) and `maps` [1, size, size] (per-pixel scores on
  the same scale);
- preprocessing (`preprocess` below): decode the file and turn it as viewers show it (its EXIF
  orientation, `PIL.ImageOps.exif_transpose`); 16-bit images are divided by 65535, 8-bit
  by 255; palette images are converted to RGB(A), images with transparency composited on white;
  grey -> RGB repeats the channel, RGB -> grey is 0.299 R + 0.587 G + 0.114 B (not rounded);
  then each channel is resized to size x size with Pillow's bilinear filter on float32 data
  (`Image.fromarray(channel, "F").resize((size, size), Image.BILINEAR)`, which widens the filter
  when shrinking, as `torch.nn.functional.interpolate(..., antialias=True)` does) and clipped to
  [0, 1]. The aspect ratio is not kept;
- `threshold`: the run's saved decision threshold when it had one (score >= threshold means
  anomalous), `threshold_rule` its rule and `threshold_params` (JSON, `THRESHOLD_PARAMS`) what
  it guarantees, as `predict --run` says it; `map_range`: the colour scale of its held-out maps;
- `images` (JSON): what the training images were (split.json's "images"), so prediction warns
  of a greyscale, 16-bit or stretched image as `predict --run` does (none stored: no check).

Only `patchknn` runs export (and `auto` runs that chose patchknn: their choice is exported):
the other methods' scores are not one traced graph of fixed size.
The file always searches the whole memory bank: a run trained with an approximate search
(`--search-clusters`) exports the exact search, whose scores are never higher than the run's.
The backbone is traced from torch whatever the run's `--runtime`.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from pathlib import Path

import numpy as np

FORMAT = "anomaly-onnx/1"
OPSET = 17
INSTALL = "pip install onnx onnxruntime   (or: pip install 'anomaly[export]')"
PREPROCESSING = (
    "Decode the file; apply its EXIF orientation (PIL.ImageOps.exif_transpose); divide 8-bit "
    "values by 255 and 16-bit values by 65535; composite images with transparency on white; "
    "grey->RGB repeats the channel, RGB->grey is 0.299 R + 0.587 G + 0.114 B. Resize each "
    "channel to size x size with Pillow's BILINEAR filter on float32 data (mode 'F'; "
    "antialiased when shrinking, like torch interpolate antialias=True), aspect ratio not kept; "
    "clip to [0, 1]. Feed float32 [1, channels, size, size], channel order RGB."
)


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


class ExportError(ValueError):
    """A run that cannot be exported, or a file that is not an exported detector."""


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise ExportError(
            f"ONNX export and prediction need the package {module!r}, which is not "
            f"installed. Install it with\n    {INSTALL}"
        ) from None


# --- export (needs torch, onnx and the package) ------------------------------------------------
def export_onnx(run_dir: str | Path, out_path: str | Path | None = None) -> Path:
    """Write the patchknn run in `run_dir` as one ONNX file (default `run_dir/model.onnx`).

    The graph is traced from the detector's own `predict_batch` on one image of the run's size,
    so it takes exactly one image per call. Returns the path written.
    """
    from anomaly.pipeline import load_run
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
    if (out_path.exists() or out_path.is_symlink()) and not _is_export(out_path):
        raise ExportError(
            f"{out_path} exists and is not a detector exported by anomaly.export, so it is left "
            "as it is; choose another --out, or move the file away first"
        )
    detector = load_run(run, device="cpu")
    if config.method == "auto":  # its choice is what predicts: export that
        detector = _auto_choice(run, detector, config.size)
    return export_detector(detector, out_path, metadata(detector.config, run))


def _is_export(path: Path) -> bool:
    """Whether `path` is a plain file holding an ONNX model this module wrote (export overwrites
    only those: an earlier export of a run, made again after a new threshold)."""
    if path.is_symlink() or not path.is_file():
        return False
    onnx = _require("onnx")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001  (not ONNX at all: protobuf's and onnx's own errors)
        return False
    return any(p.key == "format" and p.value == FORMAT for p in model.metadata_props)


def _auto_choice(run, auto, run_size: int):
    """The patchknn detector an auto run chose (ExportError if it chose another method)."""
    inner = auto.inner
    if inner is None or inner.config.method != "patchknn":
        method = inner.config.method if inner is not None else None
        raise ExportError(
            f"{run}: this auto run chose {method!r}, and only patchknn exports to ONNX; train "
            "a patchknn run with the settings in its selection.json instead"
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
    from anomaly.safe_files import temporary_beside

    onnx = _require("onnx")

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
    with temporary_beside(out_path) as (fd, tmp):  # a planted link is never followed
        os.close(fd)  # torch and onnx write it by name
        with torch.no_grad():
            trace_to_onnx(Traced(detector).eval(), example, tmp, opset=OPSET)
        model = onnx.load(str(tmp))
        del model.metadata_props[:]
        for key, value in (meta or metadata(config)).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        model.doc_string = "anomaly patchknn detector: " + PREPROCESSING
        onnx.save(model, str(tmp))
    return out_path


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
        "config": json.dumps(_config_dict(config)),
    }
    if run is not None and run.has_threshold():
        threshold = run.threshold()
        meta["threshold"] = repr(float(threshold.value))
        meta["threshold_rule"] = threshold.rule
        params = threshold.params.items()  # a param that predict would refuse is left out
        params = {k: v for k, v in params if k in THRESHOLD_PARAMS and THRESHOLD_PARAMS[k](v)}
        meta["threshold_params"] = json.dumps(params)
    if run is not None and run.file(run.VAL_SCORES).is_file():  # the colour scale of its overlays
        meta["map_range"] = json.dumps(list(run.map_range()))
    from anomaly.pipeline import trained_images

    images = trained_images(run) if run is not None else None  # a run from before it: none
    if isinstance(images, dict) and images and _summary(images):
        meta["images"] = json.dumps(images)
    return meta


def _config_dict(config) -> dict:
    from dataclasses import asdict

    return asdict(config)


# --- prediction (numpy, Pillow and onnxruntime only) ---------------------------------------------
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _refused_frames(im, path) -> str | None:
    """Why a file of several frames is refused, as the package's decoder says it (an animation,
    a TIFF stack of pages; `image_kind.refused_frames`); without the package, animations only."""
    try:
        from anomaly.data.image_kind import refused_frames
    except ImportError:
        n = getattr(im, "n_frames", 1)
        if im.format in ("GIF", "WEBP", "PNG") and n > 1:
            return f"cannot read this image (an animation of {n} frames, not a still image)"
        return None
    return refused_frames(im, path)


def preprocess(path: str | Path, size: int, channels: int) -> np.ndarray:
    """An image file as the ONNX input expects it: float32 [channels, size, size] in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    if Path(path).is_dir():  # predict --onnx FOLDER passes on a folder it found no images in
        raise ExportError(f"{path} is a folder with no images in it; give image files")
    try:
        with Image.open(path) as im:
            refused = _refused_frames(im, path)
            if refused is None:
                a = _to_array(_upright(im))
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
        raise ExportError(
            f"{path}: cannot read this image ({err}); give a PNG, JPEG, BMP, TIFF, WebP or GIF file"
        ) from None
    if refused is not None:
        raise ExportError(f"{path}: {refused}")
    if channels == 1 and a.shape[-1] == 3:
        a = a @ _LUMA
        a = a[..., None]
    elif channels == 3 and a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    if a.shape[:2] != (size, size):
        a = np.stack(
            [
                np.asarray(
                    Image.fromarray(np.ascontiguousarray(a[..., c]), "F").resize(
                        (size, size), Image.BILINEAR
                    )
                )
                for c in range(a.shape[-1])
            ],
            axis=-1,
        )
    return np.clip(a, 0.0, 1.0).transpose(2, 0, 1).astype(np.float32, copy=False)


def _upright(im):
    """`im` turned as viewers show it, by its EXIF orientation (`PIL.ImageOps.exif_transpose`,
    as the package's `image_kind.upright`); EXIF that Pillow cannot parse: as stored."""
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001  (TypeError, struct.error, ... from damaged EXIF)
        return im


def _to_array(im) -> np.ndarray:
    """Any PIL image -> float32 [H, W, 1 or 3] in [0, 1] (see the module docstring)."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        return np.clip(np.asarray(im, dtype=np.float32) / 65535.0, 0.0, 1.0)[..., None]
    if mode == "F":
        return np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)[..., None]
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "1":
        im = im.convert("L")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        im = im.convert("RGB")
    a = np.asarray(im, dtype=np.float32) / 255.0
    if a.ndim == 2:
        a = a[..., None]
    if im.mode in ("LA", "RGBA"):
        a = a[..., :-1] * a[..., -1:] + (1.0 - a[..., -1:])
    return a


def _bad(path: Path, what: str) -> ExportError:
    return ExportError(
        f"{path}: {what}, so it is not a file `export` wrote, or it was changed since; "
        "export the run again (`python -m anomaly export --run RUN`)"
    )


def _json_object(path: Path, meta: dict, key: str) -> dict | None:
    """The JSON object in metadata `key` (None when there is none), or ExportError naming it."""
    if key not in meta:
        return None
    try:
        value = json.loads(meta[key])
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise _bad(path, f"its metadata {key} is {meta[key]!r:.60}, not a JSON object")
    return value


def _records(path: Path, meta: dict) -> tuple[dict | None, dict | None]:
    """(threshold_params, images) from a file's metadata, each checked field by field (None
    when the file has none: exported before they were stored); ExportError names a bad one."""
    params = _json_object(path, meta, "threshold_params")
    if params is not None and "threshold" not in meta:
        raise _bad(path, "its metadata has threshold_params but no threshold")
    for key, value in (params or {}).items():
        if key not in THRESHOLD_PARAMS or not THRESHOLD_PARAMS[key](value):
            raise _bad(path, f"its metadata threshold_params.{key:.40} is {value!r:.60}")
    images = _json_object(path, meta, "images")
    if images and not _summary(images):
        raise _bad(path, f"its metadata images is {meta['images']!r:.80}, not what export writes")
    return params, images


def _summary(d: dict) -> bool:
    """Whether `d` is what `image_kind.summarize` writes: colour [bools], bits [8, 16 or 32],
    aspect [lowest, highest], 0 < lowest <= highest."""
    colour, bits, aspect = d.get("colour", []), d.get("bits", []), d.get("aspect", [1, 1])
    lists = all(type(x) is list for x in (colour, bits, aspect)) and len(aspect) == 2
    return (
        lists
        and all(type(c) is bool for c in colour)
        and all(type(b) is int and b in (8, 16, 32) for b in bits)
        and all(type(a) in (int, float) for a in aspect)
        and 0 < aspect[0] <= aspect[1] < math.inf
    )


def _contract(path: Path, meta: dict, session) -> tuple[int, int, float | None, list | None]:
    """(size, channels, threshold or None, map_range or None) from a file's metadata, checked
    against its graph: an exported file is untrusted input, and one ExportError names it."""

    def bad(what: str) -> ExportError:
        return _bad(path, what)

    def number(key: str, kind: type):
        try:
            value = kind(meta[key])
        except (KeyError, ValueError):
            raise bad(f"its metadata {key} is {meta.get(key, 'missing')!r:.60}") from None
        if kind is float and not math.isfinite(value):
            raise bad(f"its metadata {key} is {value}, not a finite number")
        return value

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
    if not math.isfinite(high - low) or low > high:
        raise bad(f"its metadata map_range is {meta['map_range']!r:.60}, not [low, high]")
    return size, channels, threshold, [low, high]


class OnnxDetector:
    """An exported detector: `predict(images)` -> (scores [N], maps [N, size, size]).

    `images` are file paths or float arrays [channels, size, size] already preprocessed.
    """

    def __init__(self, onnx_path: str | Path, threads: int = 0) -> None:
        ort = _require("onnxruntime")
        path = Path(onnx_path)
        if not path.is_file():
            raise ExportError(
                f"{path}: no such ONNX file; make one with "
                f"`python -m anomaly export --run RUN --out {path}`"
            )
        options = ort.SessionOptions()
        # idle worker threads sleep instead of spinning (as OMP_WAIT_POLICY=PASSIVE for torch):
        # spinning burns CPU time that a busy or small machine needs
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # noqa: BLE001  (onnxruntime's own classes for corrupt files)
            raise ExportError(
                f"{path} is not a readable ONNX model ({str(err)[:200]}); export the run again"
            ) from None
        self.meta = self.session.get_modelmeta().custom_metadata_map
        if self.meta.get("format") != FORMAT:
            raise ExportError(
                f"{path} was not written by anomaly.export (no format "
                f"{FORMAT!r} in its metadata); export the run with "
                f"`python -m anomaly export --run RUN`"
            )
        self.path = path
        self.size, self.channels, self.threshold, self.map_range = _contract(
            path, self.meta, self.session
        )
        # the saved threshold's guarantee, and what the training images were (None: not stored)
        self.threshold_params, self.trained_images = _records(path, self.meta)

    def warn_unlike(self, images) -> list[str]:
        """Warn on stderr, as `predict --run` does, of each image file in `images` unlike the
        run's training images (greyscale, 16-bit, another aspect ratio): its score means little.
        No check for a file exported without that record, or where this module was copied
        without the package (`anomaly.data.image_kind` imports only Pillow)."""
        try:
            from anomaly.data.image_kind import warn_unlike
        except ImportError:
            return []
        paths = [p for p in images if isinstance(p, (str, Path))]
        return warn_unlike(paths, self.trained_images, self.channels, self.size)

    def predict(self, images) -> tuple[np.ndarray, np.ndarray]:
        scores, maps = [], []
        for image in images:
            if isinstance(image, (str, Path)):
                x = preprocess(image, self.size, self.channels)
            else:
                x = np.asarray(image, dtype=np.float32)
            want = (self.channels, self.size, self.size)
            if x.shape != want:
                raise ExportError(
                    f"{self.path} takes images of shape {want}, got {x.shape}; "
                    f"pass file paths to have them resized"
                )
            score, amap = self.session.run(None, {"images": x[None]})
            if score.size != 1 or amap.shape != (1, self.size, self.size):
                raise ExportError(
                    f"{self.path}: its graph gave a score of shape {score.shape} and a map of "
                    f"{amap.shape}, not (1,) and {(1, self.size, self.size)}; export the run again"
                )
            scores.append(score.reshape(-1)[0])
            maps.append(amap[0])
        if not maps:
            return np.zeros(0, np.float32), np.zeros((0, self.size, self.size), np.float32)
        return np.asarray(scores, dtype=np.float32), np.stack(maps)


def predict_onnx(onnx_path: str | Path, images) -> tuple[np.ndarray, np.ndarray]:
    """Scores [N] and maps [N, size, size] of image files (or preprocessed arrays); files unlike
    the run's training images are named on stderr (`OnnxDetector.warn_unlike`)."""
    detector = OnnxDetector(onnx_path)
    detector.warn_unlike(images)
    return detector.predict(images)
