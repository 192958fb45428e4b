"""Fake int8 quantization of a torch network, as ONNX Runtime's quantizer will quantize it.

Quantization-aware training (variants.qat) fine-tunes a network while its forward pass sees
the rounding that int8 inference will apply, so the weights learn to live with it; the
straight-through estimator (`torch.fake_quantize_*`: identity gradient inside the range,
zero outside) lets the gradient pass the rounding. What is simulated is what ONNX Runtime's
quantizer (variants.quantize) does to the exported graph, formula for formula
(onnxruntime.quantization.quant_utils.compute_scale_zp), so that the graph it makes from the
fine-tuned weights computes what the fine-tuning saw:

- weights of Conv2d and Linear: symmetric int8, scale = max|w| / 127 (per output channel or
  per tensor), or max|w| / 64 with `reduce_range` (7-bit, for chips without VNNI);
- embedding tables (dynamic quantization quantizes Gather's table too): the same, per tensor;
- the input of each Conv2d and Linear, and for static quantization their output too (over a
  following ReLU's range: `quantized_outputs`): asymmetric uint8 over [min(lo, 0), max(hi, 0)]. Static
  quantization fixes (lo, hi) from calibration rows (MinMax): here the range starts from
  those rows and then follows the training batches as an exponential moving average (torch's
  MovingAverageMinMaxObserver). Dynamic quantization computes (lo, hi) from each tensor
  (DynamicQuantizeLinear), and so does the simulation.

BatchNorm after a convolution is folded into it before anything is quantized
(`fold_batch_norms`), because the exporter folds it and ONNX Runtime quantizes the folded
weights; a BatchNorm that is not right after its Conv2d in an nn.Sequential stays, and the
simulation then rounds the unfolded weights (close, not exact).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import fusion, parametrize
from torch.utils.hooks import RemovableHandle

WEIGHT_LEVELS = 127  # symmetric int8: -127..127 (ONNX Runtime's symmetric range)
REDUCED_WEIGHT_LEVELS = 64  # reduce_range: -64..64
ACTIVATION_MAX = 255  # uint8
# Weight of the newest batch in the moving range of a static activation (torch's default).
RANGE_MOMENTUM = 0.01
TINY_SCALE = 1e-8  # a tensor of zeros quantizes with any scale; this one avoids dividing by 0


@dataclass(frozen=True)
class QuantScheme:
    """What int8 the graph will get: per-channel or per-tensor weights, 8- or 7-bit weights,
    and activation ranges calibrated once (static) or computed per call (dynamic)."""

    per_channel: bool = True
    reduce_range: bool = False
    static: bool = True

    @property
    def weight_levels(self) -> int:
        return REDUCED_WEIGHT_LEVELS if self.reduce_range else WEIGHT_LEVELS


class FakeQuantWeight(nn.Module):
    """A parametrization: the weight as symmetric int8 will represent it (module docstring)."""

    def __init__(self, levels: int, per_channel: bool) -> None:
        super().__init__()
        self.levels, self.per_channel = levels, per_channel

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.per_channel:  # axis 0: a Conv2d's output channels, a Linear's output features
            absmax = weight.detach().abs().reshape(len(weight), -1).amax(dim=1)
            scales = (absmax / self.levels).clamp(min=TINY_SCALE).float()
            zeros = torch.zeros(len(weight), dtype=torch.int32)
            return torch.fake_quantize_per_channel_affine(weight, scales, zeros, 0, -self.levels, self.levels)
        scale = max(float(weight.detach().abs().max()) / self.levels, TINY_SCALE)
        return torch.fake_quantize_per_tensor_affine(weight, scale, 0, -self.levels, self.levels)


class ActivationQuantizer:
    """Rounds a tensor to uint8 with its own range (module docstring); used as a forward
    pre-hook (a layer's input) or a forward hook (a layer's output).

    `observing`: record the range without rounding (the calibration pass, in float, as ONNX
    Runtime calibrates the float graph)."""

    def __init__(self, static: bool) -> None:
        self.static = static
        self.observing = False
        self.low: float | None = None
        self.high: float | None = None

    def _update(self, x: torch.Tensor, momentum: float) -> None:
        low, high = float(x.detach().min()), float(x.detach().max())
        if self.observing and self.low is not None and self.high is not None:
            # Calibration: the union of the ranges, as MinMax calibration over several batches.
            self.low, self.high = min(self.low, low), max(self.high, high)
        elif self.low is None or self.high is None or momentum >= 1.0:
            self.low, self.high = low, high
        else:
            self.low += momentum * (low - self.low)
            self.high += momentum * (high - self.high)

    def apply(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        if self.observing:
            self._update(x, 1.0)
            return x
        if not self.static:
            self._update(x, 1.0)
        elif training or self.low is None:
            self._update(x, RANGE_MOMENTUM)
        assert self.low is not None and self.high is not None
        low, high = min(self.low, 0.0), max(self.high, 0.0)
        scale = max((high - low) / ACTIVATION_MAX, TINY_SCALE)
        zero = round(-low / scale)
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, ACTIVATION_MAX)

    def on_input(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (self.apply(args[0], module.training), *args[1:])

    def on_output(self, module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        return self.apply(output, module.training)


def quantized_outputs(model: nn.Module) -> list[nn.Module]:
    """The modules whose output a static int8 graph holds in uint8: every Conv2d and Linear
    (their int8 kernels write uint8), except that one followed in its nn.Sequential by a ReLU
    (past Identities left by folding) hands that to the ReLU: ONNX Runtime drops the ReLU and
    quantizes the layer's output over the ReLU's range (QDQRemovableActivation)."""
    owners: dict[int, nn.Module] = {}
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            owners.setdefault(id(module), module)
    for sequence in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        children = [child for child in sequence.children() if not isinstance(child, nn.Identity)]
        for layer, after in itertools.pairwise(children):
            if isinstance(layer, nn.Conv2d | nn.Linear) and isinstance(after, nn.ReLU):
                owners[id(layer)] = after
    return list({id(m): m for m in owners.values()}.values())


def fold_batch_norms(model: nn.Module) -> int:
    """Fold every BatchNorm2d that follows a Conv2d in an nn.Sequential into that Conv2d (the
    BatchNorm becomes an Identity), as the exporter folds it. Returns how many were folded."""
    folded = 0
    for sequence in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(sequence._modules)
        for first, second in itertools.pairwise(names):
            conv, norm = sequence._modules[first], sequence._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                sequence._modules[first] = fusion.fuse_conv_bn_eval(conv.eval(), norm.eval())
                sequence._modules[second] = nn.Identity()
                folded += 1
    return folded


class FakeQuantized:
    """Fake quantization attached to a network in place: weight parametrizations on every
    Conv2d, Linear (and, for dynamic schemes, Embedding), an input hook on every Conv2d and
    Linear and, for static schemes, an output hook where the graph holds uint8
    (`quantized_outputs`). `calibrate` sets static ranges from float passes; `bake` removes it all,
    leaving the rounded weights (what the int8 graph will hold) in the network."""

    def __init__(self, model: nn.Module, scheme: QuantScheme) -> None:
        self.model, self.scheme = model, scheme
        self.quantizers: dict[str, ActivationQuantizer] = {}
        self._hooks: list[RemovableHandle] = []
        self._weighted: list[nn.Module] = []
        for name, module in model.named_modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                self._parametrize(module, scheme.per_channel)
                quantizer = ActivationQuantizer(scheme.static)
                self.quantizers[name] = quantizer
                self._hooks.append(module.register_forward_pre_hook(quantizer.on_input))
            elif isinstance(module, nn.Embedding) and not scheme.static:
                self._parametrize(module, per_channel=False)  # Gather's table: per tensor
        # A dynamic graph's integer kernels write float; a static one's write uint8.
        for number, module in enumerate(quantized_outputs(model) if scheme.static else []):
            quantizer = ActivationQuantizer(static=True)
            self.quantizers[f"output {number}"] = quantizer
            self._hooks.append(module.register_forward_hook(quantizer.on_output))

    def _parametrize(self, module: nn.Module, per_channel: bool) -> None:
        parametrize.register_parametrization(module, "weight", FakeQuantWeight(self.scheme.weight_levels, per_channel))
        self._weighted.append(module)

    @torch.no_grad()
    def calibrate(self, batches: Iterable[tuple[torch.Tensor, ...]]) -> None:
        """Static ranges from float forward passes over `batches` (MinMax, as ONNX Runtime)."""
        if not self.scheme.static:
            return
        self.model.eval()
        for quantizer in self.quantizers.values():
            quantizer.observing, quantizer.low, quantizer.high = True, None, None
        with parametrize.cached():
            for batch in batches:
                self.model(*batch)
        for quantizer in self.quantizers.values():
            quantizer.observing = False

    def bake(self) -> nn.Module:
        """Remove the hooks and parametrizations, keeping the rounded weights; the network."""
        for hook in self._hooks:
            hook.remove()
        for module in self._weighted:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        self._hooks, self._weighted = [], []
        return self.model
