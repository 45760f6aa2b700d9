"""`llmesh models list|load|shift|rollback|unload|breakers`: model versions on Triton, their
traffic split, and the inference circuit breakers, through the gateway's admin API (/admin/models,
/admin/breakers) with LLMESH_ADMIN_KEY. With --json, stdout holds exactly the API's JSON answer.

    llmesh models load llmesh-small 2          # beside version 1, no traffic yet
    llmesh models shift llmesh-small 2=10      # 10% to version 2, the rest to the stable one
    llmesh models shift llmesh-small 2=100
    llmesh models rollback llmesh-small        # all traffic back to version 1 at once, unload 2
"""

from __future__ import annotations

import json

import httpx
import typer
from rich.console import Console
from rich.table import Table

from mesh.settings import MeshSettings, load_settings

app = typer.Typer(help="model versions: load, shift traffic, roll back; circuit breakers", no_args_is_help=True)
out = Console()
err = Console(stderr=True)
_GATEWAY = typer.Option(None, "--gateway-url", help="default: http://LLMESH_GATEWAY_HTTP_ADDR")
_ADMIN_KEY = typer.Option(None, "--admin-key", envvar="LLMESH_ADMIN_KEY", help="default: LLMESH_ADMIN_KEY")
_JSON = typer.Option(False, "--json", help="print the API's JSON answer")
# A load starts an engine; the gateway allows it 330 s.
_TIMEOUT_S = 340.0


def _request(method: str, path: str, gateway_url: str | None, admin_key: str | None, body: dict | None = None) -> dict:
    if not admin_key:
        err.print("[red]an admin key is needed:[/] set LLMESH_ADMIN_KEY or pass --admin-key")
        raise typer.Exit(2)
    base = gateway_url or f"http://{load_settings(MeshSettings).gateway_http_addr}"
    try:
        response = httpx.request(
            method,
            f"{base.rstrip('/')}/admin{path}",
            json=body,
            headers={"authorization": f"Bearer {admin_key}"},
            timeout=_TIMEOUT_S,
        )
    except httpx.HTTPError as error:
        err.print(f"[red]the gateway at {base} could not be reached:[/] {error}")
        raise typer.Exit(1) from None
    answer = response.json()
    if response.status_code != 200:
        failure = answer.get("error", {})
        code = failure.get("code") or failure.get("type")
        err.print(f"[red]{response.status_code} {code}:[/] {failure.get('message')}")
        raise typer.Exit(1)
    return answer


def _versions_table(models: list[dict]) -> Table:
    table = Table("model", "version", "state", "traffic", "stable", "reason")
    for entry in models:
        for version in entry["versions"]:
            traffic = f"{version['percent']}%" if entry["split_set"] else "(Triton's choice)"
            table.add_row(
                entry["model"],
                str(version["version"]),
                version["state"],
                traffic,
                "yes" if version["stable"] else "",
                version["reason"],
            )
    return table


def _show(answer: dict, as_json: bool, summary: str = "") -> None:
    if as_json:
        print(json.dumps(answer, indent=2))
        return
    if summary:
        out.print(summary)
    out.print(_versions_table([answer["model"]]))


@app.command("list")
def list_(
    model: str = typer.Argument("", help="one model (default: every generation model)"),
    as_json: bool = _JSON,
    gateway_url: str = _GATEWAY,
    admin_key: str = _ADMIN_KEY,
) -> None:
    """Each model's versions on Triton, their state and share of the traffic."""
    answer = _request("GET", f"/models?model={model}", gateway_url, admin_key)
    if as_json:
        print(json.dumps(answer, indent=2))
    else:
        out.print(_versions_table(answer["data"]))


@app.command()
def load(
    model: str,
    version: int = typer.Argument(..., min=1),
    model_dir: str = typer.Option("", help="the version's weights (default: the model's own model_dir)"),
    as_json: bool = _JSON,
    gateway_url: str = _GATEWAY,
    admin_key: str = _ADMIN_KEY,
) -> None:
    """Load VERSION of MODEL beside the serving one (it gets no traffic until `shift`)."""
    with err.status(f"loading {model} version {version} ..."):
        answer = _request(
            "POST", f"/models/{model}/versions", gateway_url, admin_key, {"version": version, "model_dir": model_dir}
        )
    _show(answer, as_json, f"{model} version {version} ready after {answer['seconds']:.1f} s")


def _parse_percent(shares: list[str]) -> dict[int, int]:
    percent = {}
    for share in shares:
        version, _, value = share.partition("=")
        if not version.isdigit() or not value.isdigit():
            raise typer.BadParameter(f"expected VERSION=PERCENT, got {share!r}", param_hint="SHARES")
        percent[int(version)] = int(value)
    return percent


@app.command()
def shift(
    model: str,
    shares: list[str] = typer.Argument(..., help="VERSION=PERCENT ...; a single one leaves the rest to the stable"),
    as_json: bool = _JSON,
    gateway_url: str = _GATEWAY,
    admin_key: str = _ADMIN_KEY,
) -> None:
    """Set the traffic split, e.g. `shift llmesh-small 2=10`, then 2=50, then 2=100."""
    percent = _parse_percent(shares)
    if sum(percent.values()) < 100:
        current = _request("GET", f"/models?model={model}", gateway_url, admin_key)["data"][0]
        stable = next((v["version"] for v in current["versions"] if v["stable"]), None)
        if stable is None or stable in percent:
            err.print("[red]the percents must add up to 100[/] (no stable version to give the rest to)")
            raise typer.Exit(2)
        percent[stable] = 100 - sum(percent.values())
    answer = _request("PUT", f"/models/{model}/traffic", gateway_url, admin_key, {"percent": percent})
    _show(answer, as_json)


@app.command()
def rollback(model: str, as_json: bool = _JSON, gateway_url: str = _GATEWAY, admin_key: str = _ADMIN_KEY) -> None:
    """All of MODEL's traffic back to its stable version at once, then unload the others."""
    with err.status(f"rolling {model} back ..."):
        answer = _request("POST", f"/models/{model}/rollback", gateway_url, admin_key)
    unloaded = ", ".join(str(v) for v in answer["unloaded"]) or "none"
    _show(
        answer,
        as_json,
        f"traffic on the stable version after {answer['traffic_seconds']:.1f} s; "
        f"unloaded {unloaded} after {answer['seconds']:.1f} s",
    )


@app.command()
def unload(
    model: str,
    version: int = typer.Argument(..., min=1),
    as_json: bool = _JSON,
    gateway_url: str = _GATEWAY,
    admin_key: str = _ADMIN_KEY,
) -> None:
    """Unload a VERSION that gets no traffic (the old one, once the new one has all of it)."""
    answer = _request("DELETE", f"/models/{model}/versions/{version}", gateway_url, admin_key)
    _show(answer, as_json, f"{model} version {version} unloaded after {answer['seconds']:.1f} s")


@app.command()
def breakers(as_json: bool = _JSON, gateway_url: str = _GATEWAY, admin_key: str = _ADMIN_KEY) -> None:
    """The circuit breakers of the inference replica that answers."""
    answer = _request("GET", "/breakers", gateway_url, admin_key)
    if as_json:
        print(json.dumps(answer, indent=2))
        return
    table = Table("model", "state", title=f"circuit breakers of {answer['replica']}")
    for breaker in answer["data"]:
        table.add_row(breaker["model"], breaker["state"])
    out.print(table)
