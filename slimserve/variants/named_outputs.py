"""Any torch network's outputs as named tensors: naming, ONNX export, the export check, heads.

A classifier returns one tensor of logits; a generic network (variants.model_pipeline) may
return a tensor, a tuple or a dict of tensors. Everything downstream (the served model's
outputs, the distillation loss, fidelity) works on a dict name → tensor, so this module
fixes the names once, from the teacher's first call:

- a dict: its keys, in the order the network returns them;
- a tuple or list: the spec's `output_names`, one per element (`output_0`, … without them);
- a tensor: `output_names[0]`, or `output`.

`NamedOutputs` wraps a network so that it returns a tuple in that order, which the
TorchScript exporter writes as the graph's outputs, each with its own variable batch axis.
`head_layers` finds the weighted layers whose output width is an output's width: pruning and
factorising leave them whole, or the served outputs would change shape.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from slimserve.repository.sessions import make_session
from slimserve.variants.onnx_graph import run_all
from slimserve.variants.onnx_io import OPSET, ExportMismatchError
from slimserve.variants.prune_sequential import Weighted  # the layers that carry weights: Conv2d, Linear

DEFAULT_OUTPUT = "output"
# A generic output may be in any unit (a price, a distance): the export check is relative to
# the output's own magnitude, floored at 1 so that values near zero are judged absolutely.
EXPORT_RELATIVE_TOLERANCE = 1e-4


def output_names_of(result: object, names: Sequence[str] | None) -> list[str]:
    """The names of a network's outputs, from what it returned (module docstring)."""
    if isinstance(result, Mapping):
        keys = [str(key) for key in result]
        if names is not None and sorted(names) != sorted(keys):
            raise ValueError(f"output_names {list(names)} do not match the keys the network returns, {keys}")
        return list(names) if names is not None else keys
    if isinstance(result, tuple | list):
        if names is not None and len(names) != len(result):
            raise ValueError(f"output_names has {len(names)} names; the network returns {len(result)} tensors")
        return list(names) if names is not None else [f"{DEFAULT_OUTPUT}_{i}" for i in range(len(result))]
    if isinstance(result, torch.Tensor):
        if names is not None and len(names) != 1:
            raise ValueError(f"output_names has {len(names)} names; the network returns one tensor")
        return list(names) if names is not None else [DEFAULT_OUTPUT]
    raise ValueError(f"the network returns {type(result).__name__}; return a tensor, a tuple or a dict of tensors")


def as_named(result: object, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """A network's result as {name: tensor}, by `names` (from `output_names_of`)."""
    if isinstance(result, Mapping):
        return {name: result[name] for name in names}
    if isinstance(result, torch.Tensor):
        return {names[0]: result}
    return dict(zip(names, result, strict=True))  # type: ignore[call-overload]


class NamedOutputs(nn.Module):
    """`network` returning a tuple in the order of `names`: what export and profiling see."""

    def __init__(self, network: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.network = network
        self.names = list(names)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(as_named(self.network(*inputs), self.names).values())


@torch.no_grad()
def run_named(model: nn.Module, inputs: dict[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
    """Every output of `model` (in eval mode) for `inputs`, as numpy arrays by name."""
    result = model.eval()(*(torch.from_numpy(v) for v in inputs.values()))
    return {name: tensor.numpy() for name, tensor in as_named(result, names).items()}


def export_named(model: nn.Module, example: dict[str, np.ndarray], names: Sequence[str]) -> bytes:
    """TorchScript-based export with every input's and output's first axis variable (the batch).

    As variants.onnx_io.export_onnx, for several named outputs."""
    wrapped = NamedOutputs(model, names).eval()
    args = tuple(torch.from_numpy(v) for v in example.values())
    axes = {name: {0: "batch"} for name in [*example, *names]}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation (see onnx_io)
        torch.onnx.export(
            wrapped,
            args,
            buffer,  # type: ignore[arg-type]  # a file-like object is accepted and documented
            input_names=list(example),
            output_names=list(names),
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    return buffer.getvalue()


def check_named(model: nn.Module, graph: bytes, inputs: dict[str, np.ndarray], names: Sequence[str]) -> float:
    """Max |torch − ONNX Runtime| over every output for `inputs`; raises ExportMismatchError
    where an output differs by more than EXPORT_RELATIVE_TOLERANCE × max(1, its largest |value|)
    or is not the same shape and type."""
    expected = run_named(model, inputs, names)
    actual = run_all(make_session(graph, threads=1), inputs, None)
    worst = 0.0
    for name in names:
        want, got = expected[name], actual[name]
        if want.shape != got.shape or want.dtype != got.dtype:
            raise ExportMismatchError(f"output {name!r}: torch gives {want.dtype}{list(want.shape)}, "
                                      f"ONNX Runtime {got.dtype}{list(got.shape)}")  # fmt: skip
        if want.size == 0:
            continue
        diff = float(np.abs(want.astype(np.float64) - got.astype(np.float64)).max())
        scale = max(1.0, float(np.abs(want).max()))
        if not diff <= EXPORT_RELATIVE_TOLERANCE * scale:
            raise ExportMismatchError(f"output {name!r}: ONNX differs from torch by {diff:.3g} (tolerance "
                                      f"{EXPORT_RELATIVE_TOLERANCE:g} × {scale:.3g})")  # fmt: skip
        worst = max(worst, diff)
    return worst


def head_layers(model: nn.Module, example: tuple[torch.Tensor, ...]) -> set[str]:
    """Names of the weighted layers that produce the model's float outputs.

    Each output's autograd graph is walked back from the output until a weighted layer's
    result is met, through whatever follows that layer (an activation, a normalisation, a
    reshape), so `tanh(head(x))` finds `head`. An output with no autograd graph (an integer
    argmax) falls back to the last weighted layer that ran, the head in common designs."""
    produced: dict[object, str] = {}
    order: list[str] = []

    def record(name: str) -> Callable[[nn.Module, tuple[object, ...], object], None]:
        def hook(_module: nn.Module, _inputs: tuple[object, ...], out: object) -> None:
            order.append(name)
            if isinstance(out, torch.Tensor) and out.grad_fn is not None:
                produced[out.grad_fn] = name

        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if isinstance(m, Weighted)]
    try:
        with torch.enable_grad():
            result = model.eval()(*example)
    finally:
        for hook in hooks:
            hook.remove()
    heads: set[str] = set()
    for tensor in as_named(result, output_names_of(result, None)).values():
        if tensor.grad_fn is None:
            heads.update(order[-1:])
            continue
        seen: set[object] = set()
        frontier: list[object] = [tensor.grad_fn]
        while frontier:
            node = frontier.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            if node in produced:
                heads.add(produced[node])
                continue
            frontier += [parent for parent, _ in node.next_functions]  # type: ignore[attr-defined]
    return heads
