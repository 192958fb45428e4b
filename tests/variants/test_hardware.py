"""Cores from the cgroup CPU quota: a pod limited to 2 cores on a 64-core node uses 2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from slimserve.repository.hardware import cgroup_cpu_limit, usable_cores


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
