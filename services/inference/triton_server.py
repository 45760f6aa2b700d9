"""Prepare and run the real Triton Inference Server shipped inside the `nvidia-pytriton` wheel.

    python -m services.inference.triton_server [--grpc-port 8001] [--otlp-endpoint URL] ...

runs it in the foreground with `services/inference/model_repository`. `TritonServer` does the
same from Python (tests, `llmesh up`). docs/ARCHITECTURE.md ("Two Python environments") and the
comments below say why each piece of the environment is needed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_REPOSITORY = Path(__file__).resolve().parent / "model_repository"
DEFAULT_MODELS = ("smollm2-student", "smollm2-135m-instruct", "llmesh-small", "all-minilm-l6-v2")
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "tritonserver"
# The engine's own environment (vLLM's CPU build, numpy 2), made by `make engine`; in NVIDIA's
# vLLM image the engine is in the image's Python and no such environment exists.
DEFAULT_ENGINE_VENV = REPO_ROOT / ".venv-engine"
# model.py reads this: the python backend stub runs its interpreter isolated (PYTHONPATH ignored).
ENGINE_SYS_PATH_ENV = "LLMESH_ENGINE_SYS_PATH"
# ... and this: the interpreter of that environment. vLLM inspects a model class it has not seen
# in a `sys.executable -m ...` subprocess, and the stub's sys.executable is the system Python,
# which has no vLLM ("Model architectures [...] failed to be inspected" on a fresh machine).
ENGINE_PYTHON_ENV = "LLMESH_ENGINE_PYTHON"


class TritonStartError(RuntimeError):
    """tritonserver exited or did not become ready; the message carries the end of its log."""


def _wheel_paths() -> tuple[Path, Path]:
    """(pytriton/tritonserver, nvidia_pytriton.libs) of the installed wheel."""
    import pytriton

    server = Path(pytriton.__file__).resolve().parent / "tritonserver"
    libs = server.parent.parent / "nvidia_pytriton.libs"
    if not (server / "bin" / "tritonserver").is_file():
        raise TritonStartError(f"no tritonserver binary under {server}; is nvidia-pytriton installed?")
    return server, libs


def prepare_server_dir(cache_dir: Path | str = DEFAULT_CACHE_DIR) -> Path:
    """Copy the wheel's server into `cache_dir` once, with the stub for this Python in place.

    The wheel keeps one stub per Python minor version outside `backends/python/`; the python
    backend only looks next to libtriton_python.so, so it must be copied there (a working copy
    keeps the installed wheel untouched). The copy is keyed by the wheel's location and the
    Python version and made atomically, so concurrent test processes never see half a copy.
    """
    cache_dir = Path(cache_dir)
    src, _ = _wheel_paths()
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    stamp = f"{src}\npython {py}\n{(src / 'bin' / 'tritonserver').stat().st_mtime_ns}\n"
    marker = cache_dir / ".llmesh-prepared"
    if marker.is_file() and marker.read_text() == stamp:
        return cache_dir

    stub = src / "python_backend_stubs" / py / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonStartError(f"the wheel has no python backend stub for Python {py} ({stub})")
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}-", dir=cache_dir.parent))
    try:
        work = tmp / "server"
        shutil.copytree(src, work, ignore=shutil.ignore_patterns("python_backend_stubs", "__pycache__"))
        shutil.copy2(stub, work / "backends" / "python" / "triton_python_backend_stub")
        (work / marker.name).write_text(stamp)
        if marker.is_file() and marker.read_text() == stamp:
            return cache_dir  # another process finished first; never move a copy in use
        old = cache_dir.parent / f".{cache_dir.name}-old-{os.getpid()}"
        if cache_dir.exists():  # stale (another wheel or Python)
            cache_dir.rename(old)
        try:
            work.rename(cache_dir)
        except OSError:
            # Another process won the race; its copy is equally good.
            if not (marker.is_file() and marker.read_text() == stamp):
                raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("prepared tritonserver in %s", cache_dir)
    return cache_dir


def engine_site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def engine_sys_path(venv: Path | None = DEFAULT_ENGINE_VENV) -> list[str]:
    """What the engine models' stubs put first on sys.path: the engine's environment, then the
    repository root (for ``services.inference.triton_models`` and ``mesh.semconv``).

    Never this process's own environment: its numpy<2 and older transformers would shadow the
    engine's. Without an engine environment (NVIDIA's vLLM image) only the repository is added.
    """
    entries = []
    if venv is not None and engine_site_packages(venv).is_dir():
        entries.append(str(engine_site_packages(venv)))
    entries.append(str(REPO_ROOT))
    return entries


def server_env(base: Mapping[str, str] | None = None, engine_venv: Path | None = DEFAULT_ENGINE_VENV) -> dict[str, str]:
    """The environment tritonserver and its python stubs need, on top of `base` (os.environ)."""
    env = dict(os.environ if base is None else base)
    _, libs = _wheel_paths()
    # The stub links libpython3.11.so.1.0. Without this interpreter's LIBDIR first, the loader
    # picks Debian's 3.11.2 under pyenv's 3.11.7 stdlib and the model dies at start with
    # "'_thread.RLock' object has no attribute '_recursion_count'".
    ld = [sysconfig.get_config_var("LIBDIR") or "", str(libs)]
    ld += [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(dict.fromkeys(p for p in ld if p))
    env[ENGINE_SYS_PATH_ENV] = os.pathsep.join(engine_sys_path(engine_venv))
    if engine_venv is not None and (engine_venv / "bin" / "python").is_file():
        env[ENGINE_PYTHON_ENV] = str(engine_venv / "bin" / "python")
    # Each engine is its own stub process on a machine with few cores: one OpenMP thread each,
    # or they fight over the cores (vLLM's CPU worker also drops to one torch thread by itself).
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Weights are local directories; never let a stub wait on the Hub or report usage.
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    return env


def _is_error_line(line: str) -> bool:
    """Triton's own error lines (E<mmdd> ...), and Python errors and tracebacks from the stubs.

    A stub that fails can also crash the server on its way out; the native frames of that
    backtrace (``File "<unknown>", line 0, in ...``) are left out, or they crowd out the cause."""
    stripped = line.lstrip()
    if stripped.startswith('File "'):
        return '.py", line ' in stripped
    return (
        (len(line) > 5 and line[0] == "E" and line[1:5].isdigit())
        or stripped.startswith(("Traceback", "raise "))
        or "Error:" in line
        or "ERROR" in line
    )


def trace_args(otlp_endpoint: str | None) -> list[str]:
    """tritonserver's OpenTelemetry trace mode, exporting to the collector at ``otlp_endpoint``.

    Triton records a request when its caller sent a traceparent, and no other: ``rate=0`` is
    Triton's setting for following propagated context only. The inference service sends one
    for the requests llmesh samples (``LLMESH_TRACE_SAMPLE_RATIO``), so Triton's spans are
    sampled with the rest of the trace; with a rate, Triton would also start traces of its own
    for the requests llmesh left out, and pay for them (a third of its throughput at one
    request at a time here, docs/PERFORMANCE.md)."""
    if not otlp_endpoint:
        return []
    url = otlp_endpoint.rstrip("/")
    if not url.endswith("/v1/traces"):
        url += "/v1/traces"
    settings = [
        "mode=opentelemetry",
        "rate=0",
        "count=-1",
        "level=TIMESTAMPS",
        f"opentelemetry,url={url}",
        "opentelemetry,resource=service.name=triton",
    ]
    return [arg for setting in settings for arg in ("--trace-config", setting)]


def _die_with_parent_hook() -> Callable[[], None]:
    """A preexec_fn that makes the kernel SIGTERM tritonserver when its parent dies.

    Being in its own session, tritonserver would otherwise outlive a test run or launcher that
    was killed (no finally/atexit runs on SIGKILL or an unhandled SIGTERM) and keep its ports.
    prctl is looked up here, in the parent: between fork and exec the child must not import or
    dlopen (another thread may hold those locks). Linux ties the signal to the thread that
    started the child, so start from a long-lived thread.
    """
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)

    def hook() -> None:
        prctl(pr_set_pdeathsig, sigterm)

    return hook


class TritonServer:
    """One `tritonserver` process serving `model_repository` with explicit model control.

    with TritonServer(grpc_port=8001) as triton:   # starts and waits until every model is ready
        ...
    """

    def __init__(
        self,
        *,
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        address: str = "127.0.0.1",
        models: Sequence[str] = DEFAULT_MODELS,
        model_repository: Path | str = MODEL_REPOSITORY,
        otlp_endpoint: str | None = None,
        log_file: Path | str | None = None,
        cache_dir: Path | str = DEFAULT_CACHE_DIR,
        env: Mapping[str, str] | None = None,
        log_verbose: int = 0,
        exit_timeout_s: int = 10,
        die_with_parent: bool = True,
    ) -> None:
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port
        self.address = address
        self.models = list(models)
        self.model_repository = Path(model_repository).resolve()
        self.otlp_endpoint = otlp_endpoint
        self.cache_dir = Path(cache_dir)
        self.log_file = Path(log_file) if log_file else self.cache_dir.parent / f"tritonserver-{grpc_port}.log"
        self.extra_env = dict(env or {})
        self.log_verbose = log_verbose
        self.exit_timeout_s = exit_timeout_s
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None
        self._started_at = 0.0

    @property
    def grpc_url(self) -> str:
        host = "127.0.0.1" if self.address in ("0.0.0.0", "") else self.address
        return f"{host}:{self.grpc_port}"

    def command(self, server_dir: Path) -> list[str]:
        cmd = [
            str(server_dir / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={server_dir / 'backends'}",
            f"--cache-directory={server_dir / 'caches'}",
            "--model-control-mode=explicit",
            # config.pbtxt is complete; auto-complete would start one extra stub per model just
            # to ask model.py for its config, importing torch once more on every start.
            "--disable-auto-complete-config",
            *(f"--load-model={m}" for m in self.models),
            f"--http-address={self.address}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.address}",
            f"--grpc-port={self.grpc_port}",
            "--allow-metrics=true",
            f"--metrics-address={self.address}",
            f"--metrics-port={self.metrics_port}",
            # No GPU here: GPU metrics only add DCGM warnings at start.
            "--allow-gpu-metrics=false",
            "--strict-readiness=true",
            "--exit-on-error=true",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--log-verbose={self.log_verbose}",
        ]
        return cmd + trace_args(self.otlp_endpoint)

    def start(self) -> TritonServer:
        if self.proc is not None and self.proc.poll() is None:
            return self
        server_dir = prepare_server_dir(self.cache_dir)
        # extra_env first, the required entries on top: a caller passing its whole environment
        # (LD_LIBRARY_PATH included) must not undo the libpython ordering.
        env = server_env({**os.environ, **self.extra_env})
        cmd = self.command(server_dir)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting tritonserver (log %s): %s", self.log_file, " ".join(cmd))
        with open(self.log_file, "ab") as out:
            self._started_at = time.monotonic()
            # Own process group: stop() can then also reach the python backend stubs if
            # tritonserver itself has to be killed before it reaps them.
            self.proc = subprocess.Popen(
                cmd,
                env=env,
                cwd=REPO_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent_hook() if self.die_with_parent else None,
            )
        return self

    def log_tail(self, n: int = 40) -> str:
        """The end of the server's log, led by the errors it holds: a model that failed to load
        (an engine that could not start) logs its traceback far above the last lines."""
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        errors = [line for line in lines if _is_error_line(line)]
        tail = lines[-n:]
        if not errors:
            return "\n".join(tail)
        return "\n".join(["errors in the log:", *errors[-n:], "", "end of the log:", *tail[-10:]])

    def wait_ready(self, timeout: float = 300.0) -> float:
        """Block until the server is live and every model is ready; returns seconds since start."""
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        if self.proc is None:
            raise TritonStartError("tritonserver was not started")
        deadline = time.monotonic() + timeout
        # gRPC's reconnect backoff (1s, 1.6s, 2.6s, ...) while the port is still closed would
        # add seconds to every start; poll with a short, flat one instead.
        client = grpcclient.InferenceServerClient(
            self.grpc_url,
            channel_args=[
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 250),
            ],
        )
        try:
            while True:
                if self.proc.poll() is not None:
                    raise TritonStartError(
                        f"tritonserver exited with {self.proc.returncode}; log {self.log_file}:\n{self.log_tail()}"
                    )
                try:
                    if client.is_server_live(client_timeout=2) and all(
                        client.is_model_ready(m, client_timeout=2) for m in self.models
                    ):
                        self.startup_s = time.monotonic() - self._started_at
                        log.info("tritonserver ready in %.1fs", self.startup_s)
                        return self.startup_s
                except InferenceServerException:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise TritonStartError(
                        f"tritonserver not ready after {timeout:.0f}s; log {self.log_file}:\n{self.log_tail()}"
                    )
                time.sleep(0.25)
        finally:
            client.close()

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM (Triton then drains in-flight requests for up to exit_timeout_s), then kill."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        timeout = self.exit_timeout_s + 5 if timeout is None else timeout
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver did not exit %.0fs after SIGTERM; killing it", timeout)
                proc.kill()
                proc.wait(10)
        # Stubs left behind by a killed server are ours (same session); reap them by group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.returncode

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    # Defaults come from the mesh settings, so the same LLMESH_TRITON_*_ADDR and
    # LLMESH_OTLP_ENDPOINT that the services read also place Triton.
    from mesh.logging import setup_logging
    from mesh.settings import MeshSettings, load_settings

    settings = load_settings(MeshSettings, service_name="triton")
    setup_logging(settings.service_name, settings.log_level)

    def port(addr: str) -> int:
        return int(addr.rpartition(":")[2])

    p = argparse.ArgumentParser(prog="python -m services.inference.triton_server", description=__doc__.split("\n")[0])
    p.add_argument(
        "--address",
        default=settings.triton_grpc_addr.rpartition(":")[0],
        help="listen address for HTTP, gRPC and metrics",
    )
    p.add_argument("--http-port", type=int, default=port(settings.triton_http_addr))
    p.add_argument("--grpc-port", type=int, default=port(settings.triton_grpc_addr))
    p.add_argument("--metrics-port", type=int, default=port(settings.triton_metrics_addr))
    p.add_argument(
        "--model",
        action="append",
        dest="models",
        help=f"model to load (repeatable); default: {', '.join(DEFAULT_MODELS)}",
    )
    p.add_argument("--model-repository", default=str(MODEL_REPOSITORY))
    p.add_argument(
        "--otlp-endpoint",
        default=settings.otlp_endpoint or None,
        help="OTLP/HTTP base URL (default: LLMESH_OTLP_ENDPOINT); turns on Triton's tracing",
    )
    p.add_argument("--log-file", default=None)
    p.add_argument("--log-verbose", type=int, default=0)
    p.add_argument("--ready-timeout", type=float, default=300.0)
    args = p.parse_args(argv)

    server = TritonServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        address=args.address,
        models=args.models or DEFAULT_MODELS,
        model_repository=args.model_repository,
        otlp_endpoint=args.otlp_endpoint,
        log_file=args.log_file,
        log_verbose=args.log_verbose,
    )
    ready = False
    stopping = False

    def _on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if not ready:  # still inside wait_ready(): leave it; `finally` stops the server
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        server.start()
        server.wait_ready(args.ready_timeout)
        ready = True
        print(
            f"tritonserver ready: grpc {server.grpc_url}, http {args.address}:{server.http_port}, "
            f"metrics {args.address}:{server.metrics_port} ({server.startup_s:.1f}s; log {server.log_file})",
            flush=True,
        )
        while not stopping and server.proc is not None and server.proc.poll() is None:
            time.sleep(0.5)
        if server.proc is not None and server.proc.returncode is not None:
            print(
                f"tritonserver exited with {server.proc.returncode}; log {server.log_file}:\n{server.log_tail()}",
                file=sys.stderr,
            )
            return server.proc.returncode or 1
        return 0
    except TritonStartError as e:
        print(e, file=sys.stderr)
        return 1
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
