"""slimserve's Prometheus metrics, on a registry the app creates and passes in.

Every series carries `model` and `variant` (and `device` where compute happens); label
values come from the repository, never from the caller (an unknown model is counted as
"unknown"), so cardinality stays bounded. Durations are histograms in seconds, so that
latency aggregates across replicas. Things that are cheap to read and costly to keep up
to date per request (queue depth, router state) are read at scrape time by a collector —
from the `LiveState` the event loop last published, never from the live objects, since the
scrape runs in the HTTP server's thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from slimserve.repository.format import ModelEntry
from slimserve.server.observe.live_state import LiveState

UNKNOWN = "unknown"
# 0.25 ms … 10 s: digits answers in well under a millisecond, minilm batches take tens.
LATENCY_BUCKETS_S = (0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
MV = ("model", "variant")
SHADOW_SKIP_REASONS = ("shadow_running", "cpu_busy", "no_spare_capacity")


class VariantSeries:
    """The per-request series of one (model, variant), resolved once.

    `labels(...)` costs a lock and a dict lookup per call; resolving the children up front
    keeps the request path to a few observe()/inc() calls (measured by bench-observability).
    """

    def __init__(self, metrics: ServingMetrics, model: str, variant: str, device: str) -> None:
        self.requests_ok = metrics.requests.labels(model, variant, "OK")
        self.request_seconds = metrics.request_seconds.labels(model, variant)
        self.queue_seconds = metrics.queue_seconds.labels(model, variant)
        self.compute_seconds = metrics.compute_seconds.labels(model, variant, device)
        self.batch_size = metrics.batch_size.labels(model, variant)
        self.slo_met = metrics.slo.labels(model, variant, "met")
        self.slo_missed = metrics.slo.labels(model, variant, "missed")
        self._routing = metrics.routing
        self._labels = (model, variant)
        self._reasons: dict[str, Counter] = {}

    def routed(self, reason: str) -> Counter:
        """The routing-decision counter for `reason` (resolved once per reason)."""
        child = self._reasons.get(reason)
        if child is None:
            child = self._reasons[reason] = self._routing.labels(*self._labels, reason)
        return child


class ServingMetrics:
    """Request, batching, SLO, routing, fidelity and feedback metrics, plus static facts."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._series: dict[tuple[str, str], VariantSeries] = {}
        self.requests = Counter(
            "slimserve_requests", "Inference requests by outcome (gRPC status code name)",
            [*MV, "code"], registry=registry,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "slimserve_request_duration_seconds", "Time from the call reaching its handler to its answer",
            MV, buckets=LATENCY_BUCKETS_S, registry=registry,
        )  # fmt: skip
        self.queue_seconds = Histogram(
            "slimserve_queue_duration_seconds", "Time waiting in the variant's queue (and for a worker)",
            MV, buckets=LATENCY_BUCKETS_S, registry=registry,
        )  # fmt: skip
        self.compute_seconds = Histogram(
            "slimserve_compute_duration_seconds", "Session call time, once per batch (session call)",
            [*MV, "device"], buckets=LATENCY_BUCKETS_S, registry=registry,
        )  # fmt: skip
        self.batch_size = Histogram(
            "slimserve_batch_size", "Rows per session call (dynamic batching)",
            MV, buckets=BATCH_BUCKETS, registry=registry,
        )  # fmt: skip
        self.slo = Counter(
            "slimserve_slo_requests", "Answered requests by whether they met their latency SLO (server side)",
            [*MV, "outcome"], registry=registry,
        )  # fmt: skip
        self.routing = Counter(
            "slimserve_routing_decisions", "Variant choices by reason (pinned = the caller named it)",
            [*MV, "reason"], registry=registry,
        )  # fmt: skip
        self.shadow_comparisons = Counter(
            "slimserve_shadow_comparisons", "Requests also run on the reference variant in the background", MV,
            registry=registry,
        )  # fmt: skip
        self.shadow_agreement = Counter(
            "slimserve_shadow_agreement",
            "Sum of agreement with the reference (top-1 match or cosine, per request); divide by comparisons",
            MV, registry=registry,
        )  # fmt: skip
        self.shadow_skipped = Counter(
            "slimserve_shadow_skipped", "Sampled requests not shadowed, by reason", ["model", "reason"],
            registry=registry,
        )  # fmt: skip
        self.feedback = Counter(
            "slimserve_feedback", "True labels reported through Feedback, by whether the answer was right",
            [*MV, "outcome"], registry=registry,
        )  # fmt: skip
        self._quality = Gauge("slimserve_variant_quality", "Offline quality on the held-out set", [*MV, "metric"],
                              registry=registry)  # fmt: skip
        self._size = Gauge("slimserve_variant_size_bytes", "ONNX file size", MV, registry=registry)
        self._params = Gauge("slimserve_variant_parameters", "Parameter count", MV, registry=registry)
        self._alpha = Gauge(
            "slimserve_variant_compression_rate", "α = a/a* against the reference, in bytes", MV, registry=registry
        )
        self._speedup = Gauge(
            "slimserve_variant_speedup", "δ = s/s* at batch 1 against the reference, per hardware profile",
            [*MV, "hardware"], registry=registry,
        )  # fmt: skip
        self._latency = Gauge(
            "slimserve_variant_profile_latency_seconds", "Profiled latency per hardware profile and batch size",
            [*MV, "hardware", "batch_size", "quantile"], registry=registry,
        )  # fmt: skip

    def describe_repository(self, models: dict[str, ModelEntry]) -> None:
        """Static facts of every variant, set once at start-up; counters start at 0.

        Starting every counter of a known label set at 0 means a rate() over it has a series
        (of zeros) from the first scrape instead of none until the first event.
        """
        for name, entry in models.items():
            for reason in SHADOW_SKIP_REASONS:
                self.shadow_skipped.labels(name, reason)
            for variant, loaded in entry.variants.items():
                self._series[name, variant] = VariantSeries(self, name, variant, loaded.manifest.device)
                if variant != entry.config.reference_variant:
                    self.shadow_comparisons.labels(name, variant)
                    self.shadow_agreement.labels(name, variant)
                if entry.config.task == "classifier":
                    for outcome in ("correct", "incorrect"):
                        self.feedback.labels(name, variant, outcome)
                manifest = loaded.manifest
                m = manifest.measurements
                for metric, value in m.quality.items():
                    self._quality.labels(name, variant, metric).set(value)
                self._size.labels(name, variant).set(m.size_bytes)
                self._params.labels(name, variant).set(m.params)
                self._alpha.labels(name, variant).set(manifest.seed_formulas.alpha_bytes)
                for profile in manifest.profiles.values():
                    if 1 in profile.speedup:
                        self._speedup.labels(name, variant, profile.label).set(profile.speedup[1])
                    for batch, stats in profile.latency.items():
                        self._latency.labels(name, variant, profile.label, str(batch), "0.5").set(stats.p50_ms / 1e3)
                        self._latency.labels(name, variant, profile.label, str(batch), "0.95").set(stats.p95_ms / 1e3)

    def series(self, model: str, variant: str) -> VariantSeries:
        """The resolved per-request series of a variant of the repository."""
        return self._series[model, variant]

    def watch(self, live: Callable[[], LiveState | None]) -> None:
        """Export the last published queue depths, router state and load at every scrape."""
        self.registry.register(_LiveStateCollector(live))


class _LiveStateCollector(Collector):
    """Queue depths and router state from the last published `LiveState` (any thread)."""

    def __init__(self, live: Callable[[], LiveState | None]) -> None:
        self._live = live

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self._live()  # one reference, read once: a consistent view
        if state is None:  # not published yet (start-up)
            return
        depth = GaugeMetricFamily("slimserve_queue_depth", "Requests waiting in the variant's queue", labels=MV)
        in_flight = GaugeMetricFamily(
            "slimserve_inflight_requests", "Requests routed to the variant and not answered yet", labels=MV
        )
        predicted = GaugeMetricFamily(
            "slimserve_router_predicted_latency_seconds",
            "The router's current prediction for a one-row request", labels=MV,
        )  # fmt: skip
        stretch = GaugeMetricFamily(
            "slimserve_router_stretch", "90th percentile of observed / modelled latency", labels=["model"]
        )
        arrival = GaugeMetricFamily("slimserve_arrival_rate", "Requests/s arriving (last seconds)", labels=["model"])
        capacity = GaugeMetricFamily(
            "slimserve_mix_capacity_rps", "Requests/s the current variant mix can serve", labels=["model"]
        )
        declared = GaugeMetricFamily(
            "slimserve_throughput_slo_rps", "Declared throughput SLO (model.yaml)", labels=["model"]
        )
        sustained = GaugeMetricFamily(
            "slimserve_throughput_slo_sustained", "1 when the declared throughput SLO is met", labels=["model"]
        )
        price = GaugeMetricFamily(
            "slimserve_router_cpu_price",
            "Quality one machine-ms per row costs now: the arrival rates' price or the backlog's (queues, work "
            "in flight and the event loop's lag, over the traffic's SLO squared), the higher; about 0 while the "
            "CPU has room and nothing is queued (an idle loop's timer jitter prices a trace); at a split price, "
            "the price at the breakpoint (a share of the calls is priced just below it)",
            labels=["model"],
        )  # fmt: skip
        ready = GaugeMetricFamily(
            "slimserve_model_ready", "1 while every variant of the model can serve (a failed batcher: 0)",
            labels=["model"],
        )  # fmt: skip
        for name, model in state.models.items():
            price.add_metric([name], model.price)
            ready.add_metric([name], 1.0 if model.ready else 0.0)
            for variant, live in model.variants.items():
                depth.add_metric([name, variant], live.queue_depth)
                in_flight.add_metric([name, variant], live.in_flight)
                predicted.add_metric([name, variant], live.predicted_s)
            status = model.throughput
            stretch.add_metric([name], model.stretch)
            arrival.add_metric([name], status.arrival_rps)
            capacity.add_metric([name], status.mix_capacity_rps)
            sustained.add_metric([name], 1.0 if status.sustained else 0.0)
            if status.declared_rps is not None:
                declared.add_metric([name], status.declared_rps)
        cpu = GaugeMetricFamily(
            "slimserve_cpu_utilization", "Process CPU time / (wall time × its cores: usable ones or a worker's share)"
        )
        cpu.add_metric([], state.cpu_utilization)
        lag = GaugeMetricFamily("slimserve_event_loop_lag_seconds", "How late the event loop runs its timers")
        lag.add_metric([], state.loop_lag_s)
        target = GaugeMetricFamily("slimserve_cpu_target", "CPU utilization routed traffic may plan to use")
        target.add_metric([], state.cpu_target)
        overhead = GaugeMetricFamily(
            "slimserve_cpu_overhead_seconds", "CPU per request beyond its session call (machine-seconds)"
        )
        overhead.add_metric([], state.cpu_overhead_s)
        yield from (depth, in_flight, predicted, stretch, arrival, capacity, declared, sustained, price, ready)
        yield from (cpu, target, overhead, lag)
