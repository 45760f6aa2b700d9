"""`llmesh safety eval`: recall, false positives and added latency of the input scanners over
the labelled set in services/safety/evalset.py."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mesh.settings import REPO_ROOT

app = typer.Typer(help="input and output safety", no_args_is_help=True)
console = Console(stderr=True)


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rates, latency) = plt.subplots(1, 2, figsize=(11, 4))
    names = ["sensitive_recall", "pii_recall", "injection_recall", "benign_fpr"]
    rates.bar(names, [report[n] for n in names], color=["tab:green"] * 3 + ["tab:red"])
    rates.set_ylim(0, 1.05)
    rates.set_title(f"{report['samples']} labelled samples (zh + en)")
    rates.tick_params(axis="x", rotation=20)
    scanners = list(report["latency_ms"])
    x = range(len(scanners))
    latency.bar([i - 0.2 for i in x], [report["latency_ms"][s]["p50"] for s in scanners], 0.4, label="p50")
    latency.bar([i + 0.2 for i in x], [report["latency_ms"][s]["p95"] for s in scanners], 0.4, label="p95")
    latency.axhline(10, color="tab:red", linestyle="--", label="target p95 (all)")
    latency.set_xticks(list(x), scanners)
    latency.set_ylabel("ms")
    latency.set_title(f"added latency, {report['prompt_chars']}-character prompt")
    latency.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


@app.command("eval")
def evaluate(
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    runs: int = typer.Option(300, help="timed runs per scanner for the latency percentiles"),
    seed: int = typer.Option(7),
    plot: Path = typer.Option(REPO_ROOT / ".run" / "safety-eval.png", help="where to write the PNG chart"),
) -> None:
    """Evaluate the input scanners; exit 1 when a target of the issue is missed."""
    from tqdm import tqdm

    from services.safety.evalset import build, evaluate as run_eval

    with tqdm(total=len(build(seed)) + runs, desc="safety eval", disable=as_json, file=None) as bar:
        report = run_eval(seed, runs, bar.update)
    _plot(report, plot)
    if as_json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        table = Table("metric", "value", "target")
        for name, target in (
            ("sensitive_recall", "≥ 0.99"), ("pii_recall", "≥ 0.95"), ("injection_recall", ""),
            ("benign_fpr", "≤ 0.02"), ("input_p95_ms", "≤ 10"),
        ):  # fmt: skip
            table.add_row(name, str(report[name]), target)
        for scanner, values in report["latency_ms"].items():
            table.add_row(f"{scanner} p50 / p95 ms", f"{values['p50']} / {values['p95']}", "")
        console.print(table)
        console.print(f"chart: {plot}")
    ok = (
        report["sensitive_recall"] >= 0.99
        and report["pii_recall"] >= 0.95
        and report["benign_fpr"] <= 0.02
        and report["input_p95_ms"] <= 10
    )
    raise typer.Exit(0 if ok else 1)
