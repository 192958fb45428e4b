"""Per-request variant routing: latency model, policies, explain (lands with the router issue)."""
