"""Across methods: the mRank table and the trade-off figures, from the summaries `flexip eval score` wrote."""

from __future__ import annotations

import os
from pathlib import Path

from ..atomic import atomic_write_bytes
from ..errors import FlexIPError
from .curve import CURVE_METRICS, Series, plot_curves, plot_smoothness, smoothness
from .metrics import METRICS
from .rank import mrank, read_published_csv
from .score import PROVENANCE, read_summary
from .tables import markdown_table, write_csv


def _entry_label(row: dict) -> str:
    return row["label"] if row["dial"] is None else f"{row['label']} {row['dial_name']}={row['dial']:g}"


def _summaries(directories: list[str | os.PathLike]) -> dict[str, list[dict]]:
    """{results directory: its overall summary rows}; numbers measured differently are never compared."""
    summaries = {str(directory): read_summary(directory) for directory in directories}
    setups = {directory: {key: rows[0][key] for key in PROVENANCE} for directory, rows in summaries.items()}
    items = list(setups.items())
    for directory, setup in items[1:]:
        first, first_setup = items[0]
        differ = [key for key in PROVENANCE if setup[key] != first_setup[key]]
        if differ:
            raise FlexIPError(
                f"{directory} was scored differently from {first} ({', '.join(differ)}: "
                f"{[setup[k] for k in differ]} vs {[first_setup[k] for k in differ]}); score them "
                "with the same settings before comparing"
            )
    return summaries


def rank_table(inputs: list[str | os.PathLike], out: Path) -> str:
    """mRank over every entry of the inputs (results directories and published CSVs); writes mrank.csv/.md."""
    table: dict[str, dict[str, float]] = {}
    source: dict[str, str] = {}

    def add(label: str, values: dict[str, float], origin: str) -> None:
        if label in table:
            raise FlexIPError(f"two entries are called {label!r} ({source[label]} and {origin}); rename one")
        table[label], source[label] = values, origin

    directories = [path for path in inputs if not str(path).endswith(".csv")]
    for path in inputs:
        if str(path).endswith(".csv"):
            for label, values in read_published_csv(path).items():
                add(label, values, f"published ({Path(path).name})")
    for rows in _summaries(directories).values():
        for row in rows:
            add(_entry_label(row), {metric: float(row[metric]) for metric in METRICS}, "measured")
    if len(table) < 2:
        raise FlexIPError(f"mRank compares methods: give at least two entries, got {len(table)}")
    ranks = mrank(table)
    order = sorted(table, key=lambda label: (ranks[label], label))
    header = ["method", "mRank", *METRICS, "source"]
    rows = [
        [label, ranks[label], *(table[label][metric] for metric in METRICS), source[label]] for label in order
    ]
    write_csv(out / "mrank.csv", header, rows)
    markdown = markdown_table(header, [[row[0], f"{row[1]:.1f}", *row[2:]] for row in rows])
    atomic_write_bytes(out / "mrank.md", markdown.encode())
    return markdown


def curve_figures(directories: list[str | os.PathLike], out: Path) -> str:
    """tradeoff.png/.svg/.csv, and smoothness.png/.svg for methods with 3+ dial values; returns a report."""
    series = []
    for rows in _summaries(directories).values():
        rows = sorted(rows, key=lambda row: row["dial"] or 0.0)
        series.append(
            Series(
                rows[0]["label"],
                rows[0]["dial_name"] or None,
                tuple(row["dial"] for row in rows),
                tuple({metric: float(row[metric]) for metric in CURVE_METRICS} for row in rows),
            )
        )
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(series, out / "tradeoff")
    points = [
        [item.label, item.dial_name or "", "" if dial is None else dial, *(point[m] for m in CURVE_METRICS)]
        for item in series
        for dial, point in zip(item.dials, item.metrics)
    ]
    write_csv(out / "tradeoff.csv", ["label", "dial_name", "dial", *CURVE_METRICS], points)
    report = [f"wrote {out / 'tradeoff.png'}, tradeoff.svg, tradeoff.csv"]
    dialled = [item for item in series if len(item.dials) >= 3]
    if not dialled:
        report.append("no method has 3 or more dial values: no smoothness figure")
        return "\n".join(report)
    shares = {item.label: smoothness(item) for item in dialled}
    steps = {item.label: len(item.dials) - 1 for item in dialled}
    plot_smoothness(shares, steps, out / "smoothness")
    report.append(
        f"wrote {out / 'smoothness.png'}, smoothness.svg: largest jump between neighbouring dial "
        "values / range covered (evenly spaced = 1/steps; lower is smoother)"
    )
    header = ["method", "steps", *CURVE_METRICS]
    rows = [[label, steps[label], *(shares[label][metric] for metric in CURVE_METRICS)] for label in shares]
    report.append(markdown_table(header, rows))
    return "\n".join(report)
