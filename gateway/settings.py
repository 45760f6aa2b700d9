"""Settings of the gateway process (both edges)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from mesh.settings import REPO_ROOT, MeshSettings, check_host_port


class GatewaySettings(MeshSettings):
    service_name: str = "gateway"

    # The gateway's event loop: "uvloop" (libuv, as uvicorn picks when it runs the loop itself)
    # or Python's own "asyncio".
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    # Where the REST edge listens; empty means gateway_http_addr. The gRPC edge follows the
    # mesh-wide LLMESH_LISTEN_ADDR, so k8s sets both (the gateway is the one two-port process).
    http_listen_addr: str = ""

    # Requests with a larger body get 413 before the body is read in full.
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    # Longest wait for the next part of a request body; then 408 (a Content-Length larger than
    # the body sent would otherwise hold the request open until the client gives up).
    body_read_timeout_s: float = Field(default=10.0, gt=0)
    # A stream whose next chunk (the first one too) has not come this long after the last is
    # ended with `stream_stalled` (504 before anything was sent, else an error event): its
    # deadline (LLMESH_STREAM_DEADLINE_S) is long enough for whole answers, so a hung engine
    # must not hold the caller for all of it.
    stream_idle_timeout_s: float = Field(default=30.0, gt=0)
    # max_tokens when the client sends none.
    default_max_tokens: int = Field(default=128, gt=0)
    # Every request is this tenant's until API keys map callers to tenants.
    default_tenant: str = "default"
    # Refuse a prompt as a likely injection (an encoded or adversarial payload) when its
    # perplexity under the small model, as the router measured it, is above this; 0 turns the
    # check off (the default: the small models here find much honest text very perplexing).
    injection_max_perplexity: float = Field(default=0.0, ge=0)
    # How long one readiness probe of an upstream (or Redis) may take.
    readiness_timeout_s: float = Field(default=1.0, gt=0)
    # Tenancy (gateway/tenancy.py): API keys on both edges, and per-tenant limits unless a
    # tenant has its own (`llmesh keys create --rpm --tpm`).
    auth_required: bool = True
    rate_limits_enabled: bool = True
    tenant_requests_per_minute: int = Field(default=600, gt=0)
    tenant_tokens_per_minute: int = Field(default=200_000, gt=0)
    # How long a gateway trusts a valid API key it looked up before asking Redis again: a
    # revoked key stops working within this (at most a second); 0 asks Redis on every request.
    api_key_cache_ttl_s: float = Field(default=1.0, ge=0, le=1)
    # While Redis is away: admit requests without rate limits (true), or refuse them with 503
    # (false); and how long a key this process verified stays valid without Redis.
    rate_limits_fail_open: bool = False
    auth_remember_s: float = Field(default=300.0, ge=0)
    # A blocked prompt or answer: HTTP 200 with a refusal and finish_reason content_filter,
    # or (true) HTTP 400 / INVALID_ARGUMENT with an error object.
    safety_block_as_error: bool = False
    # Audit trail (gateway/audit.py): a hash-chained record per request in a Redis stream and
    # in rotated files; prompt and output text only with audit_include_text, PII-redacted.
    audit_enabled: bool = True
    audit_dir: Path = REPO_ROOT / ".run" / "audit"
    audit_retention_days: int = Field(default=180, gt=0)
    audit_include_text: bool = False
    audit_file_max_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    # Finished requests waiting to be charged and audited in the background (gateway/accounting.py),
    # kept and retried while Redis is away; past this many, and at shutdown, they are written to
    # a spool file in audit_dir, replayed once Redis answers. Each outcome's record id is kept in
    # Redis this long, so that writing it again (a lost answer, a replay) charges nothing twice.
    accounting_max_pending: int = Field(default=10_000, gt=0)
    accounting_record_id_ttl_s: int = Field(default=24 * 3600, gt=0)
    # Exact response cache (gateway/response_cache.py), off unless enabled: answers to
    # deterministic requests (temperature 0 or a seed) kept in Redis per tenant for a TTL, at
    # most this many entries; a hit is charged its tokens unless response_cache_charge_hits is off.
    response_cache_enabled: bool = False
    response_cache_ttl_s: int = Field(default=3600, gt=0)
    response_cache_max_entries: int = Field(default=10_000, gt=0)
    response_cache_charge_hits: bool = True
    # Semantic cache, opt-in per tenant (on top of the exact cache, which must be enabled): a
    # single-turn request may be answered with the cached answer of an earlier question whose
    # embedding (semantic_cache_model, on Triton) is at least this similar; at most this many
    # questions remembered per tenant, model and sampling parameters.
    semantic_cache_tenants: list[str] = Field(default_factory=list)
    semantic_cache_model: str = "all-minilm-l6-v2"
    semantic_cache_min_similarity: float = Field(default=0.95, gt=0, le=1)
    semantic_cache_max_entries: int = Field(default=1000, gt=0)
    # A/B tests (gateway/experiments): a YAML file of experiments applied to Redis at start and
    # whenever it changes; how often a gateway looks for changed definitions in Redis.
    experiments_file: Path | None = None
    experiments_refresh_s: float = Field(default=1.0, gt=0)
    # How long /v1/responses keeps a stored response (for previous_response_id), per tenant in Redis.
    responses_ttl_s: int = Field(default=30 * 24 * 3600, gt=0)
    # Shadow requests beyond this many in flight are skipped, so mirroring never queues work.
    shadow_max_concurrency: int = Field(default=2, ge=1)
    shadow_timeout_s: float = Field(default=30.0, gt=0)
    # Files and Batch APIs (gateway/batch): where files live, the limits of an upload (OpenAI's
    # are 200 MB and 50,000 requests), the Celery queue batch work goes to, and how long a batch
    # has to finish ("24h", the one completion window OpenAI offers) before it expires.
    files_dir: Path = REPO_ROOT / ".run" / "files"
    files_max_bytes: int = Field(default=100 * 1024 * 1024, gt=0)
    batch_max_lines: int = Field(default=50_000, gt=0)
    batch_queue: str = Field(default="llmesh.batch", min_length=1)
    batch_completion_window_s: float = Field(default=24 * 3600.0, gt=0)
    # How often a gateway replica publishes its interactive requests in flight to Redis, which
    # batch workers read to yield to interactive traffic (gateway/load.py).
    interactive_load_interval_s: float = Field(default=0.1, gt=0)

    @field_validator("http_listen_addr")
    @classmethod
    def _optional_host_port(cls, value: str) -> str:
        return check_host_port(value) if value else value

    def http_addr(self) -> tuple[str, int]:
        host, _, port = (self.http_listen_addr or self.gateway_http_addr).rpartition(":")
        return host, int(port)
