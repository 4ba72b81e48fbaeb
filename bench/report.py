"""The benchmark's figures, their targets and reference values, and the table that reports them."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Figure:
    """One reported figure, with its target and the Ironic 39.0.0 standalone reference."""

    key: str
    label: str
    unit: str
    higher_is_better: bool = False
    target: float | None = None
    reference: float | None = None


FIGURES = (
    Figure("create_nodes_per_s", "(a) POST /v1/nodes rate", "nodes/s", True, 355, 35.5),
    Figure("deploy_s", "(b) deploy set enroll->active", "s", False, 6, 61),
    Figure("manage_s", "    manage -> manageable", "s"),
    Figure("provide_s", "    provide -> available", "s"),
    Figure("active_s", "    active -> active", "s"),
    Figure("detail_p50_ms", "(c) GET /v1/nodes/detail p50", "ms", False, 60, 590),
    Figure("detail_p99_ms", "    GET /v1/nodes/detail p99", "ms"),
    Figure("limit_p50_ms", "(c) GET /v1/nodes?limit=1000 p50", "ms", False, 25, 246),
    Figure("limit_p99_ms", "    GET /v1/nodes?limit=1000 p99", "ms"),
    Figure("rss_idle_mib", "(d) RSS idle", "MiB", False, 100, 294),
    Figure("rss_loaded_mib", "(d) RSS after (a)+(c)", "MiB", False, 100, 320),
)


@dataclass
class RunResult:
    """Everything one run measured: the figures and the raw samples behind them."""

    figures: dict[str, float | None] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    retries: Counter[str] = field(default_factory=Counter)


def fmt(value: float | None) -> str:
    """A figure for the table."""
    if value is None:
        return "n/a"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def summarize(runs: list[RunResult]) -> dict[str, float | None]:
    """The median over runs of each figure (``None`` when a run could not measure it)."""
    out: dict[str, float | None] = {}
    for fig in FIGURES:
        values = [r.figures.get(fig.key) for r in runs]
        known = [v for v in values if v is not None]
        out[fig.key] = statistics.median(known) if known and len(known) == len(values) else None
    return out


def meets(fig: Figure, value: float | None) -> str:
    """Whether the median is on the right side of the target (reported, never asserted)."""
    if fig.target is None or value is None:
        return ""
    return "yes" if (value >= fig.target if fig.higher_is_better else value <= fig.target) else "NO"


def render_table(runs: list[RunResult], median: dict[str, float | None]) -> str:
    """Figures per run, median, target, reference and ours/reference, one line per figure."""
    head = [
        "figure",
        "unit",
        *[f"run {i + 1}" for i in range(len(runs))],
        "median",
        "target",
        "meets",
        "Ironic 39",
        "ours/ref",
    ]
    rows = [head]
    for fig in FIGURES:
        value = median[fig.key]
        target = "" if fig.target is None else f"{'>=' if fig.higher_is_better else '<='} {fig.target:g}"
        ratio = "" if fig.reference is None or value is None else f"{value / fig.reference:.3g}"
        rows.append(
            [
                fig.label,
                fig.unit,
                *[fmt(r.figures.get(fig.key)) for r in runs],
                fmt(value),
                target,
                meets(fig, value),
                "" if fig.reference is None else f"{fig.reference:g}",
                ratio,
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
