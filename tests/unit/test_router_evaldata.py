"""The eval-data cache: reused only for the artifacts it was computed from."""

from services.router import evaldata
from services.router.evaluate import split


def query(source: str) -> evaldata.Query:
    return evaldata.Query("What is x?", source, 12, 5, {"small": -5.0, "large": -4.5}, {"perplexity": 7.0})


def test_cache_round_trip_and_key_mismatch(tmp_path):
    path = tmp_path / "quality.jsonl"
    queries = [query("a.b"), query("c.d")]
    evaldata.save(queries, "key-1", path)
    assert evaldata.load_cached("key-1", path) == queries
    assert evaldata.load_cached("key-2", path) is None
    assert evaldata.load_cached("key-1", tmp_path / "missing.jsonl") is None


def test_the_fit_and_report_halves_are_disjoint_and_stable():
    queries = [query(f"module.item{i}") for i in range(200)]
    fit, report = split(queries)
    assert {q.source for q in fit}.isdisjoint(q.source for q in report)
    assert len(fit) + len(report) == 200 and 60 < len(fit) < 140
    assert split(queries) == (fit, report)
