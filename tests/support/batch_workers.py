"""Real batch workers (``python -m gateway.batch``) as child processes of a test, and the gateway
they work for."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import uvicorn

from gateway.load import InteractiveLoad
from gateway.pipeline import Pipeline
from gateway.rest import RestServer, create_app
from gateway.tenancy import Tenancy
from mesh.net import free_port
from mesh.server import start_service
from mesh.settings import REPO_ROOT, MeshSettings
from support.fake_upstreams import FakeUpstreams, gateway_settings


class BatchWorker:
    """One worker node: its main process and its Celery pool processes, in a session of their
    own so that the whole node can be killed at once."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.metrics_port = free_port()
        self.env = {**os.environ, **env, "LLMESH_METRICS_PORT": str(self.metrics_port)}
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self, ready_timeout_s: float = 60.0) -> BatchWorker:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway.batch"],
                env=self.env,
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + ready_timeout_s
        while not self.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"batch worker not ready:\n{self.log_tail()}")
            time.sleep(0.2)
        return self

    def ready(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2.0).text

    def pool_pids(self) -> list[int]:
        """The Celery pool processes (children of the main process)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()] if children.exists() else []

    def kill(self) -> None:
        """SIGKILL to the whole node, main process and pool alike."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self, grace_s: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class BatchTestbed:
    """What batch tests run against, in the test's event loop: fake upstream services and the
    REST edge on a real uvicorn server, with real tenancy in ``redis_url``; plus the
    environment that points real workers (BatchWorker) at the same upstreams, Redis and files."""

    def __init__(self, redis_url: str, directory: Path, **overrides) -> None:
        self.redis_url = redis_url
        self.directory = directory
        self.overrides = overrides
        self.upstreams = FakeUpstreams()
        self.workers: list[BatchWorker] = []

    async def start(self) -> BatchTestbed:
        self._upstream = await start_service(self.upstreams, MeshSettings(), "127.0.0.1:0")
        values = {
            "redis_url": self.redis_url,
            "auth_required": True,
            "rate_limits_enabled": True,
            "audit_enabled": True,
            "audit_dir": self.directory / "audit",
            "files_dir": self.directory / "files",
            **self.overrides,
        }
        self.settings = gateway_settings(f"127.0.0.1:{self._upstream.port}", **values)
        self.pipeline = Pipeline(self.settings)
        self.load = InteractiveLoad(self.settings)
        self.app = create_app(self.settings, self.pipeline, load=self.load)
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._server = RestServer(uvicorn.Config(self.app, log_config=None, access_log=False))
        self._serving = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        while not self._server.started:
            await asyncio.sleep(0.01)
        self.load.start()
        tenancy = Tenancy(self.settings)
        # Limits no test reaches: batches here are about durability, not quotas.
        self.keys = {
            tenant: (await tenancy.create_key(tenant, rpm=1_000_000, tpm=10**9))[0] for tenant in ("acme", "globex")
        }
        await tenancy.close()
        return self

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._socket.getsockname()[1]}/v1"

    def client(self, tenant: str = "acme", **kwargs) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=self.keys[tenant], **kwargs)

    def worker_env(self, **batch_settings) -> dict[str, str]:
        """LLMESH_* for a worker with the gateway's settings and ``batch_settings``."""
        fields = self.settings.model_dump(mode="json", exclude={"service_name", "models", "variant_addrs"})
        # Lists and objects as JSON, as pydantic-settings reads them from the environment.
        env = {
            f"LLMESH_{name.upper()}": value if isinstance(value, str) else json.dumps(value)
            for name, value in fields.items()
            if value not in (None, "")
        }
        env.update({f"LLMESH_{name.upper()}": str(value) for name, value in batch_settings.items()})
        return env

    async def start_worker(self, **batch_settings) -> BatchWorker:
        log_path = self.directory / f"worker-{len(self.workers)}.log"
        worker = BatchWorker(self.worker_env(**batch_settings), log_path)
        self.workers.append(worker)
        return await asyncio.to_thread(worker.start)

    async def stop(self) -> None:
        await asyncio.gather(*(asyncio.to_thread(worker.stop) for worker in self.workers))
        self._server.should_exit = True
        await self._serving
        self._socket.close()
        await self.load.close()
        await self.app.state.batches.close()
        await self.app.state.guard.close()
        await self.pipeline.close()
        await self._upstream.stop(None)
