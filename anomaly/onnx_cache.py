"""ONNX exports of `patchknn`'s feature extractor and search, kept between commands (the 8-bit
search's graph, built with the onnx package, too: `kept`, `knn.Int8Search.kept_model`).

Loading a run hands its extractor and its exact search to onnxruntime (`PatchKNN`'s
`runtime auto`), which means exporting both with torch's tracer: about 1.5 s of CPU each time
(the `onnx` package it imports, then the two exports), a third of a one-image `predict`. The
exported files are kept in the user's cache folder and found again by a key that covers all the
graph depends on: torch's and onnxruntime's versions, the source files of the classes whose code
the graph runs (ours, torch's, a backbone package's), the module's structure, every parameter
and buffer, the plain and tensor attributes of each submodule (a whitening is kept as one), the
example's shape and the output's name. Change any of them and the key changes, so a kept file
never stands in for another graph; a file that does not read back whole is exported again.

`ANOMALY_CACHE` names the folder (default `$XDG_CACHE_HOME/anomaly/onnx`, else
`~/.cache/anomaly/onnx`; `off` keeps nothing). The newest `KEEP` files are kept. Only this
process's own exports are ever written there; a run folder is never read for one.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from anomaly.safe_files import _atomic

KEEP = 64
_PLAIN = (bool, int, float, str, tuple, list, type(None))


def cache_dir() -> Path | None:
    """Where exports are kept, or None when `ANOMALY_CACHE` is off."""
    chosen = os.environ.get("ANOMALY_CACHE")
    if chosen is not None:
        return None if chosen.strip().lower() in ("", "off", "0", "none") else Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = Path.home() / ".cache"
        except RuntimeError:  # no HOME, and a user id without a passwd entry (a container's)
            return None
    return Path(base) / "anomaly" / "onnx"


def key(module, example, output: str) -> str:
    """The SHA-256 of everything the exported graph of `module` on `example` depends on."""
    import onnxruntime
    import torch

    h = hashlib.sha256()
    for part in (torch.__version__, onnxruntime.__version__, repr(module), output):
        h.update(part.encode() + b"\0")
    h.update(f"{tuple(example.shape)} {example.dtype}".encode())
    for path in sorted({inspect.getsourcefile(type(sub)) or "" for sub in module.modules()}):
        h.update(Path(path).read_bytes() if path else b"?")  # the code of every submodule's class
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        h.update(name.encode())
        _feed(h, t)
    for name, sub in module.named_modules():  # attributes: sizes, flags, and tensors kept
        for attr, value in sorted(vars(sub).items()):  # outside the buffers (a whitening)
            if isinstance(value, (*_PLAIN, torch.Tensor)):
                h.update(f"{name}.{attr}".encode())
                _feed(h, value)
    return h.hexdigest()


def _feed(h, value) -> None:
    """Hash a value: a tensor by all its bytes, a tuple or list item by item, else its repr."""
    import torch

    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        h.update(f"{t.dtype} {tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())  # numpy's copy in C order, whatever the strides
    elif isinstance(value, (tuple, list)):
        h.update(f"{type(value).__name__}{len(value)}".encode())
        for item in value:
            _feed(h, item)
    else:
        h.update(repr(value).encode())


def exported(module, example, output: str, export: Callable[[Path], None]) -> bytes:
    """The ONNX bytes of `module` (`export(path)` writes them), from the cache when it holds them
    (`kept`)."""

    def make() -> bytes:
        for where in (None, cache_dir()):  # the system's temporary folder, else the cache's
            with contextlib.suppress(OSError):
                if where is not None:
                    where.mkdir(parents=True, exist_ok=True)
                folder = tempfile.TemporaryDirectory(dir=where)
                break
        else:  # a read-only root file system: no /tmp, no cache
            raise OSError(
                "no folder to write onnxruntime's ONNX graph in (no usable temporary folder, "
                f"and the cache {cache_dir() or 'is off'}); set TMPDIR or ANOMALY_CACHE to a "
                "folder you may write (a run trained with --runtime torch needs neither)"
            )
        with folder as tmp:
            path = Path(tmp) / "module.onnx"
            export(path)
            return path.read_bytes()

    return kept(key(module, example, output), make)


def kept(digest: str, make: Callable[[], bytes]) -> bytes:
    """The bytes `make()` returns, kept under `digest` (a SHA-256 of all they depend on). A kept
    file starts with the SHA-256 of the bytes after it; one that does not match (damaged) is
    made again."""
    folder = cache_dir()
    kept_file = folder / f"{digest}.onnx" if folder else None
    with contextlib.suppress(OSError):
        data = kept_file.read_bytes() if kept_file is not None else b""
        if len(data) > 32 and hashlib.sha256(data[32:]).digest() == data[:32]:
            return data[32:]
    model = make()
    if kept_file is not None:
        with contextlib.suppress(OSError):  # a read-only or full disk: work on without it
            kept_file.parent.mkdir(parents=True, exist_ok=True)
            _atomic(kept_file, lambda f: f.write(hashlib.sha256(model).digest() + model))
            _prune(kept_file.parent)
    return model


def _prune(folder: Path) -> None:
    """Keep the newest `KEEP` exports (only files this module names: `<sha256>.onnx`)."""
    ours = [p for p in folder.glob("*.onnx") if len(p.stem) == 64]
    for old in sorted(ours, key=lambda p: p.stat().st_mtime, reverse=True)[KEEP:]:
        old.unlink(missing_ok=True)
