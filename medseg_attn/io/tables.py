"""The one CSV writer: every report, listing and table goes through it (atomically, cells escaped).

A text cell that a spreadsheet would run as a formula (it begins with ``=``, ``+``, ``-``, ``@``, a tab or a
carriage return, as a crafted file name can) is written with a leading apostrophe, OWASP's advice against CSV
injection; numbers, including negative ones, are written as they are. :func:`read_csv_rows` undoes the escape.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from medseg_attn.io.files import atomic_write_text

__all__ = ["csv_text", "escape_cell", "read_csv_rows", "unescape_cell", "write_csv"]

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def escape_cell(value: Any) -> Any:
    """``value`` as a spreadsheet will not execute it: a string that starts like a formula gets a leading ``'``."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        try:
            float(value)  # "-1.5" is a number, not a formula
            return value
        except ValueError:
            return "'" + value
    return value


def unescape_cell(value: str) -> str:
    """The original text of a cell written by :func:`escape_cell`."""
    if value.startswith("'") and value[1:].startswith(FORMULA_STARTS):
        return value[1:]
    return value


def csv_text(rows: Iterable[dict[str, Any]] | Iterable[Sequence[Any]], columns: Sequence[str] | None = None,
             float_format: str | None = None) -> str:
    """CSV text of dict rows (with ``columns``: header, and only those keys, missing ones empty) or of plain
    sequences (no ``columns``: written as they are, a first row as header if the caller gives one)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")

    def cell(value: Any) -> Any:
        if value is None:
            return ""
        if float_format is not None and isinstance(value, float):
            return format(value, float_format)
        return escape_cell(value)

    if columns is not None:
        writer.writerow([escape_cell(c) for c in columns])
        for row in rows:
            writer.writerow([cell(row.get(c)) for c in columns])  # type: ignore[union-attr]
    else:
        for row in rows:
            writer.writerow([cell(v) for v in row])  # type: ignore[union-attr]
    return buffer.getvalue()


def write_csv(path: str | Path, rows: Iterable[dict[str, Any]] | Iterable[Sequence[Any]],
              columns: Sequence[str] | None = None, float_format: str | None = None) -> Path:
    """Write :func:`csv_text` to ``path`` atomically."""
    return atomic_write_text(Path(path), csv_text(rows, columns, float_format))


def read_csv_rows(path: str | Path) -> list[dict[str, str]]:
    """Dict rows of a CSV written by :func:`write_csv`, escapes undone."""
    with open(path, newline="") as handle:
        return [{unescape_cell(k): unescape_cell(v or "") for k, v in row.items()} for row in csv.DictReader(handle)]
