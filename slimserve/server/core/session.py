"""One ONNX Runtime session per variant; variants are data, so one class serves them all.

A session is opened from the very bytes that were checked against the variant's manifest
(`verified_graph`), never by path after the check: a graph replaced between the two could
otherwise be served under the old measurements. Opened from bytes, ONNX Runtime cannot
follow a graph's external-data references, so such a graph is refused rather than served
with weights no hash covered.

Batch-mates: a graph that quantizes its activations at run time (ONNX Runtime's dynamic
int8: DynamicQuantizeLinear and the fused ops that contain it) computes one scale over the
whole tensor it is given, so in a merged batch one caller's outlier tokens, or the padding
of the longest request, would move another caller's answer. Such a session `merges_requests`
False: its batcher runs each request alone (`core.batcher`). Every output's first axis must
be the batch: warm-up checks it, so a graph that answers otherwise is refused at load rather
than sliced by rows it does not have.
"""

from __future__ import annotations

import numpy as np

from slimserve.repository.format import MANIFEST_FILE, ModelConfig, RepositoryError, VariantEntry, sha256_of
from slimserve.repository.profile import synthetic_batch
from slimserve.repository.sessions import make_session, merges_requests


def verified_graph(variant: VariantEntry) -> bytes:
    """The variant's graph, read once; RepositoryError if it does not match its manifest."""
    graph = variant.onnx_path.read_bytes()
    if sha256_of(graph) != variant.manifest.onnx_sha256:
        raise RepositoryError(
            f"variant '{variant.manifest.name}': {variant.onnx_path.name} does not match the onnx_sha256 in its "
            f"{MANIFEST_FILE} (a graph replaced without rebuilding its measurements)"
        )
    return graph


class VariantSession:
    """A loaded variant: runs a dict of input arrays, returns a dict of output arrays."""

    def __init__(self, config: ModelConfig, variant: VariantEntry, threads: int) -> None:
        """RepositoryError if the graph does not match its manifest (`verified_graph`)."""
        self.config = config
        self.name = variant.manifest.name
        self.device = variant.manifest.device
        self.threads = threads  # ONNX Runtime's intra-op threads for one call
        graph = verified_graph(variant)
        self._session = make_session(graph, threads)
        self.merges_requests = merges_requests(graph)
        self._output_names = [o.name for o in self._session.get_outputs()]
        expected = [spec.name for spec in config.outputs]
        if self._output_names != expected:
            raise ValueError(f"{variant.onnx_path}: outputs {self._output_names} differ from model.yaml {expected}")

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Blocking: from a worker thread, or from the event loop for calls shorter than a thread
        hop (`core.batcher`)."""
        return dict(zip(self._output_names, self._session.run(self._output_names, inputs), strict=True))

    def warm_up(self, calls: int, seq_len: int = 16) -> None:
        """Run the session at batch 1 and at the largest batch (`calls` of them); ValueError if
        an output's first axis is not the batch (module docstring). At least one call checks."""
        for batch in (1, self.config.max_batch_size)[: max(calls, 1)]:
            feed = synthetic_batch(self.config.inputs, batch, seq_len)
            rows = len(next(iter(feed.values())))
            for name, output in self.run(feed).items():
                if output.ndim == 0 or output.shape[0] != rows:
                    raise ValueError(
                        f"output '{name}' has shape {list(output.shape)} for {rows} input row(s): the first axis of "
                        "every output must be the batch, so that each request gets its own rows"
                    )
