"""Score images with a file `anomaly.export` wrote, using numpy, Pillow and onnxruntime alone.

`predict_onnx(onnx_path, images)` (`predict_each` for batch jobs, or `OnnxDetector`) imports no
torch (a test checks), of the package only `anomaly.data.image_kind` and `image_unlike` (its
warnings; reduced without them) and `onnx_checks` (the checks of the file and the arrays given:
copy it beside this file, or it refuses to load), so it runs where only those three are.

The file's contract, also stored in its `metadata_props` (read them with
`onnxruntime.InferenceSession(path).get_modelmeta().custom_metadata_map`):

- input `images`: float32 [1, channels, size, size], RGB (channels 3) or grey (channels 1),
  values in [0, 1]: one image per call;
- outputs `scores` [1] (higher = more anomalous) and `maps` [1, size, size] (per-pixel scores on
  the same scale);
- preprocessing: its metadata `preprocessing` says it (`anomaly.export.PREPROCESSING`), `preprocess` does it (`resize_channels`: Pillow's
  bilinear filter on float32 data, which the package's loader uses too); `decode` "draft" (a run
  trained so): a JPEG drafted to `draft_size` (else twice `size`), missing: "full", every pixel;
- `threshold`: the run's saved decision threshold when it had one (score >= threshold means
  anomalous), `threshold_rule` its rule and `threshold_params` (JSON, `onnx_checks.THRESHOLD_PARAMS`) what
  it guarantees, as `predict --run` says it; `map_range`: its overlays' colour scale, [floor,
  pixel threshold] (the held-out good maps' typical value, and the pixel threshold the run saved
  or else their 99.9 % quantile);
- `images` (JSON): what the training images were (split.json's "images"), so prediction warns
  of a greyscale, 16-bit or stretched image as `predict --run` does (none stored: no check).
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import sys
import warnings
from pathlib import Path

import numpy as np


def _sibling(name: str):
    """The module `name`.py beside this file, loaded by its path (ImportError where none)."""
    import importlib.util

    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path) if path.is_file() else None
    if spec is None or spec.loader is None:
        raise ImportError(f"no {path}")
    sys.modules[name] = module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


try:  # the checks of the file and its input: in the package, or copied beside this file
    from anomaly import onnx_checks as _checks

    if getattr(_checks, "CHECKS_VERSION", 0) < 5:  # an older package: the copy beside this
        raise ImportError("anomaly.onnx_checks is older than this file")
except ImportError:
    try:  # beside this file, in a package of yours or on its own
        if __package__:
            from . import onnx_checks as _checks
        else:
            try:
                import onnx_checks as _checks
            except ImportError:  # its folder not on sys.path (python -I, PYTHONSAFEPATH)
                _checks = _sibling("onnx_checks")
        if (found := getattr(_checks, "CHECKS_VERSION", 0)) < 5:
            raise ImportError(f"{_checks.__file__}: version {found}, an older one")
    except ImportError as err:
        _NEEDS = (
            f"onnx_predict.py needs onnx_checks.py of its own version beside it ({err}; "
            "anomaly/onnx_checks.py in the package): an ONNX file from someone else is untrusted "
            "input, and it checks the file before onnxruntime runs any of it. Copy it beside "
            "onnx_predict.py"
        )
        if __name__ == "__main__":  # run from the shell: one line, not a traceback; status 2
            print(f"error: {_NEEDS}", file=sys.stderr)
            sys.exit(2)
        raise ImportError(_NEEDS) from None
ExportError, bad_file, short_error = _checks.ExportError, _checks.bad_file, _checks.short_error

FORMAT = "anomaly-onnx/1"
EXPORT = "python -m anomaly export --run"
INSTALL = "pip install onnxruntime numpy pillow"  # all this file needs (export: anomaly[export])


def require(module: str):
    if module == "onnxruntime":  # no device id written under ~/.cache/Microsoft/ for its
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # telemetry (as the package)
    try:
        return __import__(module)
    except ImportError:
        name = {"PIL": "pillow"}.get(module, module)
        fix = "pip install 'anomaly[export]'" if name == "onnx" else f"{INSTALL} (all it needs)"
        raise ExportError(f"the package {name!r} is not installed; install it: {fix}") from None


_SAID_NO_CHECK: list[bool] = []  # the note on unchecked images, said once per process
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _refused_frames(im, path) -> str | None:
    """Why a file of several frames is refused, as the package's decoder says it (an animation,
    a TIFF stack of pages; `image_kind.refused_frames`); copied without the package, the same
    two refusals in short (a TIFF whose other pages are all smaller, a thumbnail or a pyramid,
    is read as its first page there too)."""
    try:
        from anomaly.data.image_kind import refused_frames
    except ImportError:
        n = getattr(im, "n_frames", 1)
        if not isinstance(n, int) or n <= 1:
            return None
        if im.format in ("GIF", "WEBP", "PNG"):
            return f"cannot read this image (an animation of {n} frames, not a still image)"
        if im.format == "TIFF":
            first = im.size
            try:
                for page in range(1, n):
                    im.seek(page)
                    if im.size[0] >= first[0] or im.size[1] >= first[1]:
                        return f"a TIFF of {n} pages, not one image: save the page you mean alone"
            finally:
                im.seek(0)
        return None
    return refused_frames(im, path)


def _out_of_range(im, path) -> str | None:
    """As the package's `check_value_range`: a float (32-bit integer) image's values outside
    0-1 (0-65535) are clipped, which a warning says; NaN pixels refuse the image (the words)."""
    top = {"F": 1.0, "I": 65535.0}.get(im.mode)
    if top is None:
        return None
    a = np.asarray(im, dtype=np.float64)
    if nan := int(np.isnan(a).sum()):
        return f"{nan} of its {a.size} pixel values are NaN (not a number); fill them"
    clipped = float(np.mean((a < 0) | (a > top)))
    if clipped:
        import warnings

        warnings.warn(
            f"{path}: {clipped:.1%} of its values lie outside 0-{top:g} (it holds {a.min():.4g} "
            f"to {a.max():.4g}) and are clipped to black or white: save it scaled to 0-{top:g}",
            UserWarning,
            stacklevel=3,
        )
    return None


def preprocess(
    path: str | Path, size: int, channels: int, decode: str = "full", draft: int | None = None
) -> np.ndarray:
    """An image file as the ONNX input expects it: float32 [channels, size, size] in [0, 1]
    (`decode` "draft": a JPEG decoded in Pillow's draft mode to at least `draft` pixels a side,
    default twice `size`, as the run's images were)."""
    return to_input(read_file(path, size, decode, draft), size, channels)


def read_file(path: str | Path, size: int, decode: str = "full", draft: int | None = None):
    """`preprocess`' decoding alone: the image at its own size (a drafted JPEG at the size it
    drafts to), float32 [H, W, 1 or 3] in [0, 1]; ExportError naming a file it cannot read."""
    require("PIL")  # not installed: said, not a traceback
    from PIL import Image  # (its UnidentifiedImageError is an OSError)

    if (why := _checks.not_a_file(path)) is not None:
        raise ExportError(why)
    if Path(path).suffix.lower() not in _checks.IMAGE_SUFFIXES:  # as predict --run: one rule
        raise ExportError(
            f"{path}: not an image file this reader reads; images must end in "
            f"{', '.join(_checks.IMAGE_SUFFIXES)}; save it as PNG to score it"
        )
    try:
        with Image.open(path) as im:
            refused = _refused_frames(im, path) or _checks.scrambled_planes(im)
            if refused is None:
                if decode == "draft" and im.format in ("JPEG", "MPO"):  # MPO: several pictures
                    im.draft(im.mode, (draft or 2 * size, draft or 2 * size))
                refused = _out_of_range(im, path) or _checks.unfinished(path, im.format)
                a = None if refused else _to_array(_upright(im))  # a zero tail: not decoded
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:  # PNG chunks
        cut = any(w in str(err).lower() for w in ("truncated", "broken data"))  # opened, cut short
        fix = "copy it again" if cut else "give a PNG, JPEG, BMP, TIFF, WebP or GIF file"
        if isinstance(err, PermissionError):  # its mode, not its bytes
            fix = "this process may not read it: check its permissions (ls -l)"
        elif isinstance(err, Image.DecompressionBombError):
            fix = "shrink it, for example to 4000 pixels on its longer side"
        elif not cut and Path(path).suffix.lower() in _checks.IMAGE_SUFFIXES:
            fix = "it is damaged: copy it again, or save it again from the camera's software"
        raise ExportError(f"{path}: cannot read this image ({err}); {fix}") from None
    if (refused := refused or _checks.flat_image(a)) is not None:
        raise ExportError(f"{path}: {refused}")
    return a


def to_input(a: np.ndarray, size: int, channels: int) -> np.ndarray:
    """A decoded image [H, W, 1 or 3] (`read_file`) as the input: float32 [channels, size,
    size] in [0, 1]."""
    if channels == 1 and a.shape[-1] == 3:
        a = (a @ _LUMA)[..., None]
    elif channels == 3 and a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    a = resize_channels(a, size)
    return np.clip(a, 0.0, 1.0).transpose(2, 0, 1).astype(np.float32, copy=False)


def resize_channels(a: np.ndarray, size: int) -> np.ndarray:
    """Image `a` [H, W, C] resized to [size, size, C] as the file's contract says: each channel
    by Pillow's bilinear filter on float32 data (widened when shrinking). The package's loader
    (`anomaly.data.folder.image_tensor`) resizes with this function too, so an exported run
    sees exactly the input `predict --run` does."""
    from PIL import Image

    if a.shape[:2] == (size, size):
        return a
    channels = [np.ascontiguousarray(a[..., c], dtype=np.float32) for c in range(a.shape[-1])]
    return np.stack(
        [
            np.asarray(Image.fromarray(c).resize((size, size), Image.BILINEAR))  # float32: "F"
            for c in channels
        ],
        axis=-1,
    )


def _upright(im):
    """`im` turned as viewers show it, by its EXIF orientation (`PIL.ImageOps.exif_transpose`,
    as the package's `image_kind.upright`); EXIF that Pillow cannot parse: as stored. A TIFF
    turned a quarter by its tag is decoded from its bytes in memory, as the package does (Pillow
    13 scrambles an uncompressed one read from its file); a new image then."""
    import io

    from PIL import Image, ImageOps

    try:
        quarter = im.format == "TIFF" and im.getexif().get(0x0112) in (5, 6, 7, 8)
    except Exception:  # noqa: BLE001  (unreadable EXIF: as stored)
        quarter = False
    if quarter and getattr(im, "filename", ""):
        shown = im.size
        with open(im.filename, "rb") as f:
            im = Image.open(io.BytesIO(f.read()))
        im.load()
        if im.size != shown:
            raise ValueError("a TIFF turned by its orientation tag this Pillow decodes wrongly")
        return im
    im.load()  # pixels decoded first: a damaged or half-written file fails here, not silently
    try:  # inside exif_transpose (a PNG's EXIF is read after its pixels), with half of them
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
    if mode not in ("L", "LA", "RGB", "RGBA"):  # palette (with transparency: RGBA), 1-bit, ...
        alpha = mode == "PA" or (mode == "P" and "transparency" in im.info)
        im = im.convert("L" if mode == "1" else "RGBA" if alpha else "RGB")
    a = np.asarray(im, dtype=np.float32) / 255.0
    if a.ndim == 2:
        a = a[..., None]
    if im.mode in ("LA", "RGBA"):
        a = a[..., :-1] * a[..., -1:] + (1.0 - a[..., -1:])
    return a


def _checked_ops(path: Path) -> set[tuple[str, str]] | None:
    """The (domain, op type) of the file's nodes, checked before onnxruntime optimises or runs
    any (`onnx_checks`): ExportError naming those `anomaly.export` never writes; None where
    the bytes are no model (onnxruntime says why)."""
    try:
        ops, other = _checks.graph_ops(path.read_bytes())
    except OSError as err:
        fix = "check its permissions" if isinstance(err, PermissionError) else "copy it again"
        raise ExportError(f"{path} cannot be read ({err.strerror or err}); {fix}") from None
    except ValueError:
        return None
    if named := _checks.foreign_parts(ops, other):
        raise bad_file(path, f"its graph holds {named}, which anomaly.export never writes")
    return ops


class OnnxDetector:
    """An exported detector: `predict(images)` -> (scores [N], maps [N, size, size]).

    `images` are file paths or float arrays [channels, size, size] already preprocessed.
    """

    def __init__(self, onnx_path: str | Path, threads: int = 0) -> None:
        ort = require("onnxruntime")
        path = Path(onnx_path)
        if path.is_dir():  # a run folder: its export is model.onnx inside
            inside = path / "model.onnx"
            hint = f"give {inside}" if inside.is_file() else f"export it first: `{EXPORT} {path}`"
            raise ExportError(f"{path} is a folder, not an ONNX file; {hint}")
        if path.exists() and not path.is_file():  # a pipe, a device: never read
            raise ExportError(f"{path} is not a regular file; give the ONNX file export wrote")
        if not path.is_file():
            raise ExportError(
                f"{path}: no such ONNX file; make one with "
                f"`python -m anomaly export --run RUN --out {shlex.quote(str(path))}`"
            )
        ops = _checked_ops(path)
        options = ort.SessionOptions()
        # idle worker threads sleep instead of spinning (as OMP_WAIT_POLICY=PASSIVE for torch):
        # spinning burns CPU time that a busy or small machine needs
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # its own warnings print a file's node names raw
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
        found = str(self.meta.get("format", ""))
        if found.startswith("anomaly-onnx/") and found != FORMAT:  # a newer exporter's file
            raise ExportError(
                f"{path} is in format {found[:40]!r}, this reader reads {FORMAT!r}: it was "
                "exported by another version of anomaly (exported_by: "
                f"{_checks.escaped(self.meta.get('exported_by', 'not recorded'))[:200]}); "
                "copy onnx_predict.py and onnx_checks.py from that version, or export with this one"
            )
        if found != FORMAT:
            raise ExportError(
                f"{path} was not written by anomaly.export (no format "
                f"{FORMAT!r} in its metadata); export the run with "
                f"`python -m anomaly export --run RUN`"
            )
        if ops is None:  # onnxruntime read what the check could not
            raise bad_file(path, "its graph's nodes cannot be listed")
        self.path = path
        _checks.warn_saturating(path, self.meta, ops)
        self.size, self.channels, self.threshold, self.map_range = _checks.contract(
            path, self.meta, self.session
        )
        # the saved threshold's guarantee, and what the training images were (None: not stored)
        self.threshold_params, self.trained_images = _checks.records(path, self.meta)
        self.decode = self.meta.get("decode", "full")  # exported before it: every pixel
        draft = str(self.meta.get("draft_size", ""))  # the run's (auto: not its choice's) x 2
        ok = draft.isascii() and draft.isdigit() and self.size <= int(draft) <= 8192
        self.draft = int(draft) if ok else None  # 8192: twice the largest --size
        if self.decode not in ("full", "draft") or (draft and not ok):
            raise ExportError(
                f"{path}: its metadata decode {self.decode!r:.40} and draft_size {draft!r:.20} "
                "are not what export writes, so it is not a file export wrote; export the run again"
            )

    def warn_unlike(self, images) -> list[str]:
        """Warn on stderr, as `predict --run` does, of each image in `images` unlike the training
        images (greyscale, 16-bit, another aspect ratio, far smaller; a file without that record:
        no check). Copied without the package (`anomaly.data.image_unlike`): a note, once."""
        try:
            from anomaly.data.image_unlike import warn_unlike
        except ImportError:
            if self.trained_images and not _SAID_NO_CHECK:
                _SAID_NO_CHECK.append(True)
                print(
                    "note: without the anomaly package, images unlike the training images "
                    "(greyscale for colour, another bit depth or aspect ratio, far smaller) are "
                    "scored without a warning; their scores mean little. Check new kinds of "
                    "image once with `python -m anomaly predict --onnx` where it is installed",
                    file=sys.stderr,
                )
            return []
        paths = [p for p in images if isinstance(p, (str, Path))]
        return warn_unlike(paths, self.trained_images, self.channels, self.size)

    def read(self, path: str | Path) -> np.ndarray:
        """The image file `path` as this file's input expects it (`preprocess` with its size,
        channels and decoding); ExportError naming a file it cannot read."""
        return preprocess(path, self.size, self.channels, self.decode, self.draft)

    def predict(self, images) -> tuple[np.ndarray, np.ndarray]:
        scores, maps = [], []
        for image in _checks.image_paths(images):  # a folder: its image files
            if isinstance(image, (str, Path)):
                x = self.read(image)
            else:  # an array: floats in [0, 1] at the file's shape, or what to give instead
                x = np.asarray(image)
                if fault := _checks.array_fault(x, (self.channels, self.size, self.size)):
                    raise ExportError(f"{self.path} {fault}")
                x = x.astype(np.float32, copy=False)
            try:
                score, amap = self.session.run(None, {"images": x[None]})
            except Exception as err:  # noqa: BLE001  (onnxruntime's: the file's fault, not x's)
                raise bad_file(self.path, f"its graph failed ({short_error(err)})") from None
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
    """Scores [N] and maps [N, size, size] of image files, folders of them (the files in each,
    sorted) or preprocessed arrays (`preprocess`: float32 in [0, 1]); files unlike
    the run's training images are named on stderr (`OnnxDetector.warn_unlike`). The first file
    it cannot read stops it (ExportError naming the file); for a batch job, `predict_each`."""
    detector = OnnxDetector(onnx_path)
    images = _checks.image_paths(images)  # a folder: its image files; a generator read once
    detector.warn_unlike(images)
    return detector.predict(images)


def predict_each(onnx_path, images):
    """For batch jobs: yield (image, score, map, error) for each image file (a folder: the files
    in it, sorted; or a preprocessed array) of `images` as it is scored (a float and float32 [size, size], or None, None and why
    it could not be read: a damaged file does not stop the batch). Compare each score with the
    file's threshold (`OnnxDetector(path).threshold`); an image with an error has no verdict.
    `onnx_path` may be an `OnnxDetector` already loaded."""
    detector = onnx_path if isinstance(onnx_path, OnnxDetector) else OnnxDetector(onnx_path)
    images = _checks.image_paths(images)  # a folder: its image files
    detector.warn_unlike(images)
    for image in images:
        try:
            x = detector.read(image) if isinstance(image, (str, Path)) else image
        except ExportError as err:  # unreadable: named; a wrong array or graph still raises
            yield image, None, None, str(err)
            continue
        scores, maps = detector.predict([x])
        yield image, float(scores[0]), maps[0], None


def main(argv=None) -> int:
    """`python onnx_predict.py MODEL.onnx IMAGE_OR_FOLDER ...`, where the package is not
    installed: one row per image (its --help's epilog says what they hold, and exit status)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="onnx_predict.py",
        description="Score images with a file `python -m anomaly export` wrote (onnxruntime, numpy "
        "and Pillow alone; onnx_checks.py beside this file). A folder: its image files, not subfolders.",
        epilog="Output: one tab-separated row per image on stdout, no header: path, score, and "
        "PASS or REJECT at the file's threshold (- without one); '-' and ERROR for an image it "
        "cannot read or that is an empty frame (one flat colour). The threshold, warnings and "
        "errors go to stderr. Exit status: 0, 2 when an image had no verdict or the file could "
        "not be read, 141 when the rows' reader stopped early.",
    )
    parser.add_argument("onnx", help="the exported file (RUN/model.onnx)")
    parser.add_argument("images", nargs="+", help="image files or folders of them")
    args = parser.parse_args(argv)
    warnings.showwarning = lambda message, *_, **__: print(  # one line each, as predict's
        f"warning: {_checks.escaped(message)}", file=sys.stderr
    )
    shown = _checks.escaped  # names from files and folders: no escape sequence printed
    try:
        detector = OnnxDetector(args.onnx)
        require("PIL")  # once, before any row
        rows = predict_each(detector, args.images)
        t, rule = detector.threshold, detector.meta.get("threshold_rule", "exported")
        guarantee = (detector.threshold_params or {}).get("guarantee", "")
        said = "note: it holds no threshold: scores only"
        if t is not None:  # as predict --run says it
            old = detector.threshold_params is None  # exported before they were recorded
            none = "no guarantee on the false-reject rate" + " recorded: export again" * old
            guarantee = guarantee or none
            said = f"threshold {t!r} ({rule}: {guarantee})"
        print(said, file=sys.stderr)
        failed = 0
        for image, score, _, error in rows:
            if error is None and not math.isfinite(score):  # a damaged graph: no verdict
                error = f"{image}: its score is {score}; {EXPORT} RUN again and use the new file"
            if error is not None:
                failed += 1
                print(f"error: {shown(error)}", file=sys.stderr)
                row = ("-", "ERROR")  # the verdict's column, as predict's rows
            else:
                verdict = "-" if t is None else "REJECT" if score >= t else "PASS"
                row = (_checks.score_text(score, t), verdict)  # digits to read as the verdict
            print("\t".join((shown(image), *row)), flush=True)
    except ExportError as err:
        print(f"error: {shown(err)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # its reader stopped (a pipe into head): quietly, as Unix tools,
        null = os.open(os.devnull, os.O_WRONLY)  # 128 + SIGPIPE, as predict: images unscored
        with contextlib.suppress(OSError, ValueError, AttributeError):  # (no file descriptor)
            os.dup2(null, sys.stdout.fileno())
        os.close(null)
        return 141
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
