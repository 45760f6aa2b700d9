"""`llmesh safety eval --json` prints both parts of the evaluation against the issue's targets."""

import json

from typer.testing import CliRunner

from cli.main import app

PART_METRICS = {  # what each part reports
    "sensitive_recall",
    "sensitive_fpr_lookalike",
    "sensitive_fpr_ordinary",
    "injection_recall",
    "injection_fpr",
    "pii_recall",
    "pii_near_miss_redacted",
    "code_rewritten",
    "recall_by_family",
}


def test_eval_json_reports_both_parts(tmp_path):
    result = CliRunner().invoke(app, ["safety", "eval", "--json", "--runs", "5", "--plot", str(tmp_path / "e.png")])
    report = json.loads(result.stdout)
    for part in ("development", "held_out"):
        assert set(report[part]) >= PART_METRICS
        assert report[part]["counts"]["benign_ordinary"] > 100
    assert any(family.startswith("sensitive:pinyin") for family in report["held_out"]["recall_by_family"])
    assert report["conversation_chars"] == 2000 and report["input_p95_ms"] > 0
    assert (tmp_path / "e.png").exists()
    assert result.exit_code == (0 if all(report["met"].values()) else 1)
