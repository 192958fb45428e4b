"""Locust users (locustfile, stepped shape) and the benchmark drivers (bench_*), which start real servers."""
