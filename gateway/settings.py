"""Settings of the gateway process (both edges)."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from mesh.settings import MeshSettings, check_host_port


class GatewaySettings(MeshSettings):
    service_name: str = "gateway"

    # Where the REST edge listens; empty means gateway_http_addr. The gRPC edge follows the
    # mesh-wide LLMESH_LISTEN_ADDR, so k8s sets both (the gateway is the one two-port process).
    http_listen_addr: str = ""

    # Requests with a larger body get 413 before the body is read in full.
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    # max_tokens when the client sends none.
    default_max_tokens: int = Field(default=128, gt=0)
    # Every request is this tenant's until API keys map callers to tenants.
    default_tenant: str = "default"
    # Bearer key of the admin API (/admin/...); unset disables it.
    admin_key: SecretStr | None = None
    # How long one readiness probe of an upstream (or Redis) may take.
    readiness_timeout_s: float = Field(default=1.0, gt=0)

    @field_validator("http_listen_addr")
    @classmethod
    def _optional_host_port(cls, value: str) -> str:
        return check_host_port(value) if value else value

    def http_addr(self) -> tuple[str, int]:
        host, _, port = (self.http_listen_addr or self.gateway_http_addr).rpartition(":")
        return host, int(port)
