"""The container image, built and run for real (`make test-image`).

`make test-image` builds the image from the Dockerfile (`make image`) and runs these against
it: the HEALTHCHECK, answers equal to in-process ONNX Runtime, a runtime without torch as uid
10001, `docker stop` under load, the Deployment's TLS secret mounted the way the kubelet
mounts it, a mounted user repository, and compose's Prometheus scraping the container. They
need a Docker engine and take minutes, so `make test` skips them (tests/image/conftest.py).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from loadtest.messages import MINILM_INPUTS, triton_inputs
from loadtest.serving import free_port, wait_until
from slimserve.repository.sessions import make_session
from slimserve.variants.data import load_digits_split, minilm_tokenizer
from tests.image.docker import Container, docker, docker_missing
from tests.server.pki import make_pki
from tests.server.test_prometheus import SUBSTITUTIONS, dashboard_queries, drive_traffic

ROOT = Path(__file__).parents[2]
DEPLOYMENT = ROOT / "deploy" / "k8s" / "deployment.yaml"
IMAGE = os.environ.get("SLIMSERVE_IMAGE", "slimserve:0.1.0")
SERVING_TIMEOUT_S = 300  # the image's repository is built; start-up loads and warms every variant
HEALTHY_TIMEOUT_S = SERVING_TIMEOUT_S + 60  # the first HEALTHCHECK runs one interval (15 s) after start
STOP_GRACE_S = 30
DRAIN_GRACE_S = 20  # SLIMSERVE_SHUTDOWN_GRACE_S in compose and the Deployment
CALLERS = 8
FSGROUP_ABSENT = "the Deployment sets no fsGroup"


@pytest.fixture(scope="module")
def image() -> str:
    missing = docker_missing()
    if missing:
        pytest.skip(f"no container can run here: {missing}")
    if docker("image", "inspect", IMAGE, check=False).returncode != 0:
        pytest.skip(f"image {IMAGE} is not built: `make test-image` builds it first")
    return IMAGE


def _serving_status(address: str) -> str:
    try:
        with grpc.insecure_channel(address) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))
    except grpc.RpcError as exc:
        return exc.code().name  # type: ignore[attr-defined]


def _wait_serving(container: Container, address: str) -> float:
    """Seconds from now until `address` answers SERVING; fails with the container's log."""
    started = time.monotonic()

    def serving() -> bool:
        if not container.state()["Running"]:
            raise AssertionError(f"the container stopped:\n{container.logs()[-3000:]}")
        return _serving_status(address) == "SERVING"

    try:
        wait_until(serving, SERVING_TIMEOUT_S, "SERVING", interval_s=0.2)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{container.logs()[-3000:]}") from exc
    return time.monotonic() - started


def _wait_healthy(container: Container) -> None:
    wait_until(lambda: container.health() != "starting", HEALTHY_TIMEOUT_S, "the HEALTHCHECK's verdict", 1.0)
    assert container.health() == "healthy", (container.health_log(), container.logs()[-3000:])


@pytest.fixture(scope="module")
def serving(image: str) -> Iterator[Container]:
    """The image as it ships: default command, default workers."""
    container = Container(image)
    try:
        seconds = _wait_serving(container, container.address)
        print(f"\n{image}: SERVING {seconds:.1f} s after `docker run` returned")
        yield container
    finally:
        container.remove()


@pytest.fixture(scope="module")
def shipped_repository(serving: Container, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's own model repository, copied out."""
    return serving.copy_out("/opt/model_repository", tmp_path_factory.mktemp("shipped") / "repository")


def _digits_input(rows: int) -> triton.InferInput:
    (tensor,) = triton_inputs({"images": load_digits_split()[1].inputs["images"][:rows]})
    return tensor


def test_the_health_check_turns_healthy(serving: Container) -> None:
    _wait_healthy(serving)
    log = serving.health_log()
    print("health check history:", [(entry["ExitCode"], entry["Output"].strip()) for entry in log])
    assert log[-1]["ExitCode"] == 0 and "SERVING" in log[-1]["Output"]


def test_the_runtime_has_no_torch_and_runs_as_uid_10001(serving: Container, image: str) -> None:
    assert serving.exec("id", "-u").strip() == "10001"
    assert docker("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip() == "10001"
    probe = "import importlib.util; print(importlib.util.find_spec('torch') is None)"
    assert serving.exec("python", "-c", probe).strip() == "True"
    layers = docker("history", "--format", "{{.Size}}\t{{.CreatedBy}}", image).stdout
    size = docker("image", "inspect", "--format", "{{.Size}}", image).stdout.strip()
    print(f"\n{image}: {int(size) / 2**20:.0f} MiB\n{layers}")


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_digits_answers_equal_onnx_runtime_in_process(
    serving: Container, shipped_repository: Path, variant: str
) -> None:
    images = _digits_input(8)
    with triton.InferenceServerClient(serving.address) as client:
        result = client.infer("digits", [images], model_version=variant)
    onnx = shipped_repository / "digits" / variant / "model.onnx"
    expected = make_session(str(onnx), 1).run(None, {"images": load_digits_split()[1].inputs["images"][:8]})[0]
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-4, atol=1e-4)


def test_minilm_answers_equal_onnx_runtime_in_process(serving: Container, shipped_repository: Path) -> None:
    tokens = minilm_tokenizer()(["A container must answer what the library answers."] * 2, pad_to=16)
    inputs = triton_inputs({name: tokens[name] for name in MINILM_INPUTS})
    with triton.InferenceServerClient(serving.address) as client:
        result = client.infer("minilm", inputs, model_version="fp32")
    onnx = shipped_repository / "minilm" / "fp32" / "model.onnx"
    session = make_session(str(onnx), 1)
    feed = {i.name: tokens[i.name] for i in session.get_inputs()}
    expected = session.run(None, feed)[0]
    np.testing.assert_allclose(result.as_numpy(session.get_outputs()[0].name), expected, rtol=1e-4, atol=1e-4)


@dataclass(frozen=True)
class Call:
    started_s: float
    ended_s: float
    code: str


def _call_until(address: str, stop: threading.Event, calls: list[Call]) -> None:
    """Call digits back to back until `stop`, recording each call's span and outcome."""
    with triton.InferenceServerClient(address) as client:
        while not stop.is_set():
            started = time.monotonic()
            try:
                client.infer("digits", [_digits_input(32)], client_timeout=30)
                code = "OK"
            except InferenceServerException as exc:
                code = str(exc.status()).removeprefix("StatusCode.")
                if code == "UNAVAILABLE":
                    time.sleep(0.05)  # the server is going: what a client with retries would do
            calls.append(Call(started, time.monotonic(), code))


def test_docker_stop_drains_calls_in_flight(image: str) -> None:
    container = Container(image, env={"SLIMSERVE_SHUTDOWN_GRACE_S": str(DRAIN_GRACE_S)})
    try:
        _wait_serving(container, container.address)
        stop = threading.Event()
        calls: list[list[Call]] = [[] for _ in range(CALLERS)]
        callers = [threading.Thread(target=_call_until, args=(container.address, stop, c)) for c in calls]
        for caller in callers:
            caller.start()
        wait_until(lambda: sum(len(c) for c in calls) >= 200, 60, "200 answered calls before the stop")
        stop_at = time.monotonic()
        exit_code = container.stop(STOP_GRACE_S)
        stop_s = time.monotonic() - stop_at
        time.sleep(1.0)  # callers see the port closed
        stop.set()
        for caller in callers:
            caller.join(timeout=60)
        everything = [call for c in calls for call in c]
        codes = Counter(call.code for call in everything)
        in_flight = [call for call in everything if call.started_s < stop_at < call.ended_s]
        answered = sum(call.code == "OK" for call in in_flight)
        print(f"\ndocker stop under {CALLERS} callers: exit {exit_code} after {stop_s:.1f} s; codes {dict(codes)}; "
              f"in flight at the stop {len(in_flight)}, answered {answered}")  # fmt: skip
        assert exit_code == 0, container.logs()[-3000:]
        assert stop_s < STOP_GRACE_S, "the engine had to SIGKILL it"
        assert set(codes) <= {"OK", "UNAVAILABLE"}, codes  # refused while going, never failed or lost
        assert answered >= 1, in_flight  # what was in flight when SIGTERM came was answered
        assert not [call for call in in_flight if call.code != "OK" and call.ended_s - stop_at > 1.0], in_flight
    finally:
        container.remove()


def _deployment_pod() -> dict:
    documents = [d for d in yaml.safe_load_all(DEPLOYMENT.read_text()) if d and d.get("kind") == "Deployment"]
    return dict(documents[0]["spec"]["template"]["spec"])


def _mount_like_the_kubelet(files: dict[str, Path], folder: Path, group: int, mode: int) -> Path:
    """A secret volume as the kubelet writes it: the files in a timestamped folder, `..data`
    linking to it, each name a link through `..data`; owned by root, group `group` (the pod's
    fsGroup, or root without one), mode `mode` (the volume's defaultMode)."""
    payload = folder / "..2026_12_04_00_00_00.000000000"
    payload.mkdir(parents=True)
    for name, source in files.items():
        shutil.copyfile(source, payload / name)
        os.chown(payload / name, 0, group)
        os.chmod(payload / name, mode)
        (folder / name).symlink_to(Path("..data") / name)
    (folder / "..data").symlink_to(payload.name)
    for path in (folder, payload):
        os.chown(path, 0, group)
        os.chmod(path, 0o755)
    return folder


def _run_as_the_deployment(image: str, tls: Path, groups: list[int]) -> tuple[Container, int]:
    """The Deployment's pod as `docker run`: its user, env, args and read-only root; the
    kubelet's fsGroup becomes a supplementary group, as it does in a pod."""
    pod = _deployment_pod()
    spec = pod["containers"][0]
    env = {item["name"]: str(item["value"]) for item in spec["env"] if "value" in item}
    env.update({item["name"]: secrets.token_hex(16) for item in spec["env"] if "valueFrom" in item})
    health_port = free_port()  # not the manifest's 8003: containers share the host's network here
    env["SLIMSERVE_HEALTH_PORT"] = str(health_port)
    mount = next(m for m in spec["volumeMounts"] if m["name"] == "tls")["mountPath"]
    run_args = ["--user", str(pod["securityContext"]["runAsUser"]), "--read-only", "--tmpfs", "/tmp",
                "-v", f"{tls}:{mount}:ro", *[arg for g in groups for arg in ("--group-add", str(g))]]  # fmt: skip
    return Container(image, env=env, run_args=run_args, command=spec["args"]), health_port


def test_the_deployment_reads_its_tls_secret_as_the_kubelet_mounts_it(image: str, tmp_path: Path) -> None:
    pod = _deployment_pod()
    fs_group = pod["securityContext"].get("fsGroup")
    assert fs_group is not None, f"{FSGROUP_ABSENT}: uid 10001 cannot read a secret the kubelet mounts root-owned"
    volume = next(v for v in pod["volumes"] if v["name"] == "tls")
    pki = make_pki(tmp_path / "pki")
    tls = _mount_like_the_kubelet({"tls.crt": pki.server_cert, "tls.key": pki.server_key}, tmp_path / "tls",
                                  group=fs_group, mode=volume["secret"]["defaultMode"])  # fmt: skip
    container, health_port = _run_as_the_deployment(image, tls, groups=[fs_group])
    try:
        _wait_serving(container, f"127.0.0.1:{health_port}")
        _wait_healthy(container)  # the image's HEALTHCHECK finds the plaintext health port by itself
        env = docker("inspect", "--format", "{{json .Config.Env}}", container.name).stdout
        token = next(e.split("=", 1)[1] for e in json.loads(env) if e.startswith("SLIMSERVE_INFERENCE_TOKEN="))
        with triton.InferenceServerClient(container.address, ssl=True, root_certificates=str(pki.ca)) as client:
            result = client.infer("digits", [_digits_input(2)], headers={"authorization": f"Bearer {token}"})
        assert result.as_numpy("logits").shape == (2, 10)
    finally:
        container.remove()


def test_without_the_fsgroup_the_key_is_refused_clearly(image: str, tmp_path: Path) -> None:
    """What the Deployment did before it set fsGroup (audit finding H3): exit 2, saying why."""
    pki = make_pki(tmp_path / "pki")
    tls = _mount_like_the_kubelet({"tls.crt": pki.server_cert, "tls.key": pki.server_key}, tmp_path / "tls",
                                  group=0, mode=0o440)  # fmt: skip
    container, _ = _run_as_the_deployment(image, tls, groups=[])
    try:
        assert container.wait_exit(timeout_s=120) == 2
        assert "Permission denied" in container.logs() and "tls.key" in container.logs(), container.logs()[-2000:]
    finally:
        container.remove()


def test_a_mounted_user_repository_is_served(image: str, shipped_repository: Path, tmp_path: Path) -> None:
    repository = tmp_path / "user-repository"
    shutil.copytree(shipped_repository / "digits", repository / "handwriting")
    config = repository / "handwriting" / "model.yaml"
    config.write_text(config.read_text().replace("name: digits", "name: handwriting", 1))
    subprocess.run(["chmod", "-R", "a+rX", str(repository)], check=True)
    container = Container(image, run_args=["-v", f"{repository}:/opt/model_repository:ro"])
    try:
        _wait_serving(container, container.address)
        with triton.InferenceServerClient(container.address) as client:
            served = {entry["name"] for entry in client.get_model_repository_index(as_json=True)["models"]}
            result = client.infer("handwriting", [_digits_input(3)])
        assert served == {"handwriting"}
        assert result.as_numpy("logits").shape == (3, 10)
    finally:
        container.remove()


COMPOSE_FILES = [  # the shipped compose file, with the local images (no registry here)
    "-f",
    str(ROOT / "deploy" / "compose.yaml"),
    "-f",
    str(ROOT / "deploy" / "image" / "compose.local.yaml"),
]
PROMETHEUS_URL = "http://127.0.0.1:9090"


def _compose() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    pytest.skip("neither `docker compose` nor docker-compose is installed (apt-get install docker-compose)")


def _prometheus_query(expr: str) -> list[dict]:
    url = f"{PROMETHEUS_URL}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def test_compose_prometheus_scrapes_the_container_and_the_dashboard_has_data(image: str) -> None:
    compose = [*_compose(), "-p", f"slimserve-test-{secrets.token_hex(4)}", *COMPOSE_FILES]
    environment = {**os.environ, "IMAGE": image}
    try:
        # Built by name: `up --build` would also rebuild slimserve, which `make image` built.
        for step in (["build", "prometheus"], ["up", "-d", "prometheus"]):
            done = subprocess.run([*compose, *step], env=environment, capture_output=True, text=True, timeout=900)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        wait_until(lambda: _serving_status("127.0.0.1:8001") == "SERVING", SERVING_TIMEOUT_S, "compose's slimserve")
        drive_traffic("127.0.0.1:8001", seconds=40.0)
        targets = json.loads(urllib.request.urlopen(f"{PROMETHEUS_URL}/api/v1/targets", timeout=10).read())
        health = [t["health"] for t in targets["data"]["activeTargets"]]
        print(f"\nPrometheus targets: {health}")
        assert health == ["up"], targets
        empty = []
        for title, expr in dashboard_queries():
            for placeholder, value in SUBSTITUTIONS.items():
                expr = expr.replace(placeholder, value)
            if not _prometheus_query(expr):
                empty.append(title)
        print(f"dashboard queries with data: {len(dashboard_queries()) - len(empty)} of {len(dashboard_queries())}")
        assert not empty, empty
    finally:
        subprocess.run([*compose, "down", "-v"], env=environment, capture_output=True, timeout=300)
