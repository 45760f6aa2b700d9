"""`llmesh`: the operator command line."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import typer
from rich.console import Console
from rich.table import Table

from cli.audit import app as audit_app
from cli.batch import app as batch_app
from cli.bench import app as bench_app
from cli.certs import app as certs_app
from cli.experiments import app as experiments_app
from cli.keys import app as keys_app
from cli.models import app as models_app
from cli.router import app as router_app
from cli.safety import app as safety_app
from mesh.collector import CollectorSettings
from mesh.settings import REPO_ROOT, load_settings

app = typer.Typer(help="llmesh operator commands", no_args_is_help=True)
app.add_typer(router_app, name="router")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
app.add_typer(safety_app, name="safety")
app.add_typer(certs_app, name="certs")
app.add_typer(experiments_app, name="experiments")
app.add_typer(bench_app, name="bench")
app.add_typer(batch_app, name="batch")
app.add_typer(models_app, name="models")
console = Console()


@app.command()
def up(
    free_ports: bool = typer.Option(False, help="pick free ports instead of the documented defaults"),
    triton_timeout: float = typer.Option(300.0, help="seconds to wait for Triton to load its models"),
    tls: bool = typer.Option(False, help="mutual TLS between the gateway and the services (fresh certificates)"),
    deployment: list[str] = typer.Option(
        [],
        help="another deployment of a service for A/B tests, SERVICE:NAME[:VAR=VALUE,...] (repeatable), "
        "e.g. router:b:LLMESH_PERPLEXITY_THRESHOLD=5",
    ),
    run_dir: Path | None = typer.Option(None, help="logs, data and status.json of this stack (default .run/)"),
    replicas: list[str] = typer.Option(
        [],
        help="run SERVICE=N processes of a gRPC service, balanced with outlier ejection (repeatable), e.g. inference=2",
    ),
    colocate: bool = typer.Option(
        False, help="run the four services inside the gateway's process: no network hop between them (one machine)"
    ),
) -> None:
    """Start the whole stack (Redis, collector, Triton, services, gateway) until Ctrl-C; a
    process that exits is restarted with backoff (`llmesh status` shows the restarts)."""
    from tools.stack import DEFAULT_RUN_DIR, SERVICES, Deployment, Ports, Stack, StackError

    try:
        deployments = [Deployment.parse(spec) for spec in deployment]
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--deployment") from None
    counts = {}
    for spec in replicas:
        name, _, count = spec.partition("=")
        if name not in SERVICES or not count.isdigit() or int(count) < 1:
            raise typer.BadParameter(
                f"expected SERVICE=N with SERVICE one of {', '.join(SERVICES)}, got {spec!r}", param_hint="--replicas"
            )
        counts[name] = int(count)
    if colocate and any(count > 1 for count in counts.values()):
        raise typer.BadParameter("the co-located services run once each, inside the gateway", param_hint="--replicas")

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    # SIGTERM (a supervisor, `docker stop`) stops the stack like Ctrl-C; SIGINT is re-armed
    # because a shell starting us in the background ignores it.
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)

    stack = Stack(
        ports=Ports.free() if free_ports else Ports(),
        on_ready=lambda name, seconds: console.print(f"[green]ready[/]  {name:<12} {seconds:6.1f}s"),
        tls=tls,
        deployments=deployments,
        replicas=counts,
        run_dir=run_dir or DEFAULT_RUN_DIR,
        colocate=colocate,
    )
    console.print(f"starting llmesh (logs in {stack.run_dir / 'logs'}) ...")
    try:
        stack.start(triton_timeout_s=triton_timeout)
    except StackError as error:
        console.print(f"[red]failed to start:[/] {error}")
        raise typer.Exit(1) from None
    url = stack.gateway_url
    # API keys are required: a development tenant's key, stored hashed like any other.
    key = stack.create_key("dev", name="llmesh up")
    console.print(
        f"\n[bold]llmesh is up[/]: OpenAI-compatible API at {url}/v1, gRPC edge at 127.0.0.1:{stack.ports.gateway_grpc}\n"
        f"API key of tenant 'dev' (more: `llmesh keys create TENANT`):\n  export LLMESH_API_KEY={key}\n"
        f'try:\n  curl -N {url}/v1/chat/completions -H "Authorization: Bearer $LLMESH_API_KEY" \\\n'
        "    -H 'Content-Type: application/json' \\\n"
        '    -d \'{"model": "smollm2-135m-instruct", "stream": true, "messages": [{"role": "user", '
        '"content": "Explain what a Python list comprehension is."}]}\'\n'
        "then `llmesh trace <x-trace-id header>` to see the request's trace. Ctrl-C stops everything.",
        # Commands must stay copy-pasteable whatever the terminal width.
        soft_wrap=True,
    )
    try:
        while True:
            for event in stack.supervise():
                console.print(f"[yellow]supervisor[/] {event}", soft_wrap=True)
            time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("stopping ...")
    finally:
        stack.stop()


@app.command()
def status(
    run_dir: Path = typer.Option(REPO_ROOT / ".run", help="the run directory of the stack (`llmesh up --run-dir`)"),
    as_json: bool = typer.Option(False, "--json", help="print the status as JSON"),
) -> None:
    """Each process of a running `llmesh up`: pid, state, restarts by the supervisor, last exit."""
    path = run_dir / "status.json"
    if not path.exists():
        console.print(f"no stack status at {path} (is `llmesh up` running?)")
        raise typer.Exit(1)
    status_ = json.loads(path.read_text())
    if as_json:
        print(json.dumps(status_, indent=2))
        return
    table = Table("process", "pid", "state", "restarts", "last exit")
    for name, process in status_["processes"].items():
        last_exit = "" if process["last_exit"] is None else str(process["last_exit"])
        table.add_row(name, str(process["pid"]), process["state"], str(process["restarts"]), last_exit)
    console.print(f"gateway {status_['gateway_url']}")
    console.print(table)


@app.command()
def trace(
    trace_id: str,
    as_json: bool = typer.Option(False, "--json", help="print the spans as JSON"),
    wait: float = typer.Option(3.0, help="seconds to wait for spans still being exported"),
) -> None:
    """Print one trace as a waterfall, from the local trace collector."""
    from cli.waterfall import waterfall

    settings = load_settings(CollectorSettings)
    url = f"http://{settings.collector_addr}/v1/traces/{trace_id.lower()}"
    deadline = time.monotonic() + wait
    while True:
        try:
            spans = httpx.get(url, timeout=5.0).raise_for_status().json()["spans"]
        except httpx.HTTPError as error:
            console.print(f"[red]cannot read traces from {url}:[/] {error}")
            raise typer.Exit(2) from None
        if spans or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if not spans:
        console.print(f"no spans for trace {trace_id}")
        raise typer.Exit(1)
    if as_json:
        print(json.dumps(spans, indent=2))
    else:
        console.print(waterfall(spans), soft_wrap=True)
