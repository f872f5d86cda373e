"""A module's ONNX export (`trace_to_onnx`) and an onnxruntime session of it (`onnxruntime_session`):
how `patchknn` runs its extractor and search in onnxruntime, and how `anomaly.export` writes a
detector's file."""

from __future__ import annotations

import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

from anomaly.onnx_cache import exported


def trace_to_onnx(
    module: nn.Module, example, path: Path, outputs: list[str] | None = None, opset: int = 17
) -> None:
    """torch.onnx.export of `module` on `example`, input "images", quietly: the TorchScript
    tracer (seconds), else the dynamo exporter. With `outputs` (names), the batch dimension of
    the input and of every output stays free; without, the file is the detector's: outputs
    "scores" and "maps" and exactly the example's shape."""
    names = outputs or ["scores", "maps"]
    dynamic = {n: {0: "batch"} for n in ["images", *names]} if outputs else None
    with warnings.catch_warnings():  # tracer warnings about Python values: sizes are fixed;
        # torch's and onnx's only (and those they raise at this module's call): the filters are
        # the process's, and a thread decoding the next images meanwhile must still say what
        # Pillow says of them
        here = re.escape(__name__)
        warnings.filterwarnings("ignore", module=rf"(torch|onnx|onnxscript|{here})(\.|$)")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # in traced code
        try:
            torch.onnx.export(
                module,
                (example,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=["images"],
                output_names=names,
                dynamic_axes=dynamic,
            )
            return
        except (TypeError, RuntimeError, NotImplementedError, AttributeError) as err:
            traced = err  # a torch without the TorchScript exporter, or a module it fails on
        try:
            torch.onnx.export(
                module,
                (example,),
                str(path),
                dynamo=True,
                opset_version=max(opset, 18),
                input_names=["images"],
                output_names=names,
                dynamic_shapes=({0: torch.export.Dim("batch")},) if outputs else None,
                verbose=False,
            )
        except ImportError:  # no onnxscript for the dynamo exporter: the tracer's error says why
            raise traced from None


def onnxruntime_session(module: nn.Module | bytes, example: torch.Tensor, output: str):
    """An onnxruntime session of `module` (exported on `example`, batch dimension free; or an
    ONNX model already), run by torch's number of threads, idle threads sleeping: a
    `ParallelSession`, which runs one input as such a session does (`run`) and several at once
    on one thread each (`run_all`)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise RuntimeError(
            "patchknn --runtime onnxruntime needs the package onnxruntime: "
            "pip install onnxruntime (or 'anomaly[export]'), or use --runtime torch"
        ) from None
    model = module  # an extractor or a search is exported once, then kept between commands
    if not isinstance(module, bytes):
        model = exported(
            module, example, output, lambda p: trace_to_onnx(module, example, p, [output])
        )

    def session(threads: int):
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    threads = torch.get_num_threads()
    return ParallelSession(session(threads), session(1) if threads > 1 else None, threads)


class ParallelSession:
    """One onnxruntime model, two ways to run it on a CPU of `threads` cores.

    `run(None, feeds)` is onnxruntime's: one input, its work split over the threads. `run_all`
    takes several inputs and runs them at once, each on a session of one thread (onnxruntime
    releases the GIL): the same numbers (scores and maps of 64 cookie images were bit-identical),
    for less CPU time. Splitting one convolution over two threads costs their synchronisation on
    every layer: the extractor took about 9 against 11 ms of CPU per cookie image in a race
    (docs/measurements.md).
    """

    def __init__(self, wide, narrow, threads: int) -> None:
        self.wide, self.narrow, self.threads = wide, narrow, threads

    def run(self, outputs, feeds: dict):
        return self.wide.run(outputs, feeds)

    def run_all(self, arrays: list) -> list:
        """The first output for each input array (fed as "images"), in order."""
        if self.narrow is None or len(arrays) < 2:
            return [self.wide.run(None, {"images": a})[0] for a in arrays]
        return list(
            _pool(self.threads).map(lambda a: self.narrow.run(None, {"images": a})[0], arrays)
        )


_POOLS: dict[int, ThreadPoolExecutor] = {}
# a forked child (a DataLoader worker) has none of the parent's threads: it makes its own pool
if hasattr(os, "register_at_fork"):  # Windows has no fork (nor the function: import failed)
    os.register_at_fork(after_in_child=_POOLS.clear)


def _pool(threads: int) -> ThreadPoolExecutor:
    """A thread pool of `threads` workers, made once per size (its threads wait, idle, between
    uses and end with the process)."""
    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="anomaly-ort")
    return _POOLS[threads]
