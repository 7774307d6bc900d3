"""Plain-text and Markdown tables for the CLI and the report."""

from __future__ import annotations

from collections.abc import Sequence


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return (
            f"{value:.3g}"
            if (value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e4))
            else f"{value:.3f}".rstrip("0").rstrip(".")
        )
    return str(value)


def text_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    line = lambda parts: "  ".join(
        p.rjust(w) if i else p.ljust(w) for i, (p, w) in enumerate(zip(parts, widths))
    )
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out)
