"""`llmesh audit verify`: check the audit trail's hash chain, in Redis or in the files."""

from __future__ import annotations

from pathlib import Path

import redis
import typer
from rich.console import Console

from gateway import audit
from gateway.settings import GatewaySettings
from mesh.settings import load_settings

app = typer.Typer(help="the audit trail", no_args_is_help=True)
console = Console()


@app.command()
def verify(
    files: Path = typer.Option(None, help="verify the rotated files in this directory instead of Redis"),
    redis_url: str = typer.Option(None, "--redis-url", help="default: LLMESH_REDIS_URL"),
) -> None:
    """Exit 0 if the chain is intact; else name each edited, inserted or deleted record and exit 1."""
    if files is not None:
        entries = audit.file_entries(files)
        # Retention deletes whole old files: the oldest kept record anchors the chain.
        first = entries[0].record if entries else None
        anchor = (int(first["seq"]) - 1, first["prev"]) if first and int(first.get("seq", 1)) > 1 else None
        count, problems = audit.verify(entries, anchor, None)
        source = str(files)
    else:
        settings = load_settings(GatewaySettings, **({"redis_url": redis_url} if redis_url else {}))
        client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        anchor, head = audit.redis_anchor_and_head(client)
        count, problems = audit.verify(audit.redis_entries(client), anchor, head)
        source = f"{settings.redis_url} stream {audit.STREAM}"
    for problem in problems:
        console.print(f"[red]{problem}[/]", soft_wrap=True)
    if problems:
        console.print(f"audit chain BROKEN: {len(problems)} problem(s) in {count} records ({source})")
        raise typer.Exit(1)
    console.print(f"audit chain intact: {count} records ({source})")
