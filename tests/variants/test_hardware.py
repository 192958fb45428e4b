"""Cores from the cgroup CPU quota (a pod limited to 2 cores on a 64-core node uses 2), and
whether torch may train in bf16."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import pytest

from slimserve.repository.hardware import (
    SPEED_FLAGS,
    _cpuinfo,
    cgroup_cpu_limit,
    cpu_description,
    native_bf16,
    usable_cores,
)


def test_cgroup_v2_quota_in_cores(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("200000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 2.0
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_cgroup_v1_quota_in_cores(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("150000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_no_cgroup_files_or_garbage_means_no_limit(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").write_text("nonsense")
    assert cgroup_cpu_limit(tmp_path) is None


@pytest.mark.parametrize(("quota", "expected"), [("50000 100000", 1), ("150000 100000", 2), ("max 100000", None)])
def test_usable_cores_is_the_affinity_capped_by_the_quota(tmp_path: Path, quota: str, expected: int | None) -> None:
    (tmp_path / "cpu.max").write_text(quota)
    affinity = len(os.sched_getaffinity(0))
    assert usable_cores(tmp_path) == (affinity if expected is None else min(affinity, expected))


@pytest.mark.parametrize("cap", ["AVX2", "avx512_core_vnni", " AVX512_CORE "])
def test_a_onednn_cap_below_bf16_means_no_native_bf16(cap: str) -> None:
    # Capped there, torch emulates bf16 matmuls: 16x slower than fp32, not 2x faster.
    assert native_bf16({"ONEDNN_MAX_CPU_ISA": cap}) is False


def test_without_a_cap_native_bf16_follows_the_cpu_flags() -> None:
    has_bf16 = bool({"avx512_bf16", "amx_bf16"} & _cpuinfo()[1])
    assert native_bf16({}) is has_bf16
    assert native_bf16({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}) is has_bf16


def test_the_cpu_description_names_the_model_and_every_speed_flag_it_has() -> None:
    model, flags = _cpuinfo()
    description = cpu_description()
    assert description.startswith(f"{model} (")
    for flag in SPEED_FLAGS:  # named exactly when /proc/cpuinfo lists it
        assert (f" {flag}" in description or f"({flag}" in description) == (flag in flags)


def test_cpuinfo_reads_the_model_and_flags_and_without_a_model_name_falls_back_to_the_architecture(
    tmp_path: Path,
) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512_vnni\n\nprocessor\t: 1\n")
    assert _cpuinfo(x86) == ("AMD EPYC", {"fpu", "avx2", "avx512_vnni"})
    arm = tmp_path / "arm"  # aarch64 lists Features and no model name
    arm.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd sve\nCPU implementer\t: 0x41\n")
    assert _cpuinfo(arm) == (platform.machine(), {"fp", "asimd", "sve"})
    assert _cpuinfo(tmp_path / "absent") == (platform.machine(), set())
