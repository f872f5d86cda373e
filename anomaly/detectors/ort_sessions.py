"""A module's ONNX export (`trace_to_onnx`) and an onnxruntime session of it (`onnxruntime_session`):
how `patchknn` runs its extractor and search in onnxruntime, and how `anomaly.export` writes a
detector's file."""

from __future__ import annotations

import warnings
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python values: sizes are fixed
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
        except (TypeError, RuntimeError, NotImplementedError, AttributeError):
            pass  # a torch without the TorchScript exporter
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


def onnxruntime_session(module: nn.Module | bytes, example: torch.Tensor, output: str):
    """An onnxruntime session of `module` (exported on `example`, batch dimension free; or an
    ONNX model already), run by torch's number of threads, idle threads sleeping."""
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
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
