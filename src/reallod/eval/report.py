"""Results as a table a person reads: metrics ×100, two decimals, grouped by prefix (FULL/, PRES/, subsets)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from reallod.eval.common import EvalResult

TITLES = {"omnilabel": "OmniLabel", "d3": "D³", "ovdeval": "OVDEval (NMS-AP)"}


def format_value(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def render(result: EvalResult) -> Table:
    """One row per group (FULL, PRES, a subset...) and one column per metric; a plain list otherwise."""
    title = TITLES.get(result.benchmark, result.benchmark)
    grouped: dict[str, dict[str, float | None]] = {}
    plain: dict[str, float | None] = {}
    for name, value in result.metrics.items():
        if "/" in name:
            group, metric = name.split("/", 1)
            grouped.setdefault(group, {})[metric] = value
        else:
            plain[name] = value
    if not grouped:
        table = Table(title=f"{title} (×100)", title_justify="left")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for name, value in plain.items():
            table.add_row(name, format_value(value))
    else:
        columns = list(dict.fromkeys(m for metrics in grouped.values() for m in metrics))
        table = Table(title=f"{title} (×100)", title_justify="left")
        table.add_column("")
        for c in columns:
            table.add_column(c, justify="right")
        for group, metrics in grouped.items():
            table.add_row(group, *(format_value(metrics.get(c)) for c in columns))
        if plain:
            for name, value in plain.items():
                label = "average" if name == "AP" else name
                table.add_row(Text(label, style="bold"), format_value(value), *[""] * (len(columns) - 1))
    if result.notes:
        table.caption = "; ".join(result.notes)
        table.caption_justify = "left"
    return table
