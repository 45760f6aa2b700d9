"""The chaos suite's own stack: `llmesh up --free-ports --replicas inference=2` in a run
directory of its own (a subprocess: tools import no CLI), with fault injection on, an admin key
of its own and small admission limits; its processes are found in the status.json the
supervisor writes."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from mesh.settings import REPO_ROOT

# Small on purpose: 3x overload is then a few clients, which two cores can offer. No queue:
# a queued request waits a whole service time, which is what the accepted-latency criterion
# of the overload scenario forbids (run 4 in docs/RESILIENCE.md had a queue of 2: 6.1x).
MAX_CONCURRENT = 2
MAX_QUEUED = 0
# Shorter than Envoy's 30 s, so that scenarios can wait for an ejected replica to come back.
EJECTION_S = 5


class ChaosStackError(RuntimeError):
    pass


@dataclass
class ChaosStack:
    run_dir: Path
    start_timeout_s: float = 600.0
    admin_key: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    api_key: str = ""
    proc: subprocess.Popen | None = None
    # More settings for this stack's processes (LLMESH_...), over the suite's own.
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> ChaosStack:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "LLMESH_ADMIN_KEY": self.admin_key,
            "LLMESH_FAULT_INJECTION_ENABLED": "true",
            "LLMESH_MAX_CONCURRENT_REQUESTS": str(MAX_CONCURRENT),
            "LLMESH_MAX_QUEUED_REQUESTS": str(MAX_QUEUED),
            "LLMESH_OUTLIER_BASE_EJECTION_S": str(EJECTION_S),
            # Fast enough for the drain scenario, long enough for a prober to see NOT_SERVING.
            "LLMESH_SHUTDOWN_NOTICE_S": "0.5",
            # Requests are accepted while Redis is away, so that the Redis scenarios have
            # something to lose (fail closed, they are refused); set it false to see that.
            "LLMESH_RATE_LIMITS_FAIL_OPEN": os.environ.get("LLMESH_RATE_LIMITS_FAIL_OPEN", "true"),
            # The suite's one key carries every scenario's load: the tenant's request limit
            # (600 a minute by default) must not be what refuses it (model-swap's two clients
            # sent 872 requests in about a minute, and 9 were refused rate_limit_exceeded).
            "LLMESH_TENANT_REQUESTS_PER_MINUTE": "1000000",
            "LLMESH_TENANT_TOKENS_PER_MINUTE": "100000000",
            # The stack runs the code of this suite's tree: the llmesh script of an editable
            # install imports the checkout it was installed from, which may be another one.
            "PYTHONPATH": os.pathsep.join(
                [str(REPO_ROOT), str(REPO_ROOT / "gen"), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
            **self.env,
        }
        llmesh = Path(sys.executable).with_name("llmesh")
        # The child keeps its own copy of the descriptor.
        with open(self.run_dir / "llmesh-up.log", "wb") as out:
            self.proc = subprocess.Popen(
                [str(llmesh), "up", "--free-ports", "--run-dir", str(self.run_dir), "--replicas", "inference=2"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ChaosStackError(f"llmesh up exited with {self.proc.returncode}:\n{self.log_tail()}")
            found = re.search(r"export LLMESH_API_KEY=(\S+)", self.log())
            if found and self.status_path.exists():
                self.api_key = found.group(1)
                return self
            time.sleep(0.5)
        raise ChaosStackError(f"the stack was not up after {self.start_timeout_s:.0f}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def log(self) -> str:
        return (self.run_dir / "llmesh-up.log").read_text(errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    @property
    def status_path(self) -> Path:
        return self.run_dir / "status.json"

    def status(self) -> dict:
        return json.loads(self.status_path.read_text())

    @property
    def gateway_url(self) -> str:
        return self.status()["gateway_url"]

    def pid(self, process: str) -> int:
        return self.status()["processes"][process]["pid"]

    def restarts(self, process: str) -> int:
        return self.status()["processes"][process]["restarts"]

    def metrics_url(self, process: str) -> str:
        return f"http://127.0.0.1:{self.status()['processes'][process]['metrics_port']}/metrics"

    def wait_restarted(self, process: str, restarts: int, timeout_s: float = 30.0) -> bool:
        """Whether the supervisor has restarted ``process`` more than ``restarts`` times in time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.restarts(process) > restarts:
                return True
            time.sleep(0.1)
        return False

    def client(self, timeout_s: float = 30.0, connections: int = 100) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=f"{self.gateway_url}/v1",
            headers={"authorization": f"Bearer {self.api_key}"},
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=connections),
        )

    def __enter__(self) -> ChaosStack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
