"""Triton's ModelStreamInfer: ModelInferRequests on one bidirectional stream, each served as a
unary ModelInfer is — the same converters and the same `DataPlane.infer`, so one request in a
stream is resolved, admitted, routed, batched and recorded (ModelStatistics, Prometheus)
exactly as a ModelInfer call. This module only moves messages between the stream and that
function.

Order. Requests are served concurrently (they batch together), and answers leave in the
order the requests came, as Triton answers a model that is not decoupled (its stream handler
queues each request for its response in arrival order; only decoupled models answer out of
order, and slimserve has none). tritonclient pairs nothing by position — its callback and
its aio iterator hand over each answer as it comes, with its id — but a request's `id` is
optional, and without one the position is the only way to tell which request an answer is
for; clients written against Triton rely on it. The cost is that a slow request holds back
the answers behind it, not their work.

Errors. A request that fails — not a ModelInferRequest at all, a bad tensor, an unknown
model, an overload refusal, a deadline — is answered with `error_message` (the text the
unary call's status would carry, `transport.status`) and an `infer_response` that holds
only its `id` (as Triton's does) and a `code` parameter (the status name the unary call
would have ended with, so that a client can tell UNAVAILABLE, worth a retry, from
INVALID_ARGUMENT); the stream goes on. An id longer than any the server accepts
(`codec.MAX_ID_CHARS`) is refused and not echoed: the answer's position says which it was.

Bound. At most MAX_STREAM_IN_FLIGHT_REQUESTS requests of one stream are read and not yet
answered; the next is read only when an answer has been written, so gRPC's flow control
holds a client that sends faster than it is served, and one stream cannot queue unbounded
work (the batchers' queue limits apply besides, to every request).

End. The stream ends OK once the client has half-closed and every answer is written; a
client that cancels (or a deadline on the stream) cancels every request still in flight —
each recorded as CANCELLED or DEADLINE_EXCEEDED by the data plane — and leaves no task.

Backlog. To gRPC's channelz and to `observe.backlog.CallCount` the stream is one call, taken
up when it opens and over when it ends, so an open stream, idle or not, never counts as work
waiting for the event loop; each request in it counts in the data plane's `handling` and
`handled` as a unary call does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, Awaitable, Callable

import grpc

from slimserve.protos import inference_pb2 as pb
from slimserve.server.transport.codec import MAX_ID_CHARS, MalformedRequest
from slimserve.server.transport.status import status_for

log = logging.getLogger(__name__)

# Two batches of the default max_batch_size (32): one stream with this many requests in
# flight already fills every batch its variant runs; more would only lengthen the queues.
MAX_STREAM_IN_FLIGHT_REQUESTS = 64
CODE_PARAMETER = "code"  # of a failed request's infer_response: the status name (module docstring)

Message = pb.ModelInferRequest | MalformedRequest
Infer = Callable[[Message], Awaitable[pb.ModelInferResponse]]


def failure(message: Message, error: Exception) -> pb.ModelStreamInferResponse:
    """The answer to a request that raised `error` (module docstring: Errors)."""
    code, text = status_for(error)
    if code == grpc.StatusCode.INTERNAL:
        log.error("unexpected error in ModelStreamInfer", exc_info=error)
    answer = pb.ModelStreamInferResponse(error_message=text)
    request_id = "" if isinstance(message, MalformedRequest) else message.id
    answer.infer_response.id = request_id if len(request_id) <= MAX_ID_CHARS else ""
    answer.infer_response.parameters[CODE_PARAMETER].string_param = code.name
    return answer


async def _answer(message: Message, infer: Infer) -> pb.ModelStreamInferResponse:
    try:
        return pb.ModelStreamInferResponse(infer_response=await infer(message))
    except Exception as exc:  # the request fails, the stream does not
        return failure(message, exc)


async def serve_stream(requests: AsyncIterable[Message], context: grpc.aio.ServicerContext, infer: Infer) -> None:
    """Answer every request of the stream `requests` with `infer`, in order, writing each
    answer to `context` (module docstring); returns once the client has half-closed and
    every answer is written."""
    slots = asyncio.Semaphore(MAX_STREAM_IN_FLIGHT_REQUESTS)
    answers: asyncio.Queue[asyncio.Task[pb.ModelStreamInferResponse] | None] = asyncio.Queue()
    in_flight: set[asyncio.Task[pb.ModelStreamInferResponse]] = set()

    async def read() -> None:
        messages = aiter(requests)
        try:
            while True:
                await slots.acquire()  # before reading: a stream at its bound is not read
                try:
                    message = await anext(messages)
                except StopAsyncIteration:
                    return
                task = asyncio.create_task(_answer(message, infer))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                answers.put_nowait(task)
        finally:
            answers.put_nowait(None)

    reader = asyncio.create_task(read())
    try:
        while (task := await answers.get()) is not None:
            await context.write(await task)
            slots.release()
        await reader  # a failure to read ends the call (maps_errors), after the answers before it
    finally:
        # The client cancelled or the stream failed: no request of it is worth serving now.
        leftover = [reader, *in_flight]
        for pending in leftover:
            pending.cancel()
        await asyncio.gather(*leftover, return_exceptions=True)
