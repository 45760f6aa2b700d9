"""`llmesh certs`: a local CA and one certificate per process for mutual TLS (tools/certs.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from tools.certs import DEFAULT_DIR, SERVICES, generate

app = typer.Typer(help="certificates for mutual TLS between llmesh services", no_args_is_help=False)


@app.callback(invoke_without_command=True)
def certs(
    out: Path = typer.Option(DEFAULT_DIR, help="where to write ca.pem and <service>.pem / <service>-key.pem"),
    host: list[str] = typer.Option(["localhost", "127.0.0.1"], help="extra names/IPs every certificate is valid for"),
) -> None:
    """Create a local CA and a certificate per service (replaces what is in OUT)."""
    generate(out, SERVICES, host)
    typer.echo(f"wrote a CA and certificates for {', '.join(SERVICES)} to {out}")
    typer.echo(
        f"enable with: LLMESH_TLS_ENABLED=true LLMESH_TLS_CA_FILE={out}/ca.pem "
        f"LLMESH_TLS_CERT_FILE={out}/<service>.pem LLMESH_TLS_KEY_FILE={out}/<service>-key.pem"
    )
