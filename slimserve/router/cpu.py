"""The server's CPU account: how busy the process is, and what a request costs beyond its model.

All figures are in machine-milliseconds: CPU milliseconds over the cores this process runs
on (the usable cores, or a worker's share of them), so that 1,000 per second is a fully
busy machine, and a session call that keeps every core busy for w ms costs w (a profiled
service time is in these units).

A request costs its share of a session call (the profile says how much) plus everything
around it — decoding, the event loop, gRPC, encoding. That second part cannot be timed per
request, so it is derived: (CPU used − session work) / requests, over windows of at least
MIN_REQUESTS requests. It is large (0.7–2 ms per request on a 2-core Xeon, more than a
small model's compute) and it falls as load rises and batches and wake-ups amortise.

An overhead window closes after MIN_REQUESTS requests, or is dropped unused once it is
older than MAX_WINDOW_S: a trickle of requests over an idle hour would otherwise charge the
hour's background CPU (timers, scrapes) to a handful of requests.

Utilization is a running mean over time, not over samples: a sample weighs as much as the
SAMPLE_PERIOD_S periods it spans. The load monitor stops sampling while the server is idle
and samples once when a request arrives, so the gap's one sample (near-zero use) must count
for every period it covers, as an unbroken run of samples would have.

A worker of several (`--workers`) accounts against its share of the cores (1/N of them):
it sees only its own CPU time and requests, and its session calls run on its share (its
profile is measured with its thread count, `server.core.profiles`), so its utilization and
overhead are of that share, the units its profiled service times are in. Against the whole
machine each of N workers would plan for N times the cores it has, and the price would
engage only far past saturation (the simulator: 4 points below the best static variant with
4 workers, 20 at 3× load).

Thread: owned by the event loop — the load monitor samples it and the routers read it there;
other threads read the snapshot the app publishes.
"""

from __future__ import annotations

from slimserve.router.config import RouterConfig

TARGET_UTILIZATION = RouterConfig.cpu_target_utilization  # the share routed traffic may plan to use
WEIGHT = 0.3  # weight of one sample in the running means (of one SAMPLE_PERIOD_S for utilization)
SAMPLE_PERIOD_S = 0.25  # how often the load monitor samples the process's CPU time while requests arrive
MIN_REQUESTS = 20  # fewer requests in a window say too little about the overhead
MAX_WINDOW_S = 10.0  # an overhead window older than this with too few requests is dropped


class CpuAccount:
    """Running means of CPU utilization (0..1) and per-request overhead (machine-ms)."""

    def __init__(self, target: float = TARGET_UTILIZATION, share: float = 1.0) -> None:
        if not 0.0 < target <= 1.0:
            raise ValueError(f"CPU target utilization must be in (0, 1], got {target}")
        if not 0.0 < share <= 1.0:
            raise ValueError(f"a share of the machine must be in (0, 1], got {share}")
        self.target = target
        self.share = share  # the fraction of the machine's cores this process runs on
        self.utilization = 0.0
        self.overhead_ms = 0.0
        self.sampled = False  # whether a utilization sample has come in
        self.cores = 0.0  # the cores this process runs on (its share), known from the first sample
        self._requests = 0
        self._compute_ms = 0.0
        self._last: tuple[float, float] | None = None  # (cpu seconds, wall seconds) at the last sample
        self._window: tuple[float, float] | None = None  # where the overhead window started

    def machine_ms(self, core_ms: float) -> float | None:
        """CPU milliseconds over all threads as machine-ms; None before the first sample."""
        return core_ms / self.cores if self.cores else None

    def record_compute(self, machine_ms: float) -> None:
        """A session call finished; `machine_ms` is the CPU it used (measured, or by its profile)."""
        self._compute_ms += machine_ms

    def record_request(self) -> None:
        self._requests += 1

    def sample(self, cpu_s: float, wall_s: float, cores: int) -> None:
        """The process's cumulative CPU seconds at monotonic time `wall_s`, on a machine of
        `cores` usable cores (of which this process has its share)."""
        cores_here = self.cores = cores * self.share
        if self._last is None:
            self._last = self._window = (cpu_s, wall_s)
            return
        last_cpu, last_wall = self._last
        if wall_s <= last_wall:
            return
        used = (cpu_s - last_cpu) / ((wall_s - last_wall) * cores_here)
        weight = 1.0 - (1.0 - WEIGHT) ** max((wall_s - last_wall) / SAMPLE_PERIOD_S, 1.0)
        self.utilization += weight * (min(used, 1.0) - self.utilization)
        self.sampled = True
        self._last = (cpu_s, wall_s)
        assert self._window is not None
        if self._requests < MIN_REQUESTS:
            if wall_s - self._window[1] > MAX_WINDOW_S:  # a trickle: say nothing, start afresh
                self._window, self._requests, self._compute_ms = (cpu_s, wall_s), 0, 0.0
            return
        machine_ms = (cpu_s - self._window[0]) * 1e3 / cores_here
        overhead = max((machine_ms - self._compute_ms) / self._requests, 0.0)
        if self.overhead_ms == 0.0:  # the first window: nothing to average with yet
            self.overhead_ms = overhead
        else:
            self.overhead_ms += WEIGHT * (overhead - self.overhead_ms)
        self._window, self._requests, self._compute_ms = (cpu_s, wall_s), 0, 0.0
