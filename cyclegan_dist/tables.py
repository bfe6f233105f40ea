"""The one table printer: aligned plain-text tables for terminals (``status``, ``gather``, ``collect``) and
Markdown tables for reports and benchmark results."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, markdown: bool = False,
                 right: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell; ``markdown`` adds pipes and the separator line; ``right`` lists the
    columns aligned right (numbers)."""
    cells = [[str(h) for h in headers]] + [[cell(c) if not isinstance(c, str) else c for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        return ("| " + " | ".join(parts) + " |") if markdown else "  ".join(parts).rstrip()

    if not markdown:
        return "\n".join(line(r) for r in cells)
    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in right else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(cells[0]), rule, *map(line, cells[1:])])
