"""The CPU account: utilization and per-request overhead from process CPU time."""

from __future__ import annotations

import pytest

from slimserve.router.cpu import MIN_REQUESTS, CpuAccount


def test_utilization_is_cpu_time_over_wall_time_and_cores() -> None:
    account = CpuAccount()
    account.sample(cpu_s=10.0, wall_s=100.0, cores=2)
    assert not account.sampled  # the first reading only starts the clock
    for step in range(1, 40):
        account.sample(cpu_s=10.0 + 0.5 * step, wall_s=100.0 + 0.5 * step, cores=2)  # one core of two busy
    assert account.sampled
    assert account.utilization == pytest.approx(0.5, abs=1e-3)


def test_overhead_is_the_cpu_beyond_the_profiled_session_work_per_request() -> None:
    account = CpuAccount()
    account.sample(cpu_s=0.0, wall_s=0.0, cores=1)
    for _ in range(100):
        account.record_request()
        account.record_compute(2.0)
    account.sample(cpu_s=0.3, wall_s=1.0, cores=1)  # 300 machine-ms for 100 requests, 200 of them session work
    assert account.overhead_ms == pytest.approx(1.0)


def test_too_few_requests_wait_for_a_longer_window() -> None:
    account = CpuAccount()
    account.sample(cpu_s=0.0, wall_s=0.0, cores=1)
    account.record_request()
    account.sample(cpu_s=0.1, wall_s=0.5, cores=1)  # 1 request: says nothing yet
    assert account.overhead_ms == 0.0
    for _ in range(MIN_REQUESTS - 1):
        account.record_request()
    account.sample(cpu_s=0.2, wall_s=1.0, cores=1)  # 20 requests over the whole second, no session work
    assert account.overhead_ms == pytest.approx(200.0 / MIN_REQUESTS)


def test_the_target_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        CpuAccount(target=0.0)
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        CpuAccount(target=1.5)


def test_a_worker_accounts_against_its_share_of_the_cores() -> None:
    # One core of two busy is a full worker of two: its session calls run on one core.
    alone, worker = CpuAccount(), CpuAccount(share=0.5)
    for account in (alone, worker):
        account.sample(cpu_s=0.0, wall_s=0.0, cores=2)
        for step in range(1, 40):
            for _ in range(MIN_REQUESTS):
                account.record_request()
            account.sample(cpu_s=0.5 * step, wall_s=0.5 * step, cores=2)
    assert alone.utilization == pytest.approx(0.5, abs=1e-3)
    assert worker.utilization == pytest.approx(1.0, abs=1e-3)
    # 500 CPU-ms per 20 requests: 12.5 ms each over two cores, 25 ms on the worker's one.
    assert alone.overhead_ms == pytest.approx(12.5)
    assert worker.overhead_ms == pytest.approx(25.0)


def test_a_share_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match=r"share of the machine must be in \(0, 1\]"):
        CpuAccount(share=0.0)
    with pytest.raises(ValueError, match=r"share of the machine must be in \(0, 1\]"):
        CpuAccount(share=2.0)


def test_cpu_over_all_threads_is_machine_ms_of_the_cores_this_process_runs_on() -> None:
    alone, worker = CpuAccount(), CpuAccount(share=0.5)
    assert alone.machine_ms(4.0) is None  # no sample yet: the cores are not known
    for account in (alone, worker):
        account.sample(cpu_s=0.0, wall_s=0.0, cores=2)
    assert alone.machine_ms(4.0) == pytest.approx(2.0)  # 4 ms of CPU keep two cores busy for 2 ms
    assert worker.machine_ms(4.0) == pytest.approx(4.0)  # and the worker's one core for 4
