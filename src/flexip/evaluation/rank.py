"""mRank (docs/method.md §5): rank the methods compared on each metric (1 = best), then average over the
metrics."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from ..errors import FlexIPError
from .metrics import METRICS


def ranks(values: list[float]) -> list[float]:
    """Rank of each value, 1 for the highest; tied values share the mean of the ranks they span."""
    return [
        sum(other > value for other in values) + (sum(other == value for other in values) + 1) / 2
        for value in values
    ]


def mrank(table: dict[str, dict[str, float]], metrics: tuple[str, ...] = METRICS) -> dict[str, float]:
    """{method: {metric: value}} -> {method: mean rank over `metrics`}, every metric higher-is-better.

    The paper does not say how ties rank; shared mean ranks reproduce Table 1 within 0.1 (docs/method.md §5).
    """
    methods = list(table)
    missing = [(method, metric) for method in methods for metric in metrics if metric not in table[method]]
    if missing:
        raise FlexIPError(f"mRank needs every metric for every method; missing {missing[:5]}")
    broken = [
        (method, metric)
        for method in methods
        for metric in metrics
        if not math.isfinite(table[method][metric])
    ]
    if broken:
        method, metric = broken[0]
        raise FlexIPError(
            f"{method}: {metric} is {table[method][metric]}, which cannot be ranked; give a number"
        )
    totals = dict.fromkeys(methods, 0.0)
    for metric in metrics:
        for method, rank in zip(methods, ranks([table[method][metric] for method in methods])):
            totals[method] += rank
    return {method: total / len(metrics) for method, total in totals.items()}


def read_published_csv(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """Published numbers: a CSV with columns `method,CLIP-T,CLIP-I,DINO-I,CLIP-IQA,Aesthetic`, UTF-8 (with or
    without the BOM spreadsheets write).

    Every row must be whole: a short or long row, a stray quote, an empty or repeated method name or a value
    that is not a finite number is an error naming the line, never a row silently dropped or mis-ranked.
    """
    path = Path(path)
    expected = f"expected method,{','.join(METRICS)}"
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, strict=True)
            header = next(reader, [])
            missing = {"method", *METRICS} - set(header)
            if missing:
                raise FlexIPError(f"{path}: missing columns {sorted(missing)}; {expected}")
            table = {}
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if not row:
                    continue  # a blank line
                if len(row) != len(header):
                    raise FlexIPError(f"{where}: {len(row)} values for {len(header)} columns; {expected}")
                values = dict(zip(header, row))
                method = values["method"].strip()
                if not method:
                    raise FlexIPError(f"{where}: the method name is empty; name the method")
                if method in table:
                    raise FlexIPError(f"{where}: method {method!r} appears twice; keep one row per method")
                table[method] = {metric: _finite(values[metric], metric, where) for metric in METRICS}
    except OSError as e:
        raise FlexIPError(f"{path}: cannot read it ({e.strerror}); give a CSV of published numbers") from e
    except UnicodeDecodeError as e:
        raise FlexIPError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8 CSV") from e
    except csv.Error as e:
        raise FlexIPError(
            f'{path}:{reader.line_num}: not valid CSV ({e}); quote fields with "..." in pairs'
        ) from e
    return table


def _finite(text: str, metric: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise FlexIPError(f"{where}: {metric} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise FlexIPError(f"{where}: {metric} is {text!r}; give a finite number")
    return value
