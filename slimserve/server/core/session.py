"""One ONNX Runtime session per variant; variants are data, so one class serves them all."""

from __future__ import annotations

import numpy as np

from slimserve.repository.format import ModelConfig, VariantEntry
from slimserve.repository.profile import synthetic_batch
from slimserve.repository.sessions import make_session


class VariantSession:
    """A loaded variant: runs a dict of input arrays, returns a dict of output arrays."""

    def __init__(self, config: ModelConfig, variant: VariantEntry, threads: int) -> None:
        self.config = config
        self.name = variant.manifest.name
        self.device = variant.manifest.device
        self._session = make_session(str(variant.onnx_path), threads)
        self._output_names = [o.name for o in self._session.get_outputs()]
        expected = [spec.name for spec in config.outputs]
        if self._output_names != expected:
            raise ValueError(f"{variant.onnx_path}: outputs {self._output_names} differ from model.yaml {expected}")

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Blocking: from a worker thread, or from the event loop for calls shorter than a thread
        hop (`core.batcher`)."""
        return dict(zip(self._output_names, self._session.run(self._output_names, inputs), strict=True))

    def warm_up(self, calls: int, seq_len: int = 16) -> None:
        for batch in (1, self.config.max_batch_size)[: max(calls, 0)]:
            self.run(synthetic_batch(self.config.inputs, batch, seq_len))
