"""`llmesh safety eval --json` prints one JSON object with the issue's metrics."""

import json

from typer.testing import CliRunner

from cli.main import app


def test_eval_json(tmp_path):
    result = CliRunner().invoke(app, ["safety", "eval", "--json", "--runs", "5", "--plot", str(tmp_path / "e.png")])
    report = json.loads(result.stdout)
    assert {"sensitive_recall", "pii_recall", "injection_recall", "benign_fpr", "input_p95_ms"} <= set(report)
    assert set(report["latency_ms"]) == {"normalize", "lexicon", "pii", "injection", "all_input"}
    assert report["counts"]["benign"] > 100 and (tmp_path / "e.png").exists()
    assert result.exit_code == (0 if report["sensitive_recall"] >= 0.99 and report["pii_recall"] >= 0.95
                                and report["benign_fpr"] <= 0.02 and report["input_p95_ms"] <= 10 else 1)  # fmt: skip
