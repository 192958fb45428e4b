"""Hardware fingerprints: what a latency profile is valid for.

A profile measured on one chip says little about another (int8 pays off with VNNI or AMX
and much less without), so every profile is stored under the fingerprint of the machine,
thread count and runtime that produced it. Two named targets exist: `cloud-cpu` (every
core this process may use) and `edge` (pinned to one core, one thread).
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from slimserve.repository.format import HardwareFingerprint

HardwareTarget = Literal["cloud-cpu", "edge"]

# The instruction-set extensions that change which ONNX Runtime kernels run.
_ISA_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
# Of those, the ones that decide int8 and bf16 speed on the CPUs this project meets: named
# beside every measured figure (the same build runs int8 1.35× faster than fp32 on one EPYC
# and 2.3× on another, docs/routing.md).
SPEED_FLAGS = ("avx2", "avx512_vnni", "amx_tile")


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str, set[str]]:
    """The CPU's model name and flags from `path`; without a model name there (ARM lists none),
    the machine's architecture. Not `platform.processor()`: it runs `uname -p` in a child
    process, which a threaded server should not fork for."""
    model, flags = "", set()
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and value.strip():
                    model = value.strip()
                elif key in ("flags", "Features"):
                    flags = set(value.split())
                if flags and model:
                    break
    except OSError:
        pass
    return model or platform.machine(), flags


def cpu_description() -> str:
    """The CPU's model and which of SPEED_FLAGS it has, e.g. 'AMD EPYC (avx2 avx512_vnni)'."""
    model, flags = _cpuinfo()
    named = [flag for flag in SPEED_FLAGS if flag in flags]
    return f"{model} ({' '.join(named) if named else 'none of ' + ', '.join(SPEED_FLAGS)})"


CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota in cores (quota / period) of this container's cgroup, or None if unlimited.

    cgroup v2 keeps "<quota> <period>" (quota "max" = none) in cpu.max; v1 keeps them in
    cpu.cfs_quota_us (-1 = none) and cpu.cfs_period_us. A pod with `limits.cpu: 2` on a
    64-core node has affinity for 64 cores but only 2 cores' worth of time.
    """
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def usable_cores(cgroup_root: Path = CGROUP_ROOT) -> int:
    """Cores this process may use: the affinity mask, capped by the cgroup's CPU quota
    (rounded up: 1.5 cores of quota still runs two threads usefully)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_limit(cgroup_root)
    return cores if quota is None else max(1, min(cores, math.ceil(quota)))


def pin_to_one_core() -> None:
    """Restrict this process to its first allowed core (the edge profile)."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


# oneDNN's `ONEDNN_MAX_CPU_ISA` values below which it has no bf16 dot-product kernels.
_ONEDNN_ISAS_WITHOUT_BF16 = frozenset(
    {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
)


def native_bf16(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX-512 BF16 or AMX) for torch: there,
    bf16 autocast trains about twice as fast (measured on an AMD EPYC with avx512_bf16: a
    MiniLM fine-tuning step 0.40 s against 0.77–0.87 s in fp32); elsewhere it is emulated and
    far slower than fp32 (the same EPYC with oneDNN capped at AVX2: an epoch of 512
    sentences 148 s in bf16 against 9.5 s in fp32). `ONEDNN_MAX_CPU_ISA` below
    AVX512_CORE_BF16 caps the kernels torch's bf16 matmuls run, so it counts as no bf16."""
    cap = environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if cap in _ONEDNN_ISAS_WITHOUT_BF16:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & _cpuinfo()[1])


def threads_for(target: HardwareTarget) -> int:
    return 1 if target == "edge" else usable_cores()


def fingerprint(threads: int, device: str = "cpu") -> HardwareFingerprint:
    """The fingerprint of this machine as the current process sees it."""
    import onnxruntime

    model, flags = _cpuinfo()
    return HardwareFingerprint(
        cpu_model=model,
        cores=usable_cores(),
        isa=[flag for flag in _ISA_FLAGS if flag in flags],
        onnxruntime=onnxruntime.__version__,
        threads=threads,
        device=device,
    )


def same_machine(a: HardwareFingerprint, b: HardwareFingerprint) -> bool:
    """Whether `a` and `b` are the same chip, cores, runtime and device, whatever their session
    thread counts: the one field a profile of this machine measured elsewhere may differ in
    when `serve --workers N` gives each worker cores ÷ N threads (`server.core.profiles`)."""
    return a.model_dump(exclude={"threads"}) == b.model_dump(exclude={"threads"})
