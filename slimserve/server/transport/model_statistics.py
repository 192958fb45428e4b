"""ModelStatistics' answer: this server's per-variant counts, and the sum of several servers'.

`model_statistics` reads one registry. Under `--workers` each worker counts only the calls it
served, so the worker that receives ModelStatistics adds its siblings' answers to its own
(`merge_statistics`, asked through `process.peers`): every connection then sees the same
sums, as a single server's callers would. Counts and nanoseconds add; `last_inference` is
the latest; batch counts add per batch size; an entry one worker lacks is taken as the
others have it.

Versions are spelled as Triton does, as integers, unless the request named a variant:
perf_analyzer, asked for a model without `-x`, requests every version's entry and parses
each entry's version with `std::stoll`, so a variant's name there aborts it. It then reports
the highest-numbered version whose queue count rose in the window (and warns when several
did): for a routed model, the share of the traffic that variant served. ModelConfig's
`variants` parameter says which variant each number stands for (`core.versions`).
"""

from __future__ import annotations

from collections.abc import Iterable

from slimserve.protos import inference_pb2 as pb
from slimserve.server.core.registry import ModelRegistry
from slimserve.server.core.versions import version_numbers

_DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
_BATCH_DURATIONS = ("compute_input", "compute_infer", "compute_output")


def model_statistics(registry: ModelRegistry, name: str, asked: str) -> pb.ModelStatisticsResponse:
    """This server's statistics of model `name` ('' = every model), version `asked` ('' = every
    served variant, by its Triton number)."""
    hosted_models = [registry.get(name)] if name else list(registry.models.values())
    response = pb.ModelStatisticsResponse()
    duration = pb.StatisticDuration
    for hosted in hosted_models:
        if asked:  # as asked: Triton's clients look the version they asked for up
            versions = {hosted.variant(asked): asked}
        else:  # every served variant, by its Triton number (module docstring)
            numbers = version_numbers(hosted.entry)
            served = sorted(hosted.batchers, key=numbers.__getitem__)
            versions = {variant: str(numbers[variant]) for variant in served}
        for variant, version in versions.items():
            stats = hosted.stats[variant]
            executions = hosted.batchers[variant].executions
            response.model_stats.add(
                name=hosted.name,
                version=version,
                last_inference=stats.last_inference_ms,
                inference_count=stats.inference_count,
                execution_count=sum(executions.values()),
                inference_stats=pb.InferStatistics(
                    success=duration(count=stats.success_count, ns=stats.success_ns),
                    fail=duration(count=stats.fail_count, ns=stats.fail_ns),
                    queue=duration(count=stats.success_count, ns=stats.queue_ns),
                    compute_input=duration(count=stats.success_count, ns=stats.compute_input_ns),
                    compute_infer=duration(count=stats.success_count, ns=stats.compute_ns),
                    compute_output=duration(count=stats.success_count, ns=stats.compute_output_ns),
                ),
                batch_stats=[
                    pb.InferBatchStatistics(batch_size=size, compute_infer=duration(count=count))
                    for size, count in sorted(executions.items())
                ],
            )
    return response


def _add(total: pb.StatisticDuration, part: pb.StatisticDuration) -> None:
    total.count += part.count
    total.ns += part.ns


def merge_statistics(own: pb.ModelStatisticsResponse, others: Iterable[pb.ModelStatisticsResponse]) -> None:
    """Add `others`' entries into `own`, entry by (model, version), in place (module docstring)."""
    entries = {(entry.name, entry.version): entry for entry in own.model_stats}
    for other in others:
        for part in other.model_stats:
            total = entries.get((part.name, part.version))
            if total is None:
                total = entries[(part.name, part.version)] = own.model_stats.add()
                total.CopyFrom(part)
                continue
            total.last_inference = max(total.last_inference, part.last_inference)
            total.inference_count += part.inference_count
            total.execution_count += part.execution_count
            for field in _DURATIONS:
                _add(getattr(total.inference_stats, field), getattr(part.inference_stats, field))
            batches = {batch.batch_size: batch for batch in total.batch_stats}
            for batch in part.batch_stats:
                if batch.batch_size not in batches:
                    batches[batch.batch_size] = pb.InferBatchStatistics(batch_size=batch.batch_size)
                for field in _BATCH_DURATIONS:
                    _add(getattr(batches[batch.batch_size], field), getattr(batch, field))
            merged = [_copy(batches[size]) for size in sorted(batches)]  # before the clear empties them
            del total.batch_stats[:]
            total.batch_stats.extend(merged)


def _copy(batch: pb.InferBatchStatistics) -> pb.InferBatchStatistics:
    copy = pb.InferBatchStatistics()
    copy.CopyFrom(batch)
    return copy
