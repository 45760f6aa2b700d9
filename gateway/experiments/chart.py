"""One PNG per experiment: each variant's key metrics with 95% confidence intervals."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display: charts are files and HTTP responses
import matplotlib.pyplot as plt

# (metric, title, scale, unit): the panels, in reading order.
_PANELS = (
    ("latency_s", "latency", 1000, "ms"),
    ("ttft_s", "time to first token (streams)", 1000, "ms"),
    ("output_tokens", "output tokens", 1, "tokens"),
    ("cost", "cost per request", 1e6, "µ-units"),
    ("errors", "error rate", 100, "%"),
    ("feedback", "feedback score", 1, "score"),
)


def render(report: dict) -> bytes:
    variants = report["variants"]
    names = [variant["name"] for variant in variants]
    colours = [f"C{index}" for index in range(len(names))]
    figure, axes = plt.subplots(2, 4, figsize=(16, 7))
    panels = list(zip(axes.flat, _PANELS, strict=False))
    for axis, (metric, title, scale, unit) in panels:
        means: list[float] = []
        errors: list[list[float]] = [[], []]
        for variant in variants:
            summary = variant["metrics"][metric]
            mean = summary.get("mean", summary.get("rate"))
            ci = summary.get("ci95")
            means.append((mean or 0) * scale)
            errors[0].append(max((mean - ci[0]) * scale, 0) if ci and mean is not None else 0)
            errors[1].append(max((ci[1] - mean) * scale, 0) if ci and mean is not None else 0)
        axis.bar(names, means, yerr=errors, capsize=6, color=colours)
        axis.set_title(title)
        axis.set_ylabel(unit)
        for variant, x in zip(variants, range(len(names)), strict=True):
            p_value = variant["metrics"][metric].get("p_value")
            if p_value is not None:
                axis.annotate(f"p={p_value:.2g}", (x, 0), ha="center", va="bottom", fontsize=8)
    share_axis = axes.flat[len(_PANELS)]
    expected = [variant["weight_bp"] / 100 for variant in variants]
    observed = [(variant["share"] or 0) * 100 for variant in variants]
    positions = range(len(names))
    share_axis.bar([x - 0.2 for x in positions], expected, width=0.4, label="configured", color="lightgray")
    share_axis.bar([x + 0.2 for x in positions], observed, width=0.4, label="observed", color=colours)
    share_axis.set_xticks(list(positions), names)
    srm = report["srm"]
    share_axis.set_title(
        f"traffic split (SRM p={srm['p_value']:.2g})" if srm["p_value"] is not None else "traffic split"
    )
    share_axis.set_ylabel("% of requests")
    share_axis.legend(fontsize=8)
    requests_axis = axes.flat[len(_PANELS) + 1]
    requests_axis.bar(names, [variant["requests"] for variant in variants], color=colours)
    requests_axis.axhline(report["min_samples"], color="red", linestyle="--", linewidth=1, label="minimum sample")
    requests_axis.set_title("requests")
    requests_axis.legend(fontsize=8)
    verdict = "" if report["verdict_ready"] else "  (no verdict yet: see warnings)"
    figure.suptitle(f"experiment {report['experiment']}: control {report['control']}{verdict}")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()
