"""CSV and Markdown tables: how summaries and rankings are written for people and for spreadsheets."""

from __future__ import annotations

import csv
import io
import os

from ..atomic import atomic_write_bytes


def format_value(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(format_value(value) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_csv(path: str | os.PathLike, header: list[str], rows: list[list]) -> None:
    """Full precision in the CSV (the Markdown table rounds)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode())
