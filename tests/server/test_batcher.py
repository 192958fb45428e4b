"""The batcher's queue rules, on a real ONNX Runtime session of the tiny digits model.

Each test runs on an event loop whose time is the batcher's fake clock (tests/fake_clock.py):
the 50-ms batching wait and the restart window are jumped, not slept, and times are exact.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from slimserve.repository.format import ModelEntry
from slimserve.server.core import batcher as batcher_module
from slimserve.server.core.batcher import RESTART_WINDOW_S, BatchListener, DynamicBatcher, RequestTimeoutError
from slimserve.server.core.request import InferenceRequest, InferenceResult
from slimserve.server.core.session import VariantSession
from slimserve.server.core.turns import Turns
from slimserve.server.errors import (
    DeadlineExceededError,
    ModelExecutionError,
    QueueFullError,
    ShuttingDownError,
    VariantUnavailableError,
)
from tests.fake_clock import FakeClock, run_on

MAX_DELAY_S = 0.05  # the batching wait of `_batcher`


def _request(rows: int = 1, side: int = 28) -> InferenceRequest:
    return InferenceRequest("digits", "fp32", {"images": np.zeros((rows, 1, side, side), dtype=np.float32)})


def _in_answer_order(calls: dict[str, asyncio.Task[InferenceResult]]) -> list[str]:
    """The names of `calls` in the order they will be answered (a batch's calls in its order)."""
    order: list[str] = []
    for name, call in calls.items():
        call.add_done_callback(lambda _, name=name: order.append(name))  # type: ignore[misc]
    return order


def _batcher(
    digits: ModelEntry,
    executor: ThreadPoolExecutor,
    clock: FakeClock,
    queue: int = 8,
    on_batch: BatchListener | None = None,
    on_failure: Callable[[], None] | None = None,
    levels: int = 0,
) -> DynamicBatcher:
    """A batcher of digits' fp32 (8 rows, a 50-ms wait); `levels` priority levels, 2 the default."""
    session = VariantSession(digits.config, digits.variants["fp32"], threads=1)
    return DynamicBatcher(
        session, executor, max_batch_size=8, max_queue_delay_ms=MAX_DELAY_S * 1e3, max_queue_size=queue,
        on_batch=on_batch, on_failure=on_failure, clock=clock,
        priority_levels=levels, default_priority_level=2 if levels else 0,
    )  # fmt: skip


def test_full_queue_is_refused_at_once(digits: ModelEntry) -> None:
    clock = FakeClock()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = _batcher(digits, executor, clock, queue=2)  # not started: nothing drains
            waiting = [asyncio.create_task(batcher.submit(_request(), None)) for _ in range(2)]
            await asyncio.sleep(0)
            started = clock()
            with pytest.raises(QueueFullError, match="queue of variant 'fp32' is full"):
                await asyncio.wait_for(batcher.submit(_request(), None), timeout=1.0)  # not TimeoutError
            assert clock() == started  # no time passed: any timed wait would have moved the loop's clock
            batcher.start()
            await asyncio.gather(*waiting)
            await batcher.close()

    run_on(clock, scenario())


def test_expired_deadline_is_not_computed(digits: ModelEntry) -> None:
    clock = FakeClock()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = _batcher(digits, executor, clock)
            with pytest.raises(DeadlineExceededError, match="before the request was queued"):
                await batcher.submit(_request(), clock() - 1)
            # Queued in time, but the deadline passes during the 50 ms batching wait.
            batcher.start()
            queued_s = clock()
            with pytest.raises(DeadlineExceededError, match="not computed"):
                await batcher.submit(_request(), queued_s + 0.01)
            assert clock() == pytest.approx(queued_s + MAX_DELAY_S)  # refused when the wait ended
            assert sum(batcher.executions.values()) == 0
            await batcher.close()

    run_on(clock, scenario())


def test_cancelled_call_frees_its_slot(digits: ModelEntry) -> None:
    clock = FakeClock()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = _batcher(digits, executor, clock, queue=2)
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

    run_on(clock, scenario())


def test_requests_merge_by_shape_and_split_back(digits: ModelEntry) -> None:
    clock = FakeClock()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = _batcher(digits, executor, clock)
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
                assert result.queue_ms == pytest.approx(MAX_DELAY_S * 1e3)  # 6 rows of 8: it waited for more
            assert batcher.executions == {6: 1}
            await batcher.close()
            with pytest.raises(ShuttingDownError):
                await batcher.submit(_request(), None)

    run_on(clock, scenario())


def _tokens(rows: int, first_id: int, length: int = 8) -> InferenceRequest:
    ids = np.full((rows, length), 101, dtype=np.int64)
    ids[:, 1] = first_id
    mask = np.ones((rows, length), dtype=np.int64)
    return InferenceRequest("minilm", "fp32", {"input_ids": ids, "attention_mask": mask})


def test_a_request_the_session_cannot_run_fails_alone_not_its_batch_mates(minilm: ModelEntry) -> None:
    """A token id outside the vocabulary makes ONNX Runtime's Gather raise for the whole merged call."""

    clock = FakeClock()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            session = VariantSession(minilm.config, minilm.variants["fp32"], threads=1)
            batcher = DynamicBatcher(
                session, executor, max_batch_size=32, max_queue_delay_ms=0, max_queue_size=64, clock=clock
            )
            good = [_tokens(2, 2000 + i) for i in range(6)]
            bad = _tokens(1, 10_000_000)
            calls = [asyncio.create_task(batcher.submit(r, None)) for r in (*good[:3], bad, *good[3:])]
            await asyncio.sleep(0)
            batcher.start()  # all seven queued: they are merged into one call, which fails
            results = await asyncio.gather(*calls, return_exceptions=True)
            assert isinstance(results[3], ModelExecutionError)
            assert "could not run this input" in str(results[3]) and "fp32" in str(results[3])
            answered = [r for i, r in enumerate(results) if i != 3]
            for request, result in zip(good, answered, strict=True):
                assert not isinstance(result, BaseException), result
                expected = session.run(request.inputs)["embedding"]
                np.testing.assert_allclose(result.outputs["embedding"], expected, atol=1e-5)
            assert batcher.executions[13] == 0 and batcher.executions[2] == 6  # merged call failed, then one by one
            await batcher.close()

    run_on(clock, scenario())


def test_queue_is_bounded_in_bytes(digits: ModelEntry) -> None:
    clock = FakeClock()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            session = VariantSession(digits.config, digits.variants["fp32"], threads=1)
            one_image = 28 * 28 * 4
            batcher = DynamicBatcher(
                session, executor, 8, 0, max_queue_size=100, max_queue_bytes=3 * one_image, clock=clock
            )
            waiting = [asyncio.create_task(batcher.submit(_request(), None)) for _ in range(3)]
            await asyncio.sleep(0)
            with pytest.raises(QueueFullError, match="byte limit"):
                await batcher.submit(_request(), None)
            batcher.start()
            await asyncio.gather(*waiting)
            assert (await batcher.submit(_request(8), None)).outputs["logits"].shape == (8, 10)  # alone: taken
            await batcher.close()

    run_on(clock, scenario())


def test_a_failing_listener_does_not_fail_answered_calls(digits: ModelEntry) -> None:
    clock = FakeClock()
    heard: list[tuple[DynamicBatcher, int]] = []

    def broken(batcher: DynamicBatcher, rows: int, compute_ms: float, cpu_ms: float) -> None:
        heard.append((batcher, rows))
        raise RuntimeError("listener bug")

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = _batcher(digits, executor, clock, on_batch=broken)
            batcher.start()
            for _ in range(3):
                assert (await batcher.submit(_request(), None)).outputs["logits"].shape == (1, 10)
            assert heard == [(batcher, 1)] * 3  # it was called after every session call, and raised
            await batcher.close()

    run_on(clock, scenario())


def test_a_loop_that_dies_is_restarted_then_failed_and_no_call_hangs(digits: ModelEntry) -> None:
    clock = FakeClock()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            failures: list[bool] = []
            batcher = _batcher(digits, executor, clock, on_failure=lambda: failures.append(True))
            batcher.start()

            async def kill() -> None:
                """End the loop from outside, as a crash would, and let supervision act on it."""
                task = batcher.loop_task
                assert task is not None and not task.done()
                task.cancel()
                await asyncio.wait({task})  # done: its callbacks, supervision's first, have run

            async def kill_and_check(restarts: int) -> None:
                await kill()
                assert batcher.restarts == restarts and not batcher.failed
                assert (await batcher.submit(_request(), None)).outputs["logits"].shape == (1, 10)

            for restart in range(1, 4):  # killed from outside: restarted, and still answers
                await kill_and_check(restart)
            # Deaths far apart are not a failing variant: once the window has passed, a fourth
            # death is restarted too.
            clock.advance(RESTART_WINDOW_S + 1)
            for restart in range(4, 7):
                await kill_and_check(restart)
            # Calls in compute and waiting while the loop dies for the last time are answered,
            # not left hanging.
            computing = asyncio.create_task(batcher.submit(_request(8), None))
            while batcher.running_rows == 0:  # handed to the session
                await asyncio.sleep(0)
            waiting = asyncio.create_task(batcher.submit(_request(), clock() + 60))
            await asyncio.sleep(0)
            await kill()
            for call in (computing, waiting):
                with pytest.raises(VariantUnavailableError):
                    await asyncio.wait_for(call, timeout=30)
            assert batcher.failed and failures == [True]
            with pytest.raises(VariantUnavailableError, match="not serving"):
                await batcher.submit(_request(), None)

    run_on(clock, scenario())


def _sentence(ids: list[int], length: int) -> InferenceRequest:
    """One tokenised sentence, zero-padded (mask 0) to `length` tokens."""
    tokens = np.zeros((1, length), dtype=np.int64)
    tokens[0, : len(ids)] = ids
    mask = (np.arange(length) < len(ids)).astype(np.int64)[None, :]
    return InferenceRequest("minilm", "fp32", {"input_ids": tokens, "attention_mask": mask})


def test_requests_of_different_lengths_share_a_padded_batch_with_unchanged_answers(minilm: ModelEntry) -> None:
    assert all(spec.pad_value == 0 for spec in minilm.config.inputs)  # the encoder declares it

    clock = FakeClock()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            session = VariantSession(minilm.config, minilm.variants["fp32"], threads=1)
            batcher = DynamicBatcher(
                session, executor, max_batch_size=8, max_queue_delay_ms=50, max_queue_size=8, clock=clock
            )
            sentences = [_sentence([101, 2023, 2003, 102], 6), _sentence([101, 7592, 2088, 999, 2182, 102], 17)]
            alone = [session.run(s.inputs)["embedding"] for s in sentences]
            batcher.start()
            results = await asyncio.gather(*(batcher.submit(s, None) for s in sentences))
            assert batcher.executions == {2: 1}  # one session call for both
            for result, expected in zip(results, alone, strict=True):
                np.testing.assert_allclose(result.outputs["embedding"], expected, atol=1e-5)
            await batcher.close()

    run_on(clock, scenario())


def test_inputs_without_a_pad_value_are_never_padded(digits: ModelEntry) -> None:
    clock = FakeClock()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = _batcher(digits, executor, clock)
            batcher.start()
            await asyncio.gather(batcher.submit(_request(side=28), None), batcher.submit(_request(side=28), None))
            assert batcher.executions == {2: 1}
            batcher.executions.clear()
            small = _request(side=8)  # a shape the model refuses: it must fail alone, not be padded
            results = await asyncio.gather(
                batcher.submit(_request(side=28), None), batcher.submit(small, None), return_exceptions=True
            )
            assert not isinstance(results[0], BaseException) and isinstance(results[1], ModelExecutionError)
            assert batcher.executions[1] >= 1 and 2 not in batcher.executions
            await batcher.close()

    run_on(clock, scenario())


def test_higher_priority_levels_go_first_each_level_in_arrival_order(digits: ModelEntry) -> None:
    clock = FakeClock()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = _batcher(digits, executor, clock, levels=3)  # not started: everything queues first
            arrivals = [("low", 3, 4), ("plain", 0, 4), ("first", 1, 4), ("second", 1, 4), ("plain-2", 2, 4)]
            calls = {
                name: asyncio.create_task(batcher.submit(_request(rows), None, level)) for name, level, rows in arrivals
            }
            order = _in_answer_order(calls)
            await asyncio.sleep(0)
            assert (batcher.queue_depth, batcher.queued_rows, batcher.rows_by_level) == (5, 20, (8, 8, 4))
            batcher.start()
            results = {name: await call for name, call in calls.items()}
            assert order == ["first", "second", "plain", "plain-2", "low"]
            assert [results[n].batch_size for n in order] == [8, 8, 8, 8, 4]
            assert batcher.executions == {8: 2, 4: 1} and batcher.rows_by_level == (0, 0, 0)
            await batcher.close()

    run_on(clock, scenario())


def test_a_request_that_does_not_fit_ends_the_batch_and_nothing_lower_slips_ahead(digits: ModelEntry) -> None:
    clock = FakeClock()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = _batcher(digits, executor, clock, levels=2)
            arrivals = [("small", 2, 2), ("urgent", 1, 4), ("urgent-big", 1, 6)]
            calls = {
                name: asyncio.create_task(batcher.submit(_request(rows), None, level)) for name, level, rows in arrivals
            }
            order = _in_answer_order(calls)
            await asyncio.sleep(0)
            batcher.start()
            results = {name: await call for name, call in calls.items()}
            # 4 + 6 rows pass 8: "urgent" goes alone, though "small" would have filled its batch.
            assert order == ["urgent", "urgent-big", "small"]
            assert [results[n].batch_size for n in order] == [4, 8, 8]
            await batcher.close()

    run_on(clock, scenario())


def test_levels_merge_only_requests_of_one_shape(minilm: ModelEntry) -> None:
    """Without a pad value (taken away here), sentences of two lengths never share a batch:
    the first request taken sets the shape, across levels; the others keep their places."""
    clock = FakeClock()
    unpadded = minilm.config.model_copy(
        update={"inputs": [spec.model_copy(update={"pad_value": None}) for spec in minilm.config.inputs]}
    )

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            session = VariantSession(unpadded, minilm.variants["fp32"], threads=1)
            batcher = DynamicBatcher(
                session, executor, max_batch_size=8, max_queue_delay_ms=0, max_queue_size=8, clock=clock,
                priority_levels=2, default_priority_level=2,
            )  # fmt: skip
            sentences = {
                "short-low": (_sentence([101, 2023, 102], 8), 2),
                "long-high": (_sentence([101, 7592, 2088, 999, 102], 16), 1),
                "long-low": (_sentence([101, 2182, 2003, 102], 16), 2),
                "short-high": (_sentence([101, 999, 102], 8), 1),
            }
            calls = {
                name: asyncio.create_task(batcher.submit(request, None, level))
                for name, (request, level) in sentences.items()
            }
            order = _in_answer_order(calls)
            await asyncio.sleep(0)
            batcher.start()
            results = {name: await call for name, call in calls.items()}
            assert order == ["long-high", "long-low", "short-high", "short-low"]
            assert batcher.executions == {2: 2}
            for name, (request, _) in sentences.items():
                expected = session.run(request.inputs)["embedding"]
                np.testing.assert_allclose(results[name].outputs["embedding"], expected, atol=1e-5)
            await batcher.close()

    run_on(clock, scenario())


def test_a_queued_request_is_answered_unavailable_when_its_timeout_ends(digits: ModelEntry) -> None:
    """Triton's `timeout`: answered "Request timeout expired" (UNAVAILABLE) at that moment,
    while the batcher is still busy elsewhere (here: not started), and never computed."""
    clock = FakeClock()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = _batcher(digits, executor, clock, levels=2)
            queued_s = clock()
            with pytest.raises(
                RequestTimeoutError, match=r"^Request timeout expired: .* before the request was queued"
            ):
                await batcher.submit(_request(), None, 1, timeout_at_s=queued_s)
            patient = asyncio.create_task(batcher.submit(_request(), queued_s + 60, 2))
            with pytest.raises(RequestTimeoutError, match=r"^Request timeout expired: .* while queued; not computed"):
                await batcher.submit(_request(3), queued_s + 60, 1, timeout_at_s=queued_s + 0.01)
            assert clock() == pytest.approx(queued_s + 0.01)  # at its end, with nothing else happening
            assert (batcher.queue_depth, batcher.queued_rows, batcher.rows_by_level) == (1, 1, (0, 1))
            # A gRPC deadline before the timeout is still the gRPC deadline: DEADLINE_EXCEEDED.
            with pytest.raises(DeadlineExceededError, match="not computed"):
                await asyncio.gather(
                    batcher.submit(_request(), clock() + 0.02, 1, timeout_at_s=clock() + 30), _start_in(batcher, 0.03)
                )
            assert (await patient).batch_size == 1 and sum(batcher.executions.values()) == 1
            # A timeout that does not end is no different from none.
            assert (await batcher.submit(_request(), None, 1, timeout_at_s=clock() + 30)).batch_size == 1
            await batcher.close()

    run_on(clock, scenario())


async def _start_in(batcher: DynamicBatcher, seconds: float) -> None:
    await asyncio.sleep(seconds)
    batcher.start()


def test_a_longer_call_of_the_same_rows_is_not_run_inline_on_what_shorter_ones_took(
    minilm: ModelEntry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inline rule learns per input size, not per row count (the hardening issue's L5): a
    rows=1 call of 256 tokens is not run on the event loop because rows=1 calls of 4 tokens
    were quick. Every known size counts as quick here, so where each call runs shows what the
    batcher knew: the first call of a size goes to the thread, the next one runs inline."""
    monkeypatch.setattr(batcher_module, "INLINE_BELOW_MS", float("inf"))
    where: list[str] = []

    class Recorded(VariantSession):
        def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            where.append("loop" if threading.current_thread() is threading.main_thread() else "thread")
            return super().run(inputs)

    clock = FakeClock()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            session = Recorded(minilm.config, minilm.variants["fp32"], threads=1)
            batcher = DynamicBatcher(
                session, executor, max_batch_size=8, max_queue_delay_ms=0, max_queue_size=8, clock=clock
            )
            batcher.start()
            short, long = _sentence([101, 2023, 2003, 102], 4), _sentence([101, *[2023] * 254, 102], 256)
            for request in (short, short, long, long):
                await batcher.submit(request, None)
            await batcher.close()

    run_on(clock, scenario())
    assert where == ["thread", "loop", "thread", "loop"]


def test_every_session_call_reports_the_cpu_it_used(digits: ModelEntry) -> None:
    clock = FakeClock()
    heard: list[tuple[int, float, float]] = []

    def listener(batcher: DynamicBatcher, rows: int, compute_ms: float, cpu_ms: float) -> None:
        heard.append((rows, compute_ms, cpu_ms))

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = _batcher(digits, executor, clock, on_batch=listener)
            batcher.start()
            for rows in (1, 8):
                await batcher.submit(_request(rows), None)
            await batcher.close()

    run_on(clock, scenario())
    assert [rows for rows, _, _ in heard] == [1, 8]
    for _, compute_ms, cpu_ms in heard:
        # One intra-op thread: the call's CPU is its thread's, never more than the call lasted.
        assert 0.0 < cpu_ms <= compute_ms + 0.5


def test_batchers_that_share_turns_never_run_their_session_calls_at_once(
    minilm: ModelEntry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two variants' batchers with one turn between them, on an executor with threads to
    spare: their session calls run one after the other (core.turns), every call answered."""
    monkeypatch.setattr(batcher_module, "INLINE_BELOW_MS", 0.0)  # every call to a thread, where turns are taken
    spans: list[tuple[float, float]] = []
    spans_lock = threading.Lock()

    class Timed(VariantSession):
        def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            began = time.perf_counter()
            outputs = super().run(inputs)
            with spans_lock:
                spans.append((began, time.perf_counter()))
            return outputs

    clock = FakeClock()
    turns = Turns(1)

    async def scenario() -> None:
        with ThreadPoolExecutor(4) as executor:
            batchers = [
                DynamicBatcher(
                    Timed(minilm.config, minilm.variants[variant], threads=1),
                    executor,
                    max_batch_size=2,
                    max_queue_delay_ms=0,
                    max_queue_size=16,
                    clock=clock,
                    turns=turns,
                )
                for variant in ("fp32", "int8")
            ]
            for batcher in batchers:
                batcher.start()
            long = _sentence([101, *[2023] * 126, 102], 128)
            calls = [batcher.submit(long, None) for batcher in batchers for _ in range(6)]
            answers = await asyncio.gather(*calls)
            assert len(answers) == 12
            for batcher in batchers:
                await batcher.close()

    run_on(clock, scenario())
    spans.sort()
    assert len(spans) >= 6  # both variants' calls, batched by two at most
    for (_, ended), (began, _) in itertools.pairwise(spans):
        assert began >= ended  # the next call began after the last one ended
    assert turns.waiting == 0


def _turn_held_elsewhere(turns: Turns) -> Callable[[], None]:
    """Another variant's call takes the model's one turn and keeps it; the function returned
    ends that call (its turn goes to the next waiting thread) and joins its thread."""
    held, release = threading.Event(), threading.Event()

    def another_variant_computing() -> None:
        with turns.turn():
            held.set()
            release.wait(60.0)

    holder = threading.Thread(target=another_variant_computing)
    holder.start()
    assert held.wait(60.0)

    def end() -> None:
        release.set()
        holder.join(60.0)

    return end


async def _until_waiting(turns: Turns, count: int) -> None:
    """Until `count` threads wait for a turn (their batches' calls asked for it)."""
    deadline = time.monotonic() + 60.0
    while turns.waiting < count:
        assert time.monotonic() < deadline
        await asyncio.sleep(0)
        time.sleep(0.001)


def test_the_batch_due_first_takes_the_next_turn(minilm: ModelEntry, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another variant holds the model's one turn; a loose call (SLO ends at 9 s) waits for it
    on fp32, then a tight one (1 s) on int8: the tight one's batch runs first (core.turns)."""
    monkeypatch.setattr(batcher_module, "INLINE_BELOW_MS", 0.0)
    ran: list[str] = []

    class Named(VariantSession):
        def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            ran.append(self.name)
            return super().run(inputs)

    turns = Turns(1)
    release = _turn_held_elsewhere(turns)
    clock = FakeClock()
    sentence = _sentence([101, 2023, 102], 8)

    async def scenario() -> None:
        with ThreadPoolExecutor(4) as executor:
            fp32, int8 = (
                DynamicBatcher(Named(minilm.config, minilm.variants[name], threads=1), executor, max_batch_size=1,
                               max_queue_delay_ms=0, max_queue_size=4, clock=clock, turns=turns)
                for name in ("fp32", "int8")
            )  # fmt: skip
            fp32.start()
            int8.start()
            loose = asyncio.create_task(fp32.submit(sentence, None, due_s=9.0))
            await _until_waiting(turns, 1)
            tight = asyncio.create_task(int8.submit(sentence, None, due_s=1.0))
            await _until_waiting(turns, 2)
            release()
            assert (await loose).outputs and (await tight).outputs
            await fp32.close()
            await int8.close()

    run_on(clock, scenario())
    assert ran == ["int8", "fp32"]  # first come first served would have run fp32 first


def test_a_call_whose_loop_died_while_it_waited_for_its_turn_is_never_run(
    minilm: ModelEntry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batcher's loop is cancelled while its call's thread waits for the model's turn: the
    call is answered UNAVAILABLE (retry) by the restart, and when the turn comes its thread
    hands it on without running the session; the restarted loop's next call runs."""
    monkeypatch.setattr(batcher_module, "INLINE_BELOW_MS", 0.0)
    runs: list[int] = []

    class Counted(VariantSession):
        def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            runs.append(int(next(iter(inputs.values())).shape[0]))
            return super().run(inputs)

    turns = Turns(1)
    release = _turn_held_elsewhere(turns)
    clock = FakeClock()
    sentence = _sentence([101, 2023, 102], 8)

    async def scenario() -> None:
        with ThreadPoolExecutor(2) as executor:
            batcher = DynamicBatcher(
                Counted(minilm.config, minilm.variants["fp32"], threads=1),
                executor,
                max_batch_size=1,
                max_queue_delay_ms=0,
                max_queue_size=4,
                clock=clock,
                turns=turns,
            )
            batcher.start()
            first = asyncio.create_task(batcher.submit(sentence, None))
            await _until_waiting(turns, 1)
            task = batcher.loop_task
            assert task is not None
            task.cancel()
            await asyncio.wait({task})
            with pytest.raises(VariantUnavailableError, match="stopped serving"):
                await first
            release()
            assert (await batcher.submit(sentence, None)).outputs
            await batcher.close()

    run_on(clock, scenario())
    assert runs == [1]  # the restarted loop's call alone
