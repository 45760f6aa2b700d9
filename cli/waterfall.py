"""Render a trace's spans as a waterfall: one row per span, indented under its parent."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

BAR_WIDTH = 40


def ordered_with_depth(spans: list[dict]) -> list[tuple[dict, int]]:
    """Spans in tree order (parents before children, siblings by start time) with their depth."""
    by_id = {span["span_id"]: span for span in spans}
    children: dict[str, list[dict]] = {}
    roots = []
    for span in sorted(spans, key=lambda s: s["start_ns"]):
        parent = span.get("parent_span_id") or ""
        if parent in by_id:
            children.setdefault(parent, []).append(span)
        else:
            roots.append(span)
    ordered: list[tuple[dict, int]] = []

    def visit(span: dict, depth: int) -> None:
        ordered.append((span, depth))
        for child in children.get(span["span_id"], []):
            visit(child, depth + 1)

    for root in roots:
        visit(root, 0)
    return ordered


def waterfall(spans: list[dict]) -> Table:
    start = min(span["start_ns"] for span in spans)
    end = max(span["end_ns"] for span in spans)
    total = max(end - start, 1)
    table = Table(title=f"trace {spans[0]['trace_id']}  ({total / 1e6:.1f} ms, {len(spans)} spans)")
    table.add_column("service")
    table.add_column("span")
    table.add_column("start ms", justify="right")
    table.add_column("ms", justify="right")
    table.add_column("timeline")
    for span, depth in ordered_with_depth(spans):
        offset = int((span["start_ns"] - start) / total * BAR_WIDTH)
        width = max(1, int((span["end_ns"] - span["start_ns"]) / total * BAR_WIDTH))
        bar = Text(" " * offset + "█" * min(width, BAR_WIDTH - offset))
        table.add_row(
            span["service"],
            "  " * depth + span["name"],
            f"{(span['start_ns'] - start) / 1e6:.1f}",
            f"{(span['end_ns'] - span['start_ns']) / 1e6:.1f}",
            bar,
        )
    return table
