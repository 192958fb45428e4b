"""A stepped load for Locust: `locust -f loadtest/stepped.py --headless --host HOST:8001`.

The users of `loadtest/locustfile.py` (the mixed blend) and a `LoadTestShape` that raises
the number of users in steps and holds each step, so that Locust's charts show how latency
and the router's variant shares change with load. Steps are set with environment variables
(`STEP_USERS`, default 10; `STEP_SECONDS`, 20; `STEPS`, 6).
"""

from __future__ import annotations

import os

from locust import LoadTestShape

from loadtest.locustfile import MixedUser

__all__ = ["MixedUser", "SteppedLoad"]


class SteppedLoad(LoadTestShape):
    """STEPS steps of STEP_USERS more users each, STEP_SECONDS apiece, then stop."""

    step_users = int(os.environ.get("STEP_USERS", "10"))
    step_seconds = float(os.environ.get("STEP_SECONDS", "20"))
    steps = int(os.environ.get("STEPS", "6"))

    def tick(self) -> tuple[int, float] | None:
        step = int(self.get_run_time() // self.step_seconds)
        if step >= self.steps:
            return None
        users = self.step_users * (step + 1)
        return users, float(self.step_users)  # spawn a step's users within about a second
