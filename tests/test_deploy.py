"""The container and deployment files: linted, schema-checked, and consistent with each other.

Docker cannot build here and there is no cluster, so this checks what can be checked
offline: hadolint on the Dockerfile, the Kubernetes manifests against the API schemas
(`kubernetes-validate`), Prometheus's config with `promtool`, and that names, ports and
labels agree across the Dockerfile, compose, Kubernetes, Prometheus and Grafana files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from slimserve.server.process.settings import Settings

ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)


def _k8s(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()) if doc]


def test_dockerfile_passes_hadolint() -> None:
    result = _run(str(BIN / "hadolint"), "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_non_root_with_a_grpc_health_check_and_exec_form_entrypoint() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("FROM ") == 2 and "USER 10001" in text and "EXPOSE 8001 8002" in text
    assert 'CMD ["slimserve", "health"' in text and 'ENTRYPOINT ["slimserve"]' in text


def test_the_runtime_image_carries_the_serving_set_only() -> None:
    """The runtime stage copies the venv made by a plain `pip install .` (no torch), never the
    build venv that made the models."""
    text = (ROOT / "Dockerfile").read_text()
    runtime = text.split("FROM ")[2]
    assert "COPY --from=builder /opt/venv /opt/venv" in runtime and "build-venv" not in runtime
    (serving_install,) = [line for line in text.splitlines() if "python -m venv /opt/venv" in line]
    assert serving_install.rstrip().endswith("/opt/venv/bin/pip install .")


def test_kubernetes_manifests_match_the_api_schemas() -> None:
    manifests = sorted(str(p) for p in (DEPLOY / "k8s").glob("*.yaml"))
    result = _run(str(BIN / "kubernetes-validate"), "--strict", *manifests)
    assert result.returncode == 0, result.stdout + result.stderr
    # The only resource without a schema is the Prometheus Operator's PodMonitor (a CRD).
    unchecked = [line for line in (result.stdout + result.stderr).splitlines() if "Couldn't find schema" in line]
    assert all("kind PodMonitor" in line for line in unchecked), unchecked


def test_the_pod_can_read_its_tls_secret() -> None:
    """The kubelet mounts secret files root-owned with the pod's fsGroup as their group and
    defaultMode as their mode: the server's uid reads its key only through that group
    (tests/image runs the image that way for real)."""
    (deployment,) = _k8s("deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    (tls,) = [volume for volume in pod["volumes"] if volume["name"] == "tls"]
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"].get("fsGroup") is not None, "without fsGroup uid 10001 cannot read tls.key"
    assert tls["secret"]["defaultMode"] & 0o040, "the group must be allowed to read the secret's files"
    assert not tls["secret"]["defaultMode"] & 0o007, "nobody else may"


def test_kubernetes_objects_agree_with_each_other() -> None:
    (deployment,) = _k8s("deployment.yaml")
    services = _k8s("service.yaml")
    (hpa,) = _k8s("hpa.yaml")
    (monitor,) = _k8s("podmonitor.yaml")
    (adapter,) = _k8s("prometheus-adapter-rules.yaml")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 8001, "metrics": 8002, "health": 8003}
    for service in services:
        assert service["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)
    assert any(s["spec"].get("clusterIP") == "None" for s in services), "a headless Service for client-side LB"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] == "metrics"
    env = {e["name"]: e for e in container["env"]}
    # Every variable is a setting the server reads; probes use the plaintext health-only port
    # (kubelet's gRPC probes cannot do TLS); TLS files come from a mounted Secret; tokens only
    # from a Secret, never a value written here.
    assert {name.removeprefix("SLIMSERVE_").lower() for name in env} <= set(Settings.model_fields)
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["grpc"]["port"] == ports["health"] == int(env["SLIMSERVE_HEALTH_PORT"]["value"])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    secrets = {v["name"] for v in pod["spec"]["volumes"] if "secret" in v}
    for variable in ("SLIMSERVE_TLS_CERT", "SLIMSERVE_TLS_KEY"):
        assert mounts[str(Path(env[variable]["value"]).parent)] in secrets
    for variable in ("SLIMSERVE_INFERENCE_TOKEN", "SLIMSERVE_MANAGEMENT_TOKEN", "SLIMSERVE_METRICS_TOKEN"):
        assert "value" not in env[variable] and env[variable]["valueFrom"]["secretKeyRef"]["name"]
    # The gRPC port takes tokens, so /metrics does: Prometheus scrapes over HTTPS (the server
    # serves /metrics with TLS) with the very Secret key the server reads its metrics token from.
    assert env["SLIMSERVE_METRICS_TLS"]["value"] == "true" and endpoint["scheme"] == "https"
    assert endpoint["authorization"]["credentials"] == env["SLIMSERVE_METRICS_TOKEN"]["valueFrom"]["secretKeyRef"]
    grace_s = float(env["SLIMSERVE_SHUTDOWN_GRACE_S"]["value"])
    pre_stop_s = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["spec"]["terminationGracePeriodSeconds"] > grace_s + pre_stop_s
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    exposed = {rule["name"].get("as", rule["name"]["matches"]) for rule in rules}
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] in exposed


def test_compose_prometheus_and_grafana_files_agree() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"slimserve", "prometheus", "grafana"}
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (DEPLOY / source).exists(), f"compose mounts {source}, which does not exist"
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == ["slimserve:8002"] and "127.0.0.1:8002:8002" in services["slimserve"]["ports"]
    # Published on loopback only: Grafana's admin/admin and the open metrics are not for the network.
    published = [port for service in services.values() for port in service.get("ports", [])]
    assert published and all(port.startswith("127.0.0.1:") for port in published), published
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    (source,) = datasource["datasources"]
    assert source["url"] == "http://prometheus:9090"
    dashboard = json.loads((DEPLOY / "grafana/dashboards/slimserve.json").read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {source["uid"]}


def test_prometheus_config_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("SLIMSERVE_REQUIRE_PROMETHEUS") == "1":
            pytest.fail("promtool is missing; .ci/run installs Debian's prometheus package")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    result = _run(promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
