"""The data plane on a real serving core (ONNX Runtime, batchers, routers, Prometheus
registry), without a gRPC server: each call is recorded once, under the repository's names."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from slimserve.server.core.request import InferenceRequest
from slimserve.server.errors import NotFoundError, ShuttingDownError
from tests.server.in_process import ServingCore, zero_digits

THREADS = 1


def _count(core: ServingCore, name: str, **labels: str) -> float:
    value = core.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_every_call_is_recorded_once_under_the_repositorys_names(digits_repo: Path) -> None:
    async def scenario() -> None:
        with ThreadPoolExecutor(4) as executor:
            core = ServingCore(digits_repo, executor, THREADS)
            core.registry.start_batchers()
            results = [await core.infer(zero_digits()) for _ in range(5)] + [await core.infer(zero_digits("fp32"))]
            with pytest.raises(NotFoundError):
                await core.infer(InferenceRequest("nope", "", zero_digits().inputs))
            core.plane.stop_accepting()  # draining: refused, but still counted under its model
            with pytest.raises(ShuttingDownError):
                await core.infer(zero_digits())
            await core.registry.close()
            served = {r.variant for r in results}
            ok = sum(_count(core, "slimserve_requests_total", model="digits", variant=v, code="OK") for v in served)
            assert ok == 6
            answered = sum(core.registry.models["digits"].stats[v].success_count for v in served)
            assert answered == 6
            assert (
                _count(core, "slimserve_routing_decisions_total", model="digits", variant="fp32", reason="pinned") == 1
            )
            assert _count(core, "slimserve_requests_total", model="unknown", variant="unknown", code="NOT_FOUND") == 1
            refused = _count(core, "slimserve_requests_total", model="digits", variant="unknown", code="UNAVAILABLE")
            assert refused == 1

    asyncio.run(scenario())
