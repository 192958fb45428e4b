"""Calls made in worker processes, their results taken in the order the calls were given.

The build's graph steps spend most of their time in ONNX Runtime's quantizer, single-threaded
Python: quantizing the next candidate in a worker while this process scores the last one keeps
both cores busy (variants.quantize, variants.int8mixed). Workers are started fresh ("spawn"):
the build's process runs torch's OpenMP threads, which a forked child cannot use; so a script
that calls the build needs the `if __name__ == "__main__":` guard (README).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from slimserve.repository.hardware import usable_cores

Result = TypeVar("Result")


def worker_count(calls: int) -> int:
    """One worker per usable core, no more than there are calls."""
    return min(usable_cores(), calls)


def results_in_order(
    function: Callable[..., Result], calls: Sequence[tuple[Any, ...]], workers: int
) -> Generator[Result, None, None]:
    """`function(*call)` for each call, in order. With `workers` ≥ 2 every call is submitted at
    once, so the workers run ahead while the caller uses what it has; closing the generator
    early (the caller found what it needed, or raised) cancels the calls not yet started and
    waits for those running. Below 2, each call runs here when its result is asked for."""
    if workers < 2:
        for call in calls:
            yield function(*call)
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = [pool.submit(function, *call) for call in calls]
        for future in futures:
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
