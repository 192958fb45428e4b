"""A trace-driven simulator of the server, driven by the real router (torch-free).

`engine` replays calls on a modelled server (event loop, batchers, cores shared by
processor sharing) whose routing is `router.ModelRouter` and `router.policy.decide` on a
simulated clock; `server` holds the variants (from a repository's profiles) and the
machine's parameters; `workload` makes calls from trace windows as `make bench-router` does;
`ceiling` finds the hindsight-best fixed mix and a fluid upper bound; `stats` gives 95 %
intervals. `make bench-router-sim` (loadtest/bench_router_sim.py) runs it all.
"""
