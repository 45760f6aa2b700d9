"""The one settings pattern: a pydantic-settings class per process, env prefix ``LLMESH_``.

Every process derives its settings from :class:`MeshSettings`, so the addresses of every
part of the stack are read from the same variables everywhere and one environment configures
the whole mesh. A bad value fails at start with a message naming the variable.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import grpc
from pydantic import AfterValidator, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mesh.catalog import REPO_ROOT, EmbeddingModelSpec, ModelSpec, default_embedding_models, default_models

__all__ = ["REPO_ROOT", "MeshSettings", "load_settings"]

ENV_PREFIX = "LLMESH_"


def check_host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return value


# How a service's replicas are named (mesh.replicas): HOST:PORT, several as HOST:PORT,HOST:PORT,
# or dns:///HOST:PORT for every address HOST resolves to (a Kubernetes headless Service).
DNS_SCHEME = "dns:///"


def check_replica_addr(value: str) -> str:
    if value.startswith(DNS_SCHEME) and "," not in value:
        check_host_port(value.removeprefix(DNS_SCHEME))
        return value
    if ":/" in value or value.startswith("dns:"):
        raise ValueError(f"expected HOST:PORT[,HOST:PORT...] or dns:///HOST:PORT, got {value!r}")
    for part in value.split(","):
        check_host_port(part.strip())
    return value


ReplicaAddr = Annotated[str, AfterValidator(check_replica_addr)]


class MeshSettings(BaseSettings):
    """Settings shared by every llmesh process."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    service_name: str = "llmesh"
    log_level: str = "INFO"
    # Where this process listens; empty means the process's own address below (k8s sets 0.0.0.0:PORT).
    listen_addr: str = ""

    # Addresses of every part of the mesh (defaults are the documented local ports).
    gateway_http_addr: str = "127.0.0.1:8080"
    gateway_grpc_addr: str = "127.0.0.1:50050"
    preprocess_addr: str = "127.0.0.1:50051"
    router_addr: str = "127.0.0.1:50052"
    inference_addr: str = "127.0.0.1:50053"
    postprocess_addr: str = "127.0.0.1:50054"
    triton_grpc_addr: str = "127.0.0.1:8001"
    triton_http_addr: str = "127.0.0.1:8000"
    triton_metrics_addr: str = "127.0.0.1:8002"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # More deployments of a service, each an A/B variant (JSON: {"router": {"b": "HOST:PORT"}});
    # see mesh.discovery.
    variant_addrs: dict[str, dict[str, ReplicaAddr]] = Field(default_factory=dict)

    # The models served (LLMESH_MODELS as JSON), each with its own tokenizer and chat template.
    models: list[ModelSpec] = Field(default_factory=default_models, min_length=1)
    # Embedding models (LLMESH_EMBEDDING_MODELS as JSON), served on Triton; may be empty.
    embedding_models: list[EmbeddingModelSpec] = Field(default_factory=default_embedding_models)

    # Prometheus /metrics port of a gRPC service process; 0 disables it.
    metrics_port: int = Field(default=0, ge=0, le=65535)

    # OTLP/HTTP base URL (e.g. http://127.0.0.1:4318); empty disables span export.
    otlp_endpoint: str = ""
    # Share of the traces a process starts that are recorded (a client's sampled traceparent is
    # always followed); 1 records every request, as `llmesh trace <x-trace-id>` expects.
    trace_sample_ratio: float = Field(default=1.0, ge=0, le=1)

    # gRPC transport.
    grpc_max_message_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    grpc_keepalive_time_ms: int = Field(default=30_000, gt=0)
    grpc_keepalive_timeout_ms: int = Field(default=10_000, gt=0)
    # Deadline for a call made without one and outside any inbound deadline.
    default_deadline_s: float = Field(default=30.0, gt=0)
    # The same for a call whose answer is a stream (a generation lasts as long as its answer:
    # the unary default would cut every stream longer than 30 s); a stall within it is ended
    # sooner by the gateway's idle timeout (LLMESH_STREAM_IDLE_TIMEOUT_S).
    stream_deadline_s: float = Field(default=600.0, gt=0)
    # On SIGTERM (mesh.server.drain): how long a process reports NOT_SERVING while still
    # serving, so that load balancers and callers' health checks stop sending to it first, and
    # then how long it waits for in-flight requests (streams too) before cancelling them.
    shutdown_notice_s: float = Field(default=1.0, ge=0)
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    retry_max_attempts: int = Field(default=3, ge=1, le=5)
    # Outlier detection among replicas of a service (mesh.replicas), Envoy's defaults.
    outlier_consecutive_errors: int = Field(default=5, ge=1)
    outlier_base_ejection_s: float = Field(default=30.0, gt=0)
    outlier_max_ejection_percent: float = Field(default=10.0, ge=0, le=100)
    # How often the replicas of a dns:/// address are resolved again (mesh.replicas).
    replica_dns_refresh_s: float = Field(default=5.0, gt=0)
    # Retry throttling per channel (see mesh.channel.service_config).
    retry_budget_max_tokens: int = Field(default=10, ge=1, le=1000)
    retry_budget_token_ratio: float = Field(default=0.1, gt=0, le=1)
    # Load shedding (mesh.shedding), per gRPC server and per REST edge: requests handled at
    # once (0: no limit) and requests waiting for one of those slots; more are refused at once.
    max_concurrent_requests: int = Field(default=256, ge=0)
    max_queued_requests: int = Field(default=256, ge=0)
    # The priority of the calls this process makes on its own behalf (the batch worker's are
    # "batch", which services admit after waiting interactive calls).
    request_priority: Literal["interactive", "batch"] = "interactive"

    # Redis clients (mesh.redis_client): how long to wait for a connection and for an answer,
    # how often a pooled connection idle that long is checked before use, and how many times a
    # command that timed out or found its connection broken is tried again on a new one.
    redis_connect_timeout_s: float = Field(default=0.5, gt=0)
    redis_socket_timeout_s: float = Field(default=0.5, gt=0)
    redis_health_check_interval_s: float = Field(default=5.0, ge=0)
    redis_retries: int = Field(default=1, ge=0, le=5)
    # After a command found Redis away (timed out, refused), an async client refuses its next
    # commands at once for this long, then lets one through at a time to see whether Redis is
    # back: a hung Redis costs one caller the timeouts, not every caller (0: probe at once).
    redis_breaker_open_s: float = Field(default=1.0, ge=0)

    # Bearer key of the gateway's admin API (/admin/...), and what a request must present to
    # inject faults (mesh.faults); unset disables both.
    admin_key: SecretStr | None = None
    # Fault injection (mesh.faults), off unless enabled: this process's own delay and abort,
    # each for a share of its calls (0 to 1), and per request by header with the admin key.
    fault_injection_enabled: bool = False
    fault_delay_s: float = Field(default=0.0, ge=0)
    fault_delay_share: float = Field(default=0.0, ge=0, le=1)
    fault_abort_code: str = "UNAVAILABLE"
    fault_abort_share: float = Field(default=0.0, ge=0, le=1)

    # Mutual TLS on every hop between the gateway and the services (`llmesh certs` makes the
    # files): servers require a client certificate signed by tls_ca_file, channels present
    # this process's own. tls_server_name overrides the name a channel checks the server's
    # certificate against (default: the target's host).
    tls_enabled: bool = False
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_server_name: str = ""

    @model_validator(mode="after")
    def _tls_files(self) -> MeshSettings:
        if self.tls_enabled:
            for name in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
                path = getattr(self, name)
                if path is None or not path.is_file():
                    raise ValueError(f"{ENV_PREFIX}{name.upper()} must name a readable file when TLS is enabled")
        return self

    def tls_material(self) -> tuple[bytes, bytes, bytes]:
        """CA bundle, this process's certificate chain and private key (PEM)."""
        ca, cert, key = self.tls_ca_file, self.tls_cert_file, self.tls_key_file
        if ca is None or cert is None or key is None:
            raise ValueError(f"TLS material is read only with {ENV_PREFIX}TLS_ENABLED, which requires the three files")
        return ca.read_bytes(), cert.read_bytes(), key.read_bytes()

    @field_validator("preprocess_addr", "router_addr", "inference_addr", "postprocess_addr")
    @classmethod
    def _replica_addrs(cls, value: str) -> str:
        return check_replica_addr(value)

    @field_validator(
        "gateway_http_addr",
        "gateway_grpc_addr",
        "triton_grpc_addr",
        "triton_http_addr",
        "triton_metrics_addr",
    )
    @classmethod
    def _host_port(cls, value: str) -> str:
        return check_host_port(value)

    @field_validator("fault_abort_code")
    @classmethod
    def _status_code(cls, value: str) -> str:
        if value.upper() not in grpc.StatusCode.__members__ or value.upper() == "OK":
            raise ValueError(f"expected a gRPC status code name such as UNAVAILABLE, got {value!r}")
        return value.upper()

    @field_validator("listen_addr")
    @classmethod
    def _optional_host_port(cls, value: str) -> str:
        return check_host_port(value) if value else value


SettingsT = TypeVar("SettingsT", bound=MeshSettings)


def load_settings(cls: type[SettingsT], **overrides: Any) -> SettingsT:
    """Build settings from the environment; exit with the failing variable named on error."""
    try:
        return cls(**overrides)
    except ValidationError as error:
        lines = [f"invalid llmesh configuration ({cls.__name__}):"]
        for problem in error.errors():
            field = ".".join(str(part) for part in problem["loc"])
            # A check across fields has no one variable to name; its message names them.
            named = f"{ENV_PREFIX}{field.upper()}: " if field else ""
            lines.append(f"  {named}{problem['msg']}")
        sys.exit("\n".join(lines))
