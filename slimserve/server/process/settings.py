"""Server settings: one pydantic model, from flags or `SLIMSERVE_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from slimserve.router.config import Mechanism
from slimserve.router.cpu import TARGET_UTILIZATION
from slimserve.server.transport.auth import INFERENCE, MANAGEMENT, METRICS, TokenTable, load_tokens


class Settings(BaseSettings):
    """Everything `slimserve serve` can be told; validated at start-up."""

    model_config = SettingsConfigDict(env_prefix="SLIMSERVE_", extra="forbid")

    repository: Path = Field(default=Path("model_repository"), description="model repository folder")
    host: str = Field(default="0.0.0.0", description="address to bind the gRPC and metrics ports to")
    grpc_port: int = Field(default=8001, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    metrics_port: int = Field(default=8002, ge=0, le=65535, description="Prometheus /metrics port; 0 picks a free one")
    metrics: bool = Field(default=True, description="serve /metrics (off: still recorded, no endpoint)")
    shadow_fraction: float = Field(
        default=0.05, ge=0, le=1, description="share of compressed-variant answers also run on the reference, when idle"
    )
    feedback_capacity: int = Field(default=10000, ge=0, description="classifier answers remembered for Feedback")
    hardware_profile: Literal["cloud-cpu", "edge"] = Field(
        default="cloud-cpu", description="edge pins the process to one core and one thread"
    )
    session_threads: int = Field(default=0, ge=0, description="ONNX Runtime threads per session; 0 = usable cores")
    compute_workers: int = Field(
        default=0, ge=0,
        description="session calls of one model that run at once, its variants taking turns for them "
        "(core.turns); 0: every variant's batch beside the others",
    )  # fmt: skip
    max_queue_size: int = Field(default=256, ge=1, description="requests waiting per variant before UNAVAILABLE")
    max_queue_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1024, description="tensor bytes waiting per variant before UNAVAILABLE"
    )
    shed_late: bool = Field(
        default=True,
        description="refuse at once (UNAVAILABLE) a request predicted to miss its SLO behind the queue ahead of it",
    )
    max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=4 * 1024 * 1024, description="gRPC message limit")
    shutdown_grace_s: float = Field(default=10.0, ge=0, description="time in-flight calls get to finish on SIGTERM")
    drain_s: float = Field(
        default=1.0,
        ge=0,
        description="after SIGTERM, answer new calls UNAVAILABLE for this long before closing connections, so that "
        "calls already sent are refused rather than cut off (and load balancers see NOT_SERVING first)",
    )
    rpc_allowance_ms: float = Field(
        default=1.5,
        ge=0,
        description="time a call spends outside the server (network, gRPC, client); the router adds it to predictions",
    )
    cpu_target: float = Field(
        default=TARGET_UTILIZATION,
        gt=0,
        le=1,
        description="share of the CPU routed traffic may plan to use; past it CPU has a price and cheaper variants win",
    )
    router_off: list[Mechanism] = Field(
        default_factory=list,
        description="router mechanisms to turn off, for ablation benchmarks (router/config.py); all on by default",
    )
    warmup_calls: int = Field(default=2, ge=0, description="session calls per variant before reporting ready")
    # gRPC transport limits: a client that breaks them gets gRPC's GOAWAY or RESOURCE_EXHAUSTED,
    # and other clients are unaffected.
    keepalive_min_ping_interval_s: float = Field(
        default=10.0, ge=0, description="clients may ping no more often than this without calls in flight"
    )
    keepalive_max_ping_strikes: int = Field(
        default=2, ge=0, description="pings too soon before the connection is closed with GOAWAY (0: no limit)"
    )
    max_concurrent_streams: int = Field(default=256, ge=1, description="concurrent calls per connection")
    max_connection_age_s: float = Field(
        default=0, ge=0, description="close connections older than this (GOAWAY) so clients rebalance; 0: never"
    )
    max_connection_age_grace_s: float = Field(
        default=10.0, ge=0, description="calls on a connection past its age get this long to finish"
    )
    compressed_requests: bool = Field(
        default=False,
        description="accept gzip/deflate request messages; off: refused UNIMPLEMENTED unread, since grpcio "
        "inflates a whole message before its size check (README: Failure modes)",
    )
    max_metadata_bytes: int = Field(default=16 * 1024, ge=1024, description="request header (metadata) size limit")
    handshake_timeout_s: float = Field(
        default=10.0, gt=0, description="a connection must finish its HTTP/2 handshake within this"
    )
    # Security (README: Security). Token values come only from the environment or the tokens
    # file: `slimserve serve` has no flag for them, so that they never show in `ps`.
    tls_cert: Path | None = Field(default=None, description="PEM certificate chain: the gRPC port speaks TLS only")
    tls_key: Path | None = Field(default=None, description="PEM private key of tls_cert")
    tls_client_ca: Path | None = Field(
        default=None, description="PEM CA bundle: clients must present a certificate it signed (mutual TLS)"
    )
    metrics_tls: bool = Field(default=False, description="serve /metrics over HTTPS with the same files")
    auth_tokens_file: Path | None = Field(
        default=None, description="bearer tokens per API group, lines of 'group[,group] token' (transport.auth)"
    )
    inference_token: SecretStr | None = Field(default=None, description="a token for the inference group")
    management_token: SecretStr | None = Field(default=None, description="a token for the management group")
    metrics_token: SecretStr | None = Field(default=None, description="a token for the metrics group (/metrics)")
    worker_scrape_token: SecretStr | None = Field(
        default=None,
        description="set by --workers, not by hand: the one token this worker's loopback /metrics and peer port "
        "take (the supervisor's scrape, its siblings' model changes)",
    )
    health_port: int | None = Field(
        default=None, ge=0, le=65535,
        description="a plaintext port serving only grpc.health.v1, for probes that cannot do TLS (kubelet); "
        "0 picks a free one; unset: none",
    )  # fmt: skip
    repository_poll_s: float = Field(
        default=0, ge=0,
        description="scan the repository this often and load, reload or unload models to match it; 0: never "
        "(RepositoryModelLoad/Unload work either way)",
    )  # fmt: skip
    workers: int = Field(
        default=0, ge=0, le=64,
        description="serving processes sharing the gRPC port (SO_REUSEPORT), each with its own batchers and "
        "router, like replicas behind a load balancer (docs/scaling.md); 0: one per usable core (the cgroup "
        "quota, at most the cores), 1 with the edge profile",
    )  # fmt: skip
    worker_scratch: Path | None = Field(
        default=None,
        description="set by --workers, not by hand: the supervisor's folder of the workers' peer ports and of "
        "the models unloaded during the run (process.peers)",
    )
    worker_index: int | None = Field(
        default=None, ge=0,
        description="set by --workers, not by hand: this process is worker N of several on a shared port",
    )  # fmt: skip
    worker_count: int | None = Field(
        default=None, ge=1, le=64,
        description="set by --workers, not by hand: how many workers share the cores; each routes for its "
        "share of them (router.cpu)",
    )  # fmt: skip
    metrics_host: str | None = Field(default=None, description="address to bind /metrics to; unset: host")
    build_missing: bool = Field(
        default=False,
        description="build the default models missing from the repository in the background while serving "
        "(fp32 and int8 first); the repository is polled to load each as it is published",
    )
    build_recipes: list[Path] = Field(
        default_factory=list, description="with build_missing: recipe files to build instead of the default models"
    )

    @property
    def cpu_share(self) -> float:
        """The fraction of the usable cores this process routes for: a worker of N sees only its
        own requests and CPU time, so it plans on 1/N of them (`router.cpu`)."""
        return 1.0 / (self.worker_count or 1)


def token_table(settings: Settings) -> TokenTable:
    """The bearer tokens the server takes: the tokens file and the one token per group from
    the environment (transport.auth). Empty: authentication is off."""
    return load_tokens(settings.auth_tokens_file, {
        INFERENCE: settings.inference_token.get_secret_value() if settings.inference_token else None,
        MANAGEMENT: settings.management_token.get_secret_value() if settings.management_token else None,
        METRICS: settings.metrics_token.get_secret_value() if settings.metrics_token else None,
    })  # fmt: skip
