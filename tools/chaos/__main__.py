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

from tools.chaos.scenarios import BOUND_S, BOUNDS_S, SCENARIOS, STACK_ENV, Row
from tools.chaos.stack import ChaosStack, ChaosStackError

console = Console()


def table(rows: list[Row]) -> Table:
    out = Table("scenario", "measured", "pass criterion", "result", title="llmesh chaos suite")
    for row in rows:
        out.add_row(row.scenario, row.figure, row.criterion, "[green]pass[/]" if row.passed else "[red]FAIL[/]")
    return out


async def run(
    stack: ChaosStack, names: list[str], deadline: float, params: dict[str, dict[str, float]] | None = None
) -> list[Row]:
    params = params or {}
    rows: list[Row] = []
    for name in names:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            rows.append(Row(name, "not run: the suite's time was up", "-", False))
            continue
        console.print(f"running [bold]{name}[/] ...")
        try:
            scenario = SCENARIOS[name](stack, **params.get(name, {}))
            rows += await asyncio.wait_for(scenario, timeout=min(remaining, BOUNDS_S.get(name, BOUND_S)))
        except TimeoutError:
            rows.append(Row(name, "did not finish in time", "-", False))
    return rows


def stacks(names: list[str]) -> list[tuple[dict[str, str], list[str]]]:
    """The scenarios by the stack they need, in order: those on the suite's stack, then each
    that needs a stack set otherwise on one of its own."""
    shared = [name for name in names if name not in STACK_ENV]
    own = [(STACK_ENV[name], [name]) for name in names if name in STACK_ENV]
    return ([({}, shared)] if shared else []) + own


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.chaos", description=__doc__)
    parser.add_argument("--only", action="append", choices=list(SCENARIOS), help="run only these (repeatable)")
    parser.add_argument("--run-dir", type=Path, help="the stack's run directory (default: a new temporary one)")
    parser.add_argument("--max-seconds", type=float, default=1500.0, help="bound on the scenarios' time")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="SCENARIO:NAME=VALUE",
        help="a scenario's own parameter (a number), e.g. model-unload:rate=20 (repeatable)",
    )
    args = parser.parse_args(argv)
    params: dict[str, dict[str, float]] = {}
    for param in args.param:
        scenario, _, assignment = param.partition(":")
        name, _, value = assignment.partition("=")
        if scenario not in SCENARIOS or not name or not value:
            parser.error(f"--param {param}: expected SCENARIO:NAME=VALUE with a known scenario")
        params.setdefault(scenario, {})[name] = float(value)
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="llmesh-chaos-"))
    deadline = time.monotonic() + args.max_seconds
    rows: list[Row] = []
    groups = stacks(args.only or list(SCENARIOS))
    for index, (env, names) in enumerate(groups):
        # One stack at a time: each has its own Triton.
        stack_dir = run_dir if index == 0 else run_dir / f"stack-{index + 1}"
        console.print(f"starting a stack in {stack_dir} (logs in {stack_dir / 'logs'}) for {', '.join(names)} ...")
        stack = ChaosStack(stack_dir, env=env)
        try:
            stack.start()
            rows += asyncio.run(run(stack, names, deadline, params))
        except ChaosStackError as error:
            console.print(f"[red]could not start the stack:[/] {error}")
            return 2
        finally:
            stack.stop()
    console.print(table(rows))
    return 0 if all(row.passed for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
