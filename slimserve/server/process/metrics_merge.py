"""One `/metrics` for several worker processes: each worker's exposition, merged at scrape time.

Every worker (`process.workers`) exports its own metrics on a loopback port, as a single
process does. The supervisor's endpoint fetches them all at each scrape and merges them the
way Prometheus' own aggregation would treat replicas:
- counters, histograms and summaries are summed sample by sample (same name, same labels),
  so `rate(slimserve_requests_total[1m])` is the whole server's rate; `_created` takes the
  earliest;
- gauges (queue depths, router state, CPU utilization) are per worker: each sample gains a
  `worker` label, since a sum of two routers' predictions means nothing.
`slimserve_worker_up{worker}` says which workers answered this scrape (0: its gauges are
missing until it answers again); the supervisor adds `slimserve_worker_restarting{worker}`
(1 while it tries to start a dead worker again) and
`slimserve_worker_restarts_total{worker,outcome}` (`served`: the restarted worker served;
`failed`: that try failed, and another follows after a pause).

The merged sums never fall (`CounterCarry`): Prometheus reads any fall of a counter as a
reset, so a sum that dropped for one scrape — a worker that missed it, or restarted and
counts from zero — made `rate()`, the SLO alerts and the HPA's p95 rule spike. A worker that
misses a scrape is summed with the values it last reported; a worker that restarted (its
metrics URL changed, or any of its counts fell) is summed with what it had counted before,
plus what it counts now. A worker whose exposition does not parse counts as not answering
this scrape: the other workers' metrics are still served.

prometheus-client's multiprocess mode was not used: it supports no custom collectors, and
the serving metrics read a snapshot the event loop publishes (`observe.live_state`).

Thread: `collect` runs in the exporter's HTTP threads (one per scrape, possibly several at
once: `CounterCarry` takes a lock); the supervisor's event loop replaces the endpoint mapping
whole when a worker restarts, and `collect` reads one reference to it.
"""

from __future__ import annotations

import logging
import threading
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from slimserve.server.process.worker_state import Supervision

log = logging.getLogger(__name__)
FETCH_TIMEOUT_S = 2.0  # a worker that does not answer in this long is reported down for this scrape
SUMMED = {"counter", "histogram", "summary"}

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]  # (sample name, sorted labels)


@dataclass
class _Family:
    documentation: str
    type: str
    unit: str
    values: dict[SeriesKey, float] = field(default_factory=dict)


def _parse(text: str) -> tuple[dict[str, _Family], dict[SeriesKey, float], dict[SeriesKey, str]]:
    """A worker's exposition: its families (gauges with their values), the samples of its
    summed families by series, and each of those series' family. Raises ValueError if it
    does not parse."""
    families: dict[str, _Family] = {}
    summed: dict[SeriesKey, float] = {}
    owners: dict[SeriesKey, str] = {}
    for family in text_string_to_metric_families(text):
        kept = families.setdefault(family.name, _Family(family.documentation, family.type, family.unit))
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            if family.type in SUMMED:
                summed[key] = sample.value
                owners[key] = family.name
            else:
                kept.values[key] = sample.value
    return families, summed, owners


def _is_created(key: SeriesKey) -> bool:
    return key[0].endswith("_created")


@dataclass
class _WorkerCounts:
    url: str
    last: dict[SeriesKey, float]  # the summed samples it last reported
    carried: dict[SeriesKey, float] = field(default_factory=dict)  # what it counted before its restarts


class CounterCarry:
    """Per worker, the summed samples it last reported and what it counted before it last
    restarted, so that the merged sums never fall (module docstring). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._workers: dict[int, _WorkerCounts] = {}
        self._families: dict[str, _Family] = {}  # every summed family seen: its metadata
        self._owners: dict[SeriesKey, str] = {}  # every summed series seen: its family

    def totals(
        self,
        answers: Mapping[int, tuple[str, dict[SeriesKey, float]]],
        families: Mapping[str, _Family],
        owners: Mapping[SeriesKey, str],
    ) -> dict[str, dict[SeriesKey, float]]:
        """The sums to report per family, given this scrape's answers (worker → (its URL,
        its summed samples)) and the summed families and series they named; workers known
        before and missing from `answers` count with their last values."""
        with self._lock:
            self._families.update({name: f for name, f in families.items() if f.type in SUMMED})
            self._owners.update(owners)
            for worker, (url, values) in answers.items():
                known = self._workers.get(worker)
                if known is None:
                    self._workers[worker] = _WorkerCounts(url, dict(values))
                    continue
                restarted = known.url != url or any(
                    value < known.last[key]
                    for key, value in values.items()
                    if key in known.last and not _is_created(key)
                )
                if restarted:
                    for key, value in known.last.items():
                        if not _is_created(key):
                            known.carried[key] = known.carried.get(key, 0.0) + value
                known.url, known.last = url, dict(values)
            totals: dict[str, dict[SeriesKey, float]] = {name: {} for name in self._families}
            for counts in self._workers.values():
                for key in counts.last.keys() | counts.carried.keys():
                    sums = totals[self._owners[key]]
                    if _is_created(key):
                        if key in counts.last:
                            sums[key] = min(sums.get(key, counts.last[key]), counts.last[key])
                        continue
                    sums[key] = sums.get(key, 0.0) + counts.last.get(key, 0.0) + counts.carried.get(key, 0.0)
            return totals

    def family(self, name: str) -> _Family:
        with self._lock:
            return self._families[name]


def merge(
    expositions: Mapping[int, str], carry: CounterCarry | None = None, urls: Mapping[int, str] | None = None
) -> list[Metric]:
    """The families of every worker's exposition text, merged (module docstring). With
    `carry`, the sums go through it: workers it knew that are missing here count with their
    last values. `urls` names each worker's endpoint, to tell a restart."""
    carry = carry or CounterCarry()
    families: dict[str, _Family] = {}
    owners: dict[SeriesKey, str] = {}
    gauges: dict[str, dict[SeriesKey, float]] = {}
    answers: dict[int, tuple[str, dict[SeriesKey, float]]] = {}
    for worker, text in sorted(expositions.items()):
        try:
            parsed, summed, owned = _parse(text)
        except Exception as exc:  # foreign input: one worker's bad exposition must not fail the whole /metrics
            log.warning("worker %d's metrics do not parse; counted as not answering: %s", worker, exc)
            continue
        answers[worker] = ((urls or {}).get(worker, ""), summed)
        owners.update(owned)
        for name, family in parsed.items():
            families.setdefault(name, _Family(family.documentation, family.type, family.unit))
            for (sample, labels), value in family.values.items():
                labelled = (sample, tuple(sorted({**dict(labels), "worker": str(worker)}.items())))
                gauges.setdefault(name, {})[labelled] = value
    merged: list[Metric] = []
    for name, sums in carry.totals(answers, families, owners).items():
        family = carry.family(name)
        metric = Metric(name, family.documentation, family.type, family.unit)
        metric.samples = [Sample(sample, dict(labels), value) for (sample, labels), value in sums.items()]
        merged.append(metric)
    for name, family in families.items():
        if family.type not in SUMMED:
            metric = Metric(name, family.documentation, family.type, family.unit)
            samples = gauges.get(name, {}).items()
            metric.samples = [Sample(sample, dict(labels), value) for (sample, labels), value in samples]
            merged.append(metric)
    return merged


class WorkerMetrics(Collector):
    """A collector that scrapes the workers' endpoints and yields their merged metrics."""

    def __init__(self, scrape_token: str) -> None:
        self.endpoints: Mapping[int, str] = MappingProxyType({})  # worker → its /metrics URL
        self.supervision = Supervision()  # replaced whole by the supervisor's loop
        self._carry = CounterCarry()
        self._headers = {"Authorization": f"Bearer {scrape_token}"}  # the workers' endpoints take it alone

    def collect(self) -> Iterator[Metric]:
        endpoints = self.endpoints  # one snapshot for the whole scrape
        texts: dict[int, str] = {}
        for worker, url in endpoints.items():
            try:
                request = urllib.request.Request(url, headers=self._headers)
                with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S) as response:
                    texts[worker] = response.read().decode()
            except OSError as exc:
                log.warning("worker %d did not answer its metrics scrape: %s", worker, exc)
        yield from merge(texts, self._carry, endpoints)
        supervision = self.supervision
        up = Metric("slimserve_worker_up", "whether each worker answered this scrape (1) or not (0)", "gauge")
        for worker in sorted({*endpoints, *supervision.states}):
            up.add_sample("slimserve_worker_up", {"worker": str(worker)}, 1.0 if worker in texts else 0.0)
        yield up
        restarting = Metric("slimserve_worker_restarting", "1 while the supervisor starts a dead worker again", "gauge")
        for worker, state in sorted(supervision.states.items()):
            restarting.add_sample("slimserve_worker_restarting", {"worker": str(worker)}, float(state == "restarting"))
        yield restarting
        restarts = Metric("slimserve_worker_restarts", "restarts of dead workers, by whether they served", "counter")
        for (worker, outcome), count in sorted(supervision.restarts.items()):
            restarts.add_sample("slimserve_worker_restarts_total", {"worker": str(worker), "outcome": outcome}, count)
        yield restarts
