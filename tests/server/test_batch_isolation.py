"""An answer does not depend on its batch-mates (issue 23, M3), on the tiny minilm's real
sessions and the real batcher, on a fake clock (tests/fake_clock.py).

minilm's int8 is dynamically quantized: ONNX Runtime computes one activation scale over the
whole tensor a session call gets, so merged with other requests (padded to the longest) one
request's embedding moved with its batch-mates' tokens. Such a session now runs each request
alone; fp32, whose merged batch changes an answer only by a batched GEMM's rounding, still
merges.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from slimserve.repository.format import ModelEntry
from slimserve.server.core.batcher import DynamicBatcher
from slimserve.server.core.request import InferenceRequest, InferenceResult
from slimserve.server.core.session import VariantSession
from tests.fake_clock import FakeClock, run_on

MATES = 31  # adversarial requests sharing the queue with the one observed
FP32_ROUNDING = 1e-5  # a batched GEMM's rounding on a unit-norm embedding


def _request(ids: np.ndarray) -> InferenceRequest:
    ids = ids.astype(np.int64).reshape(1, -1)
    return InferenceRequest("minilm", "", {"input_ids": ids, "attention_mask": np.ones_like(ids)})


def _answers(minilm: ModelEntry, variant: str, with_mates: bool) -> tuple[np.ndarray, VariantSession, int]:
    """The observed request's embedding, answered alone or queued with MATES adversarial
    requests (long, and made of the vocabulary's last ids); the session; its session calls."""
    config = minilm.config
    session = VariantSession(config, minilm.variants[variant], threads=1)
    top = int(config.inputs[0].max_value or 1000)
    observed = _request(np.arange(100, 116))
    mates = [_request(np.full(96, top - i)) for i in range(MATES)] if with_mates else []

    async def scenario() -> list[InferenceResult]:
        with ThreadPoolExecutor(1) as executor:
            batcher = DynamicBatcher(session, executor, max_batch_size=32, max_queue_delay_ms=50, max_queue_size=64,
                                     clock=clock)  # fmt: skip
            calls = [asyncio.ensure_future(batcher.submit(r, None)) for r in [observed, *mates]]
            batcher.start()
            results = await asyncio.gather(*calls)
            await batcher.close()
            return results

    clock = FakeClock()
    results = run_on(clock, scenario())
    return results[0].outputs[config.outputs[0].name][0], session, sum(session_calls(results))


def session_calls(results: list[InferenceResult]) -> list[int]:
    """1 per session call: a merged batch's results all carry its total rows."""
    return (
        [1]
        if len({r.batch_size for r in results}) == 1 and results[0].batch_size == len(results)
        else [1] * len(results)
    )


def test_a_dynamically_quantized_variant_answers_the_same_whoever_shares_the_queue(minilm: ModelEntry) -> None:
    alone, session, _ = _answers(minilm, "int8", with_mates=False)
    shared, _, calls = _answers(minilm, "int8", with_mates=True)
    assert not session.merges_requests
    assert calls == MATES + 1  # each request its own session call
    assert np.array_equal(alone, shared)


def test_fp32_still_merges_and_moves_only_by_rounding(minilm: ModelEntry) -> None:
    alone, session, _ = _answers(minilm, "fp32", with_mates=False)
    shared, _, calls = _answers(minilm, "fp32", with_mates=True)
    assert session.merges_requests
    assert calls == 1  # one merged, padded batch
    assert float(np.max(np.abs(alone - shared))) < FP32_ROUNDING
