"""The whole stack on one machine: Redis, the trace collector, Triton, four services, gateway.

Used by ``llmesh up`` (``make run``) and by the e2e test session, so both run exactly the same
processes. Every child gets the same ``LLMESH_*`` environment, logs to ``<run_dir>/logs/`` and
is checked with a real health probe before the next tier starts.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import grpc
import httpx
import redis

from mesh.net import free_port, free_ports
from mesh.probe import grpc_serving
from mesh.settings import REPO_ROOT
from services.inference.triton_server import DEFAULT_MODELS, TritonServer, TritonStartError
from tools import certs

DEFAULT_RUN_DIR = REPO_ROOT / ".run"
SERVICES = ("preprocess", "router", "inference", "postprocess")


class StackError(RuntimeError):
    """A part of the stack failed to start; the message names it and quotes its log."""


@dataclass(frozen=True)
class Ports:
    gateway_http: int = 8080
    gateway_grpc: int = 50050
    preprocess: int = 50051
    router: int = 50052
    inference: int = 50053
    postprocess: int = 50054
    triton_http: int = 8000
    triton_grpc: int = 8001
    triton_metrics: int = 8002
    redis: int = 6379
    collector: int = 4318
    # Prometheus /metrics of the gRPC services (the gateway serves /metrics on its HTTP port).
    preprocess_metrics: int = 9051
    router_metrics: int = 9052
    inference_metrics: int = 9053
    postprocess_metrics: int = 9054
    # The batch worker's /metrics, /healthz and /readyz.
    batch_metrics: int = 9055

    @classmethod
    def free(cls) -> Ports:
        return cls(*free_ports(len(cls.__dataclass_fields__)))

    @classmethod
    def from_base(cls, base: int) -> Ports:
        """Consecutive ports from ``base`` (a range of one's own on a shared machine)."""
        return cls(*range(base, base + len(cls.__dataclass_fields__)))


@dataclass(frozen=True)
class Deployment:
    """One more deployment of a service (an A/B variant): its own process on its own port with
    its own settings, known to the gateway through LLMESH_VARIANT_ADDRS (see mesh.discovery)."""

    service: str
    name: str
    env: dict[str, str] = field(default_factory=dict)
    # 0: a free port.
    port: int = 0

    @classmethod
    def parse(cls, spec: str) -> Deployment:
        """``SERVICE:NAME[:VAR=VALUE,...]``, e.g. ``router:b:LLMESH_PERPLEXITY_THRESHOLD=5``."""
        service, _, rest = spec.partition(":")
        name, _, assignments = rest.partition(":")
        if not service or not name or any("=" not in pair for pair in assignments.split(",") if pair):
            raise ValueError(f"expected SERVICE:NAME[:VAR=VALUE,...], got {spec!r}")
        env = dict(pair.split("=", 1) for pair in assignments.split(",") if pair)
        return cls(service, name, env)


def stack_env(ports: Ports, run_dir: Path) -> dict[str, str]:
    """The environment every process of the stack shares (see mesh.settings.MeshSettings)."""
    local = "127.0.0.1"
    return {
        "LLMESH_GATEWAY_HTTP_ADDR": f"{local}:{ports.gateway_http}",
        "LLMESH_GATEWAY_GRPC_ADDR": f"{local}:{ports.gateway_grpc}",
        "LLMESH_PREPROCESS_ADDR": f"{local}:{ports.preprocess}",
        "LLMESH_ROUTER_ADDR": f"{local}:{ports.router}",
        "LLMESH_INFERENCE_ADDR": f"{local}:{ports.inference}",
        "LLMESH_POSTPROCESS_ADDR": f"{local}:{ports.postprocess}",
        "LLMESH_TRITON_HTTP_ADDR": f"{local}:{ports.triton_http}",
        "LLMESH_TRITON_GRPC_ADDR": f"{local}:{ports.triton_grpc}",
        "LLMESH_TRITON_METRICS_ADDR": f"{local}:{ports.triton_metrics}",
        "LLMESH_REDIS_URL": f"redis://{local}:{ports.redis}/0",
        "LLMESH_COLLECTOR_ADDR": f"{local}:{ports.collector}",
        "LLMESH_OTLP_ENDPOINT": f"http://{local}:{ports.collector}",
        "LLMESH_TRACE_DB": str(run_dir / "traces.db"),
        "LLMESH_AUDIT_DIR": str(run_dir / "audit"),
        # Shared by the gateway (uploads) and the batch worker (inputs, outputs).
        "LLMESH_FILES_DIR": str(run_dir / "files"),
    }


def redis_argv(redis_server: str, port: int, directory: Path) -> list[str]:
    """redis-server on loopback with an append-only file in ``directory``, fsynced every second."""
    return [
        redis_server,
        *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)),
        *("--appendonly", "yes", "--appendfsync", "everysec", "--save", ""),
    ]


def _http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def _redis_ok(port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return bool(redis.Redis(port=port, socket_timeout=1.0).ping())
        except redis.RedisError:
            return False

    return check


# The supervisor's backoff between restarts of a process: doubling from the first to the
# longest; a process that stayed up for the reset time starts again from the first.
RESTART_BACKOFF_FIRST_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0
RESTART_BACKOFF_RESET_S = 60.0


@dataclass
class Child:
    name: str
    argv: list[str]
    ready: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 60.0
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    # Supervision (Stack.supervise): restarts so far, exits in a row without staying up for
    # RESTART_BACKOFF_RESET_S, when it last started, when it is due to start again after exiting.
    restarts: int = 0
    failures: int = 0
    started_at: float = 0.0
    restart_at: float | None = None
    last_exit: int | None = None

    def backoff_s(self) -> float:
        return min(RESTART_BACKOFF_FIRST_S * 2 ** max(self.failures - 1, 0), RESTART_BACKOFF_MAX_S)


@dataclass
class Stack:
    ports: Ports = field(default_factory=Ports)
    run_dir: Path = DEFAULT_RUN_DIR
    extra_env: dict[str, str] = field(default_factory=dict)
    # Called with each part's name once it is healthy (progress for `llmesh up`).
    on_ready: Callable[[str, float], None] = lambda name, seconds: None
    # Mutual TLS between the gateway and the services, with certificates made for this run
    # in <run_dir>/certs (the public edges and Triton on loopback stay plaintext).
    tls: bool = False
    # More deployments of services (A/B variants), started before the gateway.
    deployments: list[Deployment] = field(default_factory=list)
    # A tritonserver already running (a test session's, whose engines take a while to start):
    # the stack uses it, on its ports, and leaves it running when it stops.
    external_triton: TritonServer | None = None
    # Replicas of a gRPC service (`llmesh up --replicas inference=2`): more processes on ports
    # of their own, all behind the service's one address list (mesh.replicas balances them).
    replicas: dict[str, int] = field(default_factory=dict)
    # The four services inside the gateway's process (`llmesh up --colocate`, cli/colocated.py):
    # still served on their addresses, called in process by the gateway (mesh.local).
    colocate: bool = False
    # The models Triton loads (a benchmark of one model needs no other weights).
    triton_models: Sequence[str] = DEFAULT_MODELS

    def __post_init__(self) -> None:
        if self.colocate and any(count > 1 for count in self.replicas.values()):
            raise StackError("--colocate runs each service once, inside the gateway: it takes no --replicas")
        if self.external_triton is not None:
            t = self.external_triton
            self.ports = replace(
                self.ports, triton_http=t.http_port, triton_grpc=t.grpc_port, triton_metrics=t.metrics_port
            )
        self.deployments = [replace(d, port=d.port or free_port()) for d in self.deployments]
        variant_addrs: dict[str, dict[str, str]] = {}
        for deployment in self.deployments:
            variant_addrs.setdefault(deployment.service, {})[deployment.name] = f"127.0.0.1:{deployment.port}"
        variants = {"LLMESH_VARIANT_ADDRS": json.dumps(variant_addrs)} if variant_addrs else {}
        # service -> (port, metrics port) of each replica after the first.
        self.replica_ports = {
            service: [tuple(free_ports(2)) for _ in range(count - 1)]
            for service, count in self.replicas.items()
            if count > 1
        }
        replica_addrs = {
            f"LLMESH_{service.upper()}_ADDR": ",".join(
                f"127.0.0.1:{port}" for port in [getattr(self.ports, service), *(p for p, _ in ports)]
            )
            for service, ports in self.replica_ports.items()
        }
        self.env = {**os.environ, **stack_env(self.ports, self.run_dir), **variants, **replica_addrs, **self.extra_env}
        self.children: list[Child] = []
        self.triton: TritonServer | None = None
        # Triton as the supervisor sees it (TritonServer starts its own process).
        self._triton_child: Child | None = None

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.gateway_http}"

    def _services(self) -> list[Child]:
        python = sys.executable
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            raise StackError("redis-server is not installed (make run installs it from Debian's packages)")
        redis_dir = self.run_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        p = self.ports

        def service(name: str, module: str, port: int, metrics_port: int, child_name: str = "") -> Child:
            env = {
                "LLMESH_METRICS_PORT": str(metrics_port),
                # Its own address: the service's may be a list of replicas.
                "LLMESH_LISTEN_ADDR": f"127.0.0.1:{port}",
                **self._tls_env(name),
            }
            probe = grpc_serving(f"127.0.0.1:{port}", self._probe_credentials())
            return Child(child_name or name, [python, "-m", module], probe, env)

        def replicated(name: str) -> list[Child]:
            module = f"services.{name}"
            first = service(name, module, getattr(p, name), getattr(p, f"{name}_metrics"))
            more = [
                service(name, module, port, metrics, f"{name}-{index}")
                for index, (port, metrics) in enumerate(self.replica_ports.get(name, []), start=2)
            ]
            return [first, *more]

        # Router and inference are ready only once their Triton models are.
        services = (
            [] if self.colocate else [replicated(name) for name in ("preprocess", "postprocess", "router", "inference")]
        )
        return [
            # Append-only file, fsynced every second: batch queues, records and results survive
            # a restart of Redis (a crash loses at most the last second, which late
            # acknowledgement redoes).
            Child("redis", redis_argv(redis_server, p.redis, redis_dir), _redis_ok(p.redis)),
            Child("collector", [python, "-m", "mesh.collector"], _http_ok(f"http://127.0.0.1:{p.collector}/healthz")),
            *(child for children in services for child in children),
            *(
                Child(
                    f"{d.service}-{d.name}",
                    [python, "-m", f"services.{d.service}"],
                    grpc_serving(f"127.0.0.1:{d.port}", self._probe_credentials()),
                    {"LLMESH_LISTEN_ADDR": f"127.0.0.1:{d.port}", **self._tls_env(d.service), **d.env},
                )
                for d in self.deployments
            ),
            Child(
                "gateway",
                [python, "-m", "cli.colocated" if self.colocate else "gateway"],
                _http_ok(f"http://127.0.0.1:{p.gateway_http}/readyz"),
                self._tls_env("gateway"),
            ),
            # The gateway's batch edge: it calls the services as the gateway does (and with its
            # certificate); ready once it consumes the queue and its upstreams are ready.
            Child(
                "batch",
                [python, "-m", "gateway.batch"],
                _http_ok(f"http://127.0.0.1:{p.batch_metrics}/readyz"),
                {"LLMESH_METRICS_PORT": str(p.batch_metrics), **self._tls_env("gateway")},
            ),
        ]

    @property
    def certs_dir(self) -> Path:
        return self.run_dir / "certs"

    def _tls_env(self, name: str) -> dict[str, str]:
        return certs.tls_env(self.certs_dir, name) if self.tls else {}

    def _probe_credentials(self) -> grpc.ChannelCredentials | None:
        if not self.tls:
            return None
        # The probe is a client like any other: it presents the gateway's certificate.
        ca, key, cert = ((self.certs_dir / name).read_bytes() for name in ("ca.pem", "gateway-key.pem", "gateway.pem"))
        return grpc.ssl_channel_credentials(ca, key, cert)

    def create_key(self, tenant: str, name: str = "") -> str:
        """A new API key for ``tenant`` in this stack's Redis (as `llmesh keys create` makes it)."""
        from gateway.settings import GatewaySettings
        from gateway.tenancy import Tenancy
        from mesh.settings import load_settings

        async def create() -> str:
            tenancy = Tenancy(load_settings(GatewaySettings, redis_url=self.env["LLMESH_REDIS_URL"]))
            try:
                return (await tenancy.create_key(tenant, name, None, None))[0]
            finally:
                await tenancy.close()

        return asyncio.run(create())

    def _spawn(self, child: Child) -> None:
        self._launch(child)
        self.children.append(child)

    def _launch(self, child: Child) -> None:
        logs = self.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        child.log_path = logs / f"{child.name}.log"
        with open(child.log_path, "ab") as out:
            child.proc = subprocess.Popen(
                child.argv,
                env={**self.env, "LLMESH_SERVICE_NAME": child.name, **child.env},
                cwd=REPO_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        child.started_at = time.monotonic()

    def _wait(self, child: Child, started: float) -> None:
        deadline = time.monotonic() + child.ready_timeout_s
        while time.monotonic() < deadline:
            if child.proc is not None and child.proc.poll() is not None:
                raise StackError(f"{child.name} exited with {child.proc.returncode}:\n{_tail(child.log_path)}")
            if child.ready():
                self.on_ready(child.name, time.monotonic() - started)
                return
            time.sleep(0.2)
        raise StackError(f"{child.name} not ready after {child.ready_timeout_s:.0f}s:\n{_tail(child.log_path)}")

    def _new_triton(self) -> TritonServer:
        return TritonServer(
            http_port=self.ports.triton_http,
            grpc_port=self.ports.triton_grpc,
            metrics_port=self.ports.triton_metrics,
            otlp_endpoint=self.env["LLMESH_OTLP_ENDPOINT"],
            log_file=self.run_dir / "logs" / "triton.log",
            env=self.env,
            models=self.triton_models,
        )

    def start(self, triton_timeout_s: float = 300.0) -> Stack:
        started = time.monotonic()
        try:
            if self.tls:
                certs.generate(self.certs_dir)
            services = self._services()
            redis_child, collector, *rest = services
            for child in (redis_child, collector):
                self._spawn(child)
                self._wait(child, started)
            if self.external_triton is None:
                self.triton = self._new_triton().start()
            # The Python services start while Triton loads its models; they report
            # NOT_SERVING until their dependencies are ready.
            for child in rest:
                self._spawn(child)
            if self.triton is not None:
                try:
                    self.triton.wait_ready(triton_timeout_s)
                except TritonStartError as error:
                    raise StackError(f"triton: {error}") from None
            self.on_ready("triton", time.monotonic() - started)
            for child in rest:
                self._wait(child, started)
        except BaseException:
            self.stop()
            raise
        return self

    def supervise(self) -> list[str]:
        """One round of supervision (``llmesh up`` calls it every half second): a process that
        exited is started again after its backoff, on the same ports with the same settings,
        instead of the whole stack stopping. Returns what happened, for the console; writes
        the status of every process to ``status_path`` (`llmesh status` reads it)."""
        events = []
        now = time.monotonic()
        for child in self._supervised():
            if child.proc is not None and child.proc.poll() is None:
                if child.failures and now - child.started_at > RESTART_BACKOFF_RESET_S:
                    child.failures = 0
                continue
            if child.restart_at is None:
                child.last_exit = child.proc.returncode if child.proc is not None else None
                child.failures += 1
                child.restart_at = now + child.backoff_s()
                events.append(f"{child.name} exited with {child.last_exit}; restarting in {child.backoff_s():g}s")
            elif now >= child.restart_at:
                self._restart(child)
                child.restarts += 1
                child.restart_at = None
                events.append(f"{child.name} restarted (restart {child.restarts})")
        self.write_status()
        return events

    def _supervised(self) -> list[Child]:
        if self.triton is not None and self._triton_child is None:
            self._triton_child = Child(
                "triton", [], lambda: False, proc=self.triton.proc, log_path=self.triton.log_file
            )
            self._triton_child.started_at = time.monotonic()
        return [*self.children, *([self._triton_child] if self._triton_child else [])]

    def _restart(self, child: Child) -> None:
        if child is self._triton_child:
            self.triton = self._new_triton().start()
            child.proc, child.started_at = self.triton.proc, time.monotonic()
        else:
            self._launch(child)

    @property
    def status_path(self) -> Path:
        return self.run_dir / "status.json"

    def status(self) -> dict:
        """Ports, and each process's pid, state and restarts (for `llmesh status` and tools/chaos)."""
        processes = {}
        for child in self._supervised():
            alive = child.proc is not None and child.proc.poll() is None
            processes[child.name] = {
                "pid": child.proc.pid if child.proc is not None else None,
                "state": "running" if alive else ("restarting" if child.restart_at is not None else "exited"),
                "restarts": child.restarts,
                "last_exit": child.last_exit,
                "metrics_port": int(child.env["LLMESH_METRICS_PORT"]) if "LLMESH_METRICS_PORT" in child.env else None,
                "log": str(child.log_path) if child.log_path else None,
            }
        return {"gateway_url": self.gateway_url, "ports": asdict(self.ports), "processes": processes}

    def write_status(self) -> None:
        partial = self.status_path.with_suffix(".json.tmp")
        partial.write_text(json.dumps(self.status(), indent=2))
        partial.replace(self.status_path)

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM in reverse start order, in two waves: the services and the gateway first,
        then what they depend on (Redis, the collector), so that a draining gateway can still
        write its last charges and audit records and export its last spans instead of waiting
        out its Redis retries (7 to 10 s per stop before). What is left after the grace period
        is killed."""
        infrastructure = {"redis", "collector"}
        services = [child for child in reversed(self.children) if child.name not in infrastructure]
        depended_on = [child for child in reversed(self.children) if child.name in infrastructure]
        deadline = time.monotonic() + grace_s
        for wave in (services, depended_on):
            for child in wave:
                if child.proc is not None and child.proc.poll() is None:
                    child.proc.send_signal(signal.SIGTERM)
            for child in wave:
                if child.proc is None:
                    continue
                try:
                    child.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    os.killpg(child.proc.pid, signal.SIGKILL)
                    child.proc.wait()
        if self.triton is not None:
            self.triton.stop()
        self.children.clear()
        self._triton_child = None

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
