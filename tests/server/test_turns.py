"""`Turns`: a model's session calls at most `limit` at once, due first then first come, with
real threads (no clock: the order is the subject, not time)."""

from __future__ import annotations

import threading
import time

import pytest

from slimserve.server.core.turns import Turns

WAIT_S = 10.0  # how long a test waits for a thread before calling it stuck


def _until(condition: object, what: str) -> None:
    """Poll `condition` (a callable) until it holds; fail after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"stuck waiting for {what}"
        time.sleep(0.001)


def _order_of_turns(turns: Turns, askers: list[tuple[str, float | None]]) -> list[str]:
    """A first thread takes the one turn and keeps it while the `askers` (name, due time;
    None: `turns.turn()`, no due time) ask for it one after the other, each waiting before the
    next asks; then it lets go. The order in which all of them had their turns."""
    order: list[str] = []
    release_first = threading.Event()

    def first() -> None:
        with turns.turn():
            order.append("first")
            release_first.wait(WAIT_S)

    def later(name: str, due_s: float | None) -> None:
        with turns.turn() if due_s is None else turns.turn(due_s):
            order.append(name)

    threads = [threading.Thread(target=first)]
    threads[0].start()
    _until(lambda: order == ["first"], "the first turn")
    for count, (name, due_s) in enumerate(askers, start=1):
        thread = threading.Thread(target=later, args=(name, due_s))
        thread.start()
        threads.append(thread)
        _until(lambda count=count: turns.waiting == count, f"{name} to wait")  # type: ignore[misc]
    release_first.set()
    for thread in threads:
        thread.join(WAIT_S)
    return order


def test_waiting_threads_get_their_turns_in_the_order_they_asked() -> None:
    turns = Turns(1)
    assert _order_of_turns(turns, [("b", None), ("c", None), ("d", None), ("e", None)]) == [
        "first", "b", "c", "d", "e"
    ]  # fmt: skip
    assert turns.waiting == 0
    with turns.turn():  # every turn was handed back: a newcomer gets one at once
        pass


def test_the_next_turn_goes_to_the_thread_due_first_and_among_equals_to_the_first_to_ask() -> None:
    turns = Turns(1)
    # Asked in this order; due at 9, 3, 5 and 3 s (a loose batch first, then tighter ones).
    askers: list[tuple[str, float | None]] = [("loose", 9.0), ("tight", 3.0), ("mid", 5.0), ("tight2", 3.0)]
    assert _order_of_turns(turns, askers) == ["first", "tight", "tight2", "mid", "loose"]
    assert turns.waiting == 0


def test_no_more_than_the_limit_hold_a_turn_at_once_and_a_failure_hands_it_over() -> None:
    turns = Turns(2)
    holding = 0
    most = 0
    count_lock = threading.Lock()

    def work(index: int) -> None:
        nonlocal holding, most
        try:
            with turns.turn():
                with count_lock:
                    holding += 1
                    most = max(most, holding)
                time.sleep(0.002)
                with count_lock:
                    holding -= 1
                if index % 3 == 0:
                    raise RuntimeError("a session call that fails still ends its turn")
        except RuntimeError:
            pass

    threads = [threading.Thread(target=work, args=(i,)) for i in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert most == 2  # 24 threads asked at once: the limit held, and was reached
    assert turns.waiting == 0


def test_a_model_needs_at_least_one_turn() -> None:
    with pytest.raises(ValueError, match="at least one turn"):
        Turns(0)
