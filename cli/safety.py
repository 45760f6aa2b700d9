"""`llmesh safety eval`: the input guard over the development and held-out parts
(tools/safety/eval.py), against the issue's targets."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mesh.settings import REPO_ROOT

app = typer.Typer(help="input and output safety", no_args_is_help=True)
console = Console(stderr=True)
_RATES = (
    "sensitive_recall",
    "sensitive_fpr_lookalike",
    "sensitive_fpr_ordinary",
    "injection_recall",
    "injection_fpr",
    "pii_recall",
    "pii_near_miss_redacted",
)


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(11, 4))
    x = range(len(_RATES))
    for offset, part in ((-0.2, "development"), (0.2, "held_out")):
        axis.bar([i + offset for i in x], [report[part][n] or 0 for n in _RATES], 0.4, label=part)
    axis.set_xticks(list(x), _RATES, rotation=20)
    axis.set_ylim(0, 1.05)
    axis.set_title(
        f"input guard; p95 {report['input_p95_ms']} ms on a {report['conversation_chars']}-character conversation"
    )
    axis.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


@app.command("eval")
def evaluate(
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    runs: int = typer.Option(300, help="timed runs of the whole input guard for the latency percentiles"),
    seed: int = typer.Option(7),
    plot: Path = typer.Option(REPO_ROOT / ".run" / "safety-eval.png", help="where to write the PNG chart"),
) -> None:
    """Evaluate the input guard; exit 1 when a target of the issue is missed on the held-out part."""
    from tqdm import tqdm

    from tools.safety.eval import evaluate as run_eval

    with tqdm(total=runs + 1, desc="safety eval", disable=as_json) as bar:
        report = run_eval(seed, runs, bar.update)
    _plot(report, plot)
    if as_json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        table = Table("metric", "development", "held out", "target", "met")
        for name, target in report["targets"].items():
            dev = report["development"].get(name, report.get(name))
            held = report["held_out"].get(name, report.get(name))
            table.add_row(name, str(dev), str(held), target, "yes" if report["met"][name] else "NO")
        console.print(table)
        console.print(f"chart: {plot}")
    raise typer.Exit(0 if all(report["met"].values()) else 1)
