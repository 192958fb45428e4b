"""A real Prometheus scrapes a real server; every query of the Grafana dashboard must return data.

Prometheus is Debian's `prometheus` package, which `.ci/run` installs. Under `.ci/run`
(SLIMSERVE_REQUIRE_PROMETHEUS=1) a missing binary fails this test; a developer machine
without it skips it, saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from loadtest.messages import MINILM_INPUTS, triton_inputs
from loadtest.serving import RunningServer, free_port
from slimserve.protos import slimserve_pb2, slimserve_pb2_grpc
from slimserve.variants.data import load_digits_split, minilm_tokenizer

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "dashboards" / "slimserve.json"
SCRAPE_INTERVAL_S = 1
# What Grafana substitutes in the queries: every model and variant, and a rate window that
# spans several scrapes of this short test.
SUBSTITUTIONS = {"$model": ".+", "$variant": ".+", "$__rate_interval": "20s"}


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(panel["title"], target["expr"]) for panel in panels for target in panel["targets"]]


def _prometheus_binary() -> str:
    binary = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if binary:
        return binary
    if os.environ.get("SLIMSERVE_REQUIRE_PROMETHEUS") == "1":
        pytest.fail("the prometheus binary is missing; .ci/run installs Debian's prometheus package")
    pytest.skip("prometheus is not installed (apt-get install prometheus); .ci/run installs it and runs this test")


class Prometheus:
    """A Prometheus process scraping one target, with an HTTP API client."""

    def __init__(self, binary: str, target: str, workdir: Path) -> None:
        config = workdir / "prometheus.yml"
        config.write_text(
            f"global:\n  scrape_interval: {SCRAPE_INTERVAL_S}s\n  evaluation_interval: {SCRAPE_INTERVAL_S}s\n"
            f"scrape_configs:\n  - job_name: slimserve\n    static_configs:\n      - targets: ['{target}']\n"
        )
        self.url = f"http://127.0.0.1:{free_port()}"
        self._log = open(workdir / "prometheus.log", "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address={self.url.removeprefix('http://')}"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not start:\n{(workdir / 'prometheus.log').read_text()}")
            time.sleep(0.2)

    def query(self, expr: str) -> list[dict]:
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self._log.close()


@pytest.fixture(scope="module")
def prometheus_and_server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = _prometheus_binary()
    server = RunningServer(
        repository,
        tmp_path_factory.mktemp("observed"),
        env={"SLIMSERVE_SHADOW_FRACTION": "1", "SLIMSERVE_RPC_ALLOWANCE_MS": "0"},
    )
    assert server.metrics_url
    target = urllib.parse.urlparse(server.metrics_url).netloc
    prometheus = Prometheus(binary, target, tmp_path_factory.mktemp("prometheus"))
    try:
        drive_traffic(server.address, seconds=12.0)
        time.sleep(3 * SCRAPE_INTERVAL_S)  # let the last of it be scraped
        yield prometheus
    finally:
        prometheus.stop()
        assert server.stop() == 0


def drive_traffic(address: str, seconds: float) -> None:
    """Routed and pinned requests, some failures, feedback, both models, for `seconds`."""
    split = load_digits_split()[1]
    assert split.labels is not None
    tokens = minilm_tokenizer()(["Observability needs real traffic."] * 2, pad_to=16)
    management = slimserve_pb2_grpc.ManagementStub(grpc.insecure_channel(address))
    deadline = time.monotonic() + seconds
    sent = 0
    with triton.InferenceServerClient(address) as client:
        while time.monotonic() < deadline:
            images = split.inputs["images"][sent % 400 : sent % 400 + 2]
            tensor = triton.InferInput("images", list(images.shape), "FP32")
            tensor.set_data_from_numpy(images)
            variant = ["", "fp32", "int8", "pruned", "distilled"][sent % 5]
            answer = client.infer("digits", [tensor], model_version=variant, request_id=f"r{sent}",
                                  parameters={"slo_ms": 0.05 if sent % 7 == 0 else 50})  # fmt: skip
            labels = [int(x) for x in split.labels[sent % 400 : sent % 400 + 2]]
            ticket = answer.get_response().parameters["feedback_ticket"].string_param
            management.Feedback(slimserve_pb2.FeedbackRequest(model="digits", ticket=ticket, labels=labels))
            inputs = triton_inputs({name: tokens[name] for name in MINILM_INPUTS})
            client.infer("minilm", inputs, model_version=["", "int8"][sent % 2])
            if sent % 10 == 0:
                with pytest.raises(InferenceServerException):  # a bad routing hint: INVALID_ARGUMENT
                    client.infer("digits", [tensor], parameters={"policy": "cheapest"})
            sent += 1
            time.sleep(0.02)


def test_the_dashboard_has_the_panels_operators_need() -> None:
    titles = [title for title, _ in dashboard_queries()]
    for needed in ("Latency", "Throughput", "Error rate", "Batch size", "Queue depth", "SLO attainment",
                   "Routing shares", "live fidelity", "Cloud vs edge"):  # fmt: skip
        assert any(needed in title for title in titles), needed
    variables = [v["name"] for v in json.loads(DASHBOARD.read_text())["templating"]["list"]]
    assert variables == ["model", "variant"]


@pytest.mark.parametrize(("title", "expr"), dashboard_queries(), ids=[f"{t[:40]}-{i}" for i, (t, _) in
                                                                       enumerate(dashboard_queries())])  # fmt: skip
def test_every_dashboard_query_returns_series(prometheus_and_server: Prometheus, title: str, expr: str) -> None:
    for placeholder, value in SUBSTITUTIONS.items():
        expr = expr.replace(placeholder, value)
    result = prometheus_and_server.query(expr)
    assert result, f"panel '{title}': no series for {expr}"
    # A series of a variant without traffic in the window may be NaN; at least one is a number.
    numbers = [float(series["value"][1]) for series in result if series["value"][1] not in ("NaN", "+Inf", "-Inf")]
    assert numbers, f"panel '{title}': only NaN/Inf for {expr}"
    print(f"{title}: {len(result)} series, {len(numbers)} with a number  ←  {expr}")
