"""ONNX export from torch and the export check (sessions: `repository.sessions`, which needs no torch)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torch import nn

from slimserve.repository.sessions import make_session

OPSET = 17


class ExportMismatchError(RuntimeError):
    """The exported graph does not compute what the torch model computes."""


def export_onnx(
    model: nn.Module,
    example: dict[str, np.ndarray],
    output_name: str,
    variable_axes: dict[str, dict[int, str]],
) -> bytes:
    """TorchScript-based export with the given variable axes (the batch axis at least)."""
    model.eval()
    args = tuple(torch.from_numpy(v) for v in example.values())
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo; it is kept here because
        # it exports these models in a second with no extra dependencies and stable graphs.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            args,
            buffer,  # type: ignore[arg-type]  # a file-like object is accepted and documented
            input_names=list(example),
            output_names=[output_name],
            dynamic_axes={**variable_axes, output_name: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    return buffer.getvalue()


@torch.no_grad()
def check_export(model: nn.Module, onnx_bytes: bytes, inputs: dict[str, np.ndarray], tolerance: float) -> float:
    """Max |torch − ONNX Runtime| over `inputs`; raises if it exceeds `tolerance`."""
    expected = model.eval()(*(torch.from_numpy(v) for v in inputs.values())).numpy()
    actual = make_session(onnx_bytes, threads=1).run(None, inputs)[0]
    diff = float(np.abs(expected - actual).max())
    if not diff <= tolerance:
        raise ExportMismatchError(f"ONNX output differs from torch by {diff:.3g} (tolerance {tolerance:g})")
    return diff
