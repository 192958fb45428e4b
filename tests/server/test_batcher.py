"""The batcher's queue rules, on a real ONNX Runtime session of the tiny digits model."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from server.batcher import DynamicBatcher
from server.errors import DeadlineExceededError, QueueFullError, ShuttingDownError
from server.request import InferenceRequest
from server.runtime import VariantSession
from variants.repository import ModelEntry


def _request(rows: int = 1, side: int = 28) -> InferenceRequest:
    return InferenceRequest("digits", "fp32", {"images": np.zeros((rows, 1, side, side), dtype=np.float32)})


def _batcher(digits: ModelEntry, executor: ThreadPoolExecutor, queue: int = 8) -> DynamicBatcher:
    session = VariantSession(digits.config, digits.variants["fp32"], threads=1)
    return DynamicBatcher(session, executor, max_batch_size=8, max_queue_delay_ms=50, max_queue_size=queue)


def test_full_queue_is_refused_at_once(digits: ModelEntry) -> None:
    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = _batcher(digits, executor, queue=2)  # not started: nothing drains
            waiting = [asyncio.create_task(batcher.submit(_request(), None)) for _ in range(2)]
            await asyncio.sleep(0)
            started = time.monotonic()
            with pytest.raises(QueueFullError, match="queue of variant 'fp32' is full"):
                await batcher.submit(_request(), None)
            assert time.monotonic() - started < 1.0
            batcher.start()
            await asyncio.gather(*waiting)
            await batcher.close()

    asyncio.run(scenario())


def test_expired_deadline_is_not_computed(digits: ModelEntry) -> None:
    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = _batcher(digits, executor)
            with pytest.raises(DeadlineExceededError):
                await batcher.submit(_request(), time.monotonic() - 1)
            # Queued in time, but the deadline passes during the 50 ms batching wait.
            batcher.start()
            with pytest.raises(DeadlineExceededError, match="not computed"):
                await batcher.submit(_request(), time.monotonic() + 0.01)
            assert sum(batcher.executions.values()) == 0
            await batcher.close()

    asyncio.run(scenario())


def test_cancelled_call_frees_its_slot(digits: ModelEntry) -> None:
    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = _batcher(digits, executor, queue=2)
            ahead = asyncio.create_task(batcher.submit(_request(), None))
            task = asyncio.create_task(batcher.submit(_request(3), None))  # behind another call
            await asyncio.sleep(0)
            assert (batcher.queue_depth, batcher.queued_rows) == (2, 4)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):  # not an error from finding it in the queue
                await task
            assert (batcher.queue_depth, batcher.queued_rows) == (1, 1)
            batcher.start()
            result = await batcher.submit(_request(), None)  # the slot is free again
            assert result.outputs["logits"].shape == (1, 10)
            assert (await ahead).outputs["logits"].shape == (1, 10)
            await batcher.close()

    asyncio.run(scenario())


def test_requests_merge_by_shape_and_split_back(digits: ModelEntry) -> None:
    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = _batcher(digits, executor)
            rng = np.random.default_rng(0)
            requests = [
                InferenceRequest("digits", "fp32", {"images": rng.random((n, 1, 28, 28), dtype=np.float32)})
                for n in (1, 3, 2)
            ]
            batcher.start()
            results = await asyncio.gather(*(batcher.submit(r, None) for r in requests))
            for request, result in zip(requests, results, strict=True):
                expected = batcher.session.run(request.inputs)["logits"]
                np.testing.assert_allclose(result.outputs["logits"], expected, atol=1e-5)
                assert result.batch_size == 6
            assert batcher.executions == {6: 1}
            await batcher.close()
            with pytest.raises(ShuttingDownError):
                await batcher.submit(_request(), None)

    asyncio.run(scenario())
