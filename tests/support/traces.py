"""Reading traces back in tests."""


def service_edges(spans: list[dict]) -> set[tuple[str, str]]:
    """(caller, callee) service pairs: a span whose parent is another service's span."""
    by_id = {span["span_id"]: span for span in spans}
    return {
        (by_id[span["parent_span_id"]]["service"], span["service"])
        for span in spans
        if span["parent_span_id"] in by_id and by_id[span["parent_span_id"]]["service"] != span["service"]
    }
