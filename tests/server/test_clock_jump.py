"""A real server whose clock jumps an hour, a day and a week (libfaketime) keeps answering.

Before the fix, a model that had routed requests and then saw no traffic for ~34 minutes
failed every call with INTERNAL: the ratio histogram's weight 2 ** (gap / 2 s) overflowed.
Here the server's clocks (wall and monotonic) are shifted by libfaketime's timestamp file,
re-read on every call (FAKETIME_NO_CACHE), so the gap is real to the server. CI installs
Debian's `faketime` (.ci/run) and requires it; elsewhere the test is skipped without it.
"""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton

from loadtest.serving import RunningServer
from slimserve.variants.data import load_digits_split
from tests.server.scrape import scrape, value

LIBRARIES = glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1")
REQUIRED = os.environ.get("SLIMSERVE_REQUIRE_FAKETIME") == "1"
CALLS = 60  # more than the ratio histogram needs to say something (MIN_EFFECTIVE_SAMPLES)


def _routed_calls(address: str) -> set[str]:
    images = load_digits_split()[1].inputs["images"][:1]
    variants = set()
    with triton.InferenceServerClient(address) as client:  # a new connection after every jump
        for _ in range(CALLS):
            tensor = triton.InferInput("images", list(images.shape), "FP32")
            tensor.set_data_from_numpy(images)
            result = client.infer("digits", [tensor], parameters={"slo_ms": 1000.0})
            assert np.isfinite(result.as_numpy("logits")).all()
            variants.add(result.get_response().parameters["variant"].string_param)
    return variants


@pytest.mark.skipif(not LIBRARIES and not REQUIRED, reason="libfaketime not installed (apt-get install faketime)")
def test_a_server_whose_clock_jumps_by_hours_and_days_keeps_answering(repository: Path, tmp_path: Path) -> None:
    assert LIBRARIES, "SLIMSERVE_REQUIRE_FAKETIME=1 but libfaketime is not installed"
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    env = {"LD_PRELOAD": LIBRARIES[0], "FAKETIME_TIMESTAMP_FILE": str(offset), "FAKETIME_NO_CACHE": "1",
           "SLIMSERVE_SHADOW_FRACTION": "0"}  # fmt: skip
    server = RunningServer(repository, tmp_path, env=env)
    try:
        assert _routed_calls(server.address)  # the histogram now has an origin and recent weight
        for jump_s in (3600, 86_400, 7 * 86_400):
            offset.write_text(f"+{jump_s}\n")
            time.sleep(0.5)  # a few publish periods for /metrics
            assert _routed_calls(server.address), f"no answers after a {jump_s}-s jump"
            assert server.metrics_url is not None
            samples = scrape(server.metrics_url)
            assert (
                value(samples, "slimserve_requests", "slimserve_requests_total", model="digits", code="INTERNAL") == 0
            )
            assert value(samples, "slimserve_model_ready", model="digits") == 1
    finally:
        assert server.stop() == 0, server.log_path.read_text()[-3000:]
