"""`llmesh batch submit|status|results|list|cancel`: OpenAI batches on the gateway, for operators
(the same REST API the openai client uses, with an API key)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gateway.settings import GatewaySettings
from mesh.settings import load_settings

app = typer.Typer(help="OpenAI batches: submit a JSONL file, follow it, fetch its results", no_args_is_help=True)
console = Console()

TERMINAL = ("completed", "failed", "expired", "cancelled")
_API_KEY = typer.Option(..., "--api-key", envvar="LLMESH_API_KEY", help="a tenant's key (default: LLMESH_API_KEY)")
_BASE_URL = typer.Option(None, "--base-url", help="the gateway's API (default: http://LLMESH_GATEWAY_HTTP_ADDR/v1)")


def _client(base_url: str | None, api_key: str) -> httpx.Client:
    url = base_url or f"http://{load_settings(GatewaySettings).gateway_http_addr}/v1"
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60)


def _checked(response: httpx.Response) -> httpx.Response:
    if response.is_error:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        console.print(f"[red]{response.status_code}:[/] {message}", soft_wrap=True)
        raise typer.Exit(1)
    return response


def _endpoint_of(path: Path) -> str:
    """The url of the file's first request (the gateway checks the rest)."""
    with open(path, "rb") as source:
        for raw in source:
            if raw.strip():
                try:
                    return json.loads(raw).get("url", "")
                except (ValueError, AttributeError):
                    return ""
    return ""


def _follow(client: httpx.Client, batch: dict, interval_s: float) -> dict:
    """A progress bar until the batch finishes."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(batch["status"], total=batch["request_counts"]["total"])
        while True:
            counts = batch["request_counts"]
            failed = f", {counts['failed']} failed" if counts["failed"] else ""
            progress.update(
                task, completed=counts["completed"] + counts["failed"], description=f"{batch['status']}{failed}"
            )
            if batch["status"] in TERMINAL:
                return batch
            time.sleep(interval_s)
            batch = _checked(client.get(f"/batches/{batch['id']}")).json()


def _summary(batch: dict) -> None:
    counts = batch["request_counts"]
    colour = "green" if batch["status"] == "completed" else "yellow"
    console.print(
        f"batch [bold]{batch['id']}[/]: [{colour}]{batch['status']}[/], {counts['completed']} completed, "
        f"{counts['failed']} failed of {counts['total']}",
        soft_wrap=True,
    )
    for field in ("output_file_id", "error_file_id"):
        if batch.get(field):
            console.print(f"  {field}: {batch[field]}")
    for error in (batch.get("errors") or {}).get("data") or []:
        console.print(f"  [red]{error.get('code')}[/]: {error.get('message')}")


@app.command()
def submit(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="a JSONL file of requests"),
    endpoint: str = typer.Option(None, help="default: the url of the file's first request"),
    wait: bool = typer.Option(True, help="follow the batch with a progress bar until it finishes"),
    interval: float = typer.Option(1.0, help="seconds between polls"),
    api_key: str = _API_KEY,
    base_url: str = _BASE_URL,
) -> None:
    """Upload FILE and start a batch of its requests."""
    with _client(base_url, api_key) as client, open(path, "rb") as content:
        uploaded = _checked(client.post("/files", files={"file": (path.name, content)}, data={"purpose": "batch"}))
        body = {
            "input_file_id": uploaded.json()["id"],
            "endpoint": endpoint or _endpoint_of(path),
            "completion_window": "24h",
        }
        batch = _checked(client.post("/batches", json=body)).json()
        console.print(f"submitted batch [bold]{batch['id']}[/] ({batch['request_counts']['total']} requests)")
        if wait:
            batch = _follow(client, batch, interval)
    _summary(batch)
    if batch["status"] == "failed":
        raise typer.Exit(1)


@app.command()
def status(
    batch_id: str,
    watch: bool = typer.Option(False, help="follow it with a progress bar until it finishes"),
    interval: float = typer.Option(1.0, help="seconds between polls"),
    as_json: bool = typer.Option(False, "--json", help="print the batch object"),
    api_key: str = _API_KEY,
    base_url: str = _BASE_URL,
) -> None:
    """A batch's status and request counts."""
    with _client(base_url, api_key) as client:
        batch = _checked(client.get(f"/batches/{batch_id}")).json()
        if watch:
            batch = _follow(client, batch, interval)
    if as_json:
        print(json.dumps(batch, indent=2))
    else:
        _summary(batch)


@app.command()
def results(
    batch_id: str,
    out: Path = typer.Option(Path("."), help="directory for <batch id>_output.jsonl and <batch id>_error.jsonl"),
    api_key: str = _API_KEY,
    base_url: str = _BASE_URL,
) -> None:
    """Download a finished batch's output and error files."""
    with _client(base_url, api_key) as client:
        batch = _checked(client.get(f"/batches/{batch_id}")).json()
        if batch["status"] not in TERMINAL:
            console.print(f"batch {batch_id} is {batch['status']}; its results come when it finishes")
            raise typer.Exit(1)
        out.mkdir(parents=True, exist_ok=True)
        for field, kind in (("output_file_id", "output"), ("error_file_id", "error")):
            if not batch.get(field):
                continue
            target = out / f"{batch_id}_{kind}.jsonl"
            content = _checked(client.get(f"/files/{batch[field]}/content")).content
            target.write_bytes(content)
            lines = content.count(b"\n")
            console.print(f"{kind}: {target} ({lines} lines)")
    _summary(batch)


@app.command("list")
def list_batches(
    limit: int = typer.Option(20, min=1, max=100),
    api_key: str = _API_KEY,
    base_url: str = _BASE_URL,
) -> None:
    """The tenant's latest batches."""
    with _client(base_url, api_key) as client:
        page = _checked(client.get("/batches", params={"limit": limit})).json()
    table = Table()
    # Ids stay whole (copy-pasteable) however narrow the terminal.
    table.add_column("batch", no_wrap=True)
    for name in ("status", "completed", "failed", "total", "created"):
        table.add_column(name)
    for batch in page["data"]:
        counts = batch["request_counts"]
        created = time.strftime("%m-%d %H:%M", time.localtime(batch["created_at"]))
        table.add_row(
            batch["id"], batch["status"], str(counts["completed"]), str(counts["failed"]), str(counts["total"]), created
        )
    console.print(table)


@app.command()
def cancel(batch_id: str, api_key: str = _API_KEY, base_url: str = _BASE_URL) -> None:
    """Cancel a batch: requests not yet started are not run (they go to the error file)."""
    with _client(base_url, api_key) as client:
        _summary(_checked(client.post(f"/batches/{batch_id}/cancel")).json())
