"""One `/metrics` for several worker processes: each worker's exposition, merged at scrape time.

Every worker (`process.workers`) exports its own metrics on a loopback port, as a single
process does. The supervisor's endpoint fetches them all at each scrape and merges them the
way Prometheus' own aggregation would treat replicas:
- counters, histograms and summaries are summed sample by sample (same name, same labels),
  so `rate(slimserve_requests_total[1m])` is the whole server's rate; `_created` takes the
  earliest;
- gauges (queue depths, router state, CPU utilization) are per worker: each sample gains a
  `worker` label, since a sum of two routers' predictions means nothing.
`slimserve_worker_up{worker}` says which workers answered this scrape (0: its numbers are
missing from the sums until it answers again).

prometheus-client's multiprocess mode was not used: it supports no custom collectors, and
the serving metrics read a snapshot the event loop publishes (`observe.live_state`).

Thread: `collect` runs in the exporter's HTTP thread; the supervisor's event loop replaces
the endpoint mapping whole when a worker restarts, and `collect` reads one reference to it.
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterator, Mapping
from types import MappingProxyType

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

log = logging.getLogger(__name__)
FETCH_TIMEOUT_S = 2.0  # a worker that does not answer in this long is reported down for this scrape
SUMMED = {"counter", "histogram", "summary"}


def merge(expositions: Mapping[int, str]) -> list[Metric]:
    """The families of every worker's exposition text, merged (module docstring)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for worker, text in sorted(expositions.items()):
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                values[family.name] = {}
            found = values[family.name]
            for sample in family.samples:
                if family.type in SUMMED:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    if key not in found:
                        found[key] = sample.value
                    elif sample.name.endswith("_created"):
                        found[key] = min(found[key], sample.value)
                    else:
                        found[key] += sample.value
                else:
                    labelled = (sample.name, tuple(sorted({**sample.labels, "worker": str(worker)}.items())))
                    found[labelled] = sample.value
    for name, merged in families.items():
        merged.samples = [Sample(sample, dict(labels), value) for (sample, labels), value in values[name].items()]
    return list(families.values())


class WorkerMetrics(Collector):
    """A collector that scrapes the workers' endpoints and yields their merged metrics."""

    def __init__(self) -> None:
        self.endpoints: Mapping[int, str] = MappingProxyType({})  # worker → its /metrics URL

    def collect(self) -> Iterator[Metric]:
        endpoints = self.endpoints  # one snapshot for the whole scrape
        texts: dict[int, str] = {}
        for worker, url in endpoints.items():
            try:
                with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:
                    texts[worker] = response.read().decode()
            except OSError as exc:
                log.warning("worker %d did not answer its metrics scrape: %s", worker, exc)
        yield from merge(texts)
        up = Metric("slimserve_worker_up", "whether each worker answered this scrape (1) or not (0)", "gauge")
        for worker in endpoints:
            up.add_sample("slimserve_worker_up", {"worker": str(worker)}, 1.0 if worker in texts else 0.0)
        yield up
