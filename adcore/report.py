"""Markdown tables of result rows, written the same way by the bench, the quickstart and the pipeline summary."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

#: A column: a row key, or (row key, header text).
Column = str | tuple[str, str]
#: How a cell is written: a format spec for floats (``".3f"``) or a function of the (non-None) value.
Formatter = str | Callable[[Any], str]


def format_number(value: Any) -> str:
    """The default cell: floats with 3 decimals below 1 and 1 above (times, sizes), everything else as is."""
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1 else f"{value:.1f}"
    return str(value)


def markdown_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[Column],
                   formats: Mapping[str, Formatter] | Formatter | None = None, *, missing: str = "n/a") -> str:
    """A GitHub markdown table, one line per row; a None or absent value is written as ``missing``.

    ``formats`` is one formatter for every column or a mapping key -> formatter (other keys: :func:`format_number`).
    A format spec applies to floats only, so an int or string in that column is written as is. ``|`` in a cell is
    escaped so it cannot split the cell.
    """
    keys = [c if isinstance(c, str) else c[0] for c in columns]
    headers = [c if isinstance(c, str) else c[1] for c in columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [_cell(row.get(key), _formatter(formats, key), missing) for key in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _formatter(formats: Mapping[str, Formatter] | Formatter | None, key: str) -> Formatter:
    if formats is None:
        return format_number
    if isinstance(formats, Mapping):
        return formats.get(key, format_number)
    return formats


def _cell(value: Any, formatter: Formatter, missing: str) -> str:
    if value is None:
        return missing
    if isinstance(formatter, str):
        text = format(value, formatter) if isinstance(value, float) else str(value)
    else:
        text = formatter(value)
    return text.replace("|", "\\|")
