"""Fidelity to the reference variant: how closely a variant's outputs follow the reference's.

A generic model (`task: generic`, any ONNX graph) has no labels, so its quality is how
closely a variant reproduces the reference (fp32) on the same inputs, output by output:

- integer, bool and BYTES outputs: the exact-match rate, the share of elements equal to the
  reference's (an id, a flag or a string is right or wrong);
- float outputs: 1 − the relative L2 error per row, each row's error clipped to [0, 1], averaged
  over the rows: `mean_i(1 − min(1, ‖y_i − y*_i‖₂ / r))`, where r is the reference output's
  typical row norm (the root mean square of its rows' L2 norms). So 1.0 is identical, 0.99 is
  1 % off, one exploded row costs at most its own share, and a row near zero (a sum that
  cancels out) is judged against the output's scale, not its own tiny norm. An all-zero
  reference counts as exact only where the variant is zero too (r is at least
  ZERO_NORM_FLOOR); NaN or infinity where the reference has none counts as a wrong row.

The model's fidelity is the minimum over its outputs: a variant is as good as its worst
output. The build measures it on held-out calibration rows (variants.onnx_pipeline), the
shadow sampler on live requests (server.core.shadow). numpy only: the server imports it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

ZERO_NORM_FLOOR = 1e-12
METRIC = "fidelity"


def output_fidelity(served: np.ndarray, reference: np.ndarray) -> float:
    """One output's fidelity in [0, 1] (module docstring); shapes must match."""
    if served.shape != reference.shape:
        return 0.0
    if served.size == 0:
        return 1.0
    if reference.dtype.kind != "f":  # ints, bool, strings: right or wrong
        return float(np.mean(served == reference))
    rows = len(reference) if reference.ndim else 1
    a = served.reshape(rows, -1).astype(np.float64)
    b = reference.reshape(rows, -1).astype(np.float64)
    same_specials = np.all((np.isnan(a) == np.isnan(b)) & (np.isinf(a) == np.isinf(b)) & (~np.isinf(b) | (a == b)), 1)
    a, b = np.where(np.isfinite(b), a, 0.0), np.where(np.isfinite(b), b, 0.0)
    with np.errstate(invalid="ignore", over="ignore"):
        scale = max(float(np.sqrt(np.mean(np.square(np.linalg.norm(b, axis=1))))), ZERO_NORM_FLOOR)
        error = np.linalg.norm(a - b, axis=1) / scale
    error = np.where(same_specials & np.isfinite(error), np.minimum(error, 1.0), 1.0)
    return float(np.mean(1.0 - error))


def fidelity(served: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> tuple[float, dict[str, float]]:
    """The model's fidelity (the minimum over the reference's outputs) and each output's."""
    each = {name: output_fidelity(np.asarray(served[name]), np.asarray(ref)) for name, ref in reference.items()}
    return min(each.values(), default=1.0), each
