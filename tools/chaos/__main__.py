"""``python -m tools.chaos`` (``make chaos``): start a stack of its own on free loopback ports,
run the chaos scenarios against it one after the other, print what each measured against its
pass criterion, and exit 1 if any failed. Bounded: each scenario waits at most a minute or so,
the whole run at most ``--max-seconds``."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tools.chaos.scenarios import SCENARIOS, Row
from tools.chaos.stack import ChaosStack, ChaosStackError

console = Console()


def table(rows: list[Row]) -> Table:
    out = Table("scenario", "measured", "pass criterion", "result", title="llmesh chaos suite")
    for row in rows:
        out.add_row(row.scenario, row.figure, row.criterion, "[green]pass[/]" if row.passed else "[red]FAIL[/]")
    return out


async def run(stack: ChaosStack, names: list[str], max_seconds: float) -> list[Row]:
    rows: list[Row] = []
    deadline = time.monotonic() + max_seconds
    for name in names:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            rows.append(Row(name, "not run: the suite's time was up", "-", False))
            continue
        console.print(f"running [bold]{name}[/] ...")
        try:
            rows += await asyncio.wait_for(SCENARIOS[name](stack), timeout=min(remaining, 180))
        except TimeoutError:
            rows.append(Row(name, "did not finish in time", "-", False))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.chaos", description=__doc__)
    parser.add_argument("--only", action="append", choices=list(SCENARIOS), help="run only these (repeatable)")
    parser.add_argument("--run-dir", type=Path, help="the stack's run directory (default: a new temporary one)")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="bound on the scenarios' time")
    args = parser.parse_args(argv)
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="llmesh-chaos-"))
    console.print(f"starting a stack in {run_dir} (logs in {run_dir / 'logs'}) ...")
    stack = ChaosStack(run_dir)
    try:
        stack.start()
        rows = asyncio.run(run(stack, args.only or list(SCENARIOS), args.max_seconds))
    except ChaosStackError as error:
        console.print(f"[red]could not start the stack:[/] {error}")
        return 2
    finally:
        stack.stop()
    console.print(table(rows))
    return 0 if all(row.passed for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
