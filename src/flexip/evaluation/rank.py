"""mRank (method.md §5): rank the methods compared on each metric (1 = best), then average over the
metrics."""

from __future__ import annotations

import csv
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

    The paper does not say how ties rank; shared mean ranks reproduce its Table 1 within 0.1 (ecosystem.md).
    """
    methods = list(table)
    missing = [(method, metric) for method in methods for metric in metrics if metric not in table[method]]
    if missing:
        raise FlexIPError(f"mRank needs every metric for every method; missing {missing[:5]}")
    totals = dict.fromkeys(methods, 0.0)
    for metric in metrics:
        for method, rank in zip(methods, ranks([table[method][metric] for method in methods])):
            totals[method] += rank
    return {method: total / len(metrics) for method, total in totals.items()}


def read_published_csv(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """Published numbers: a CSV with columns `method,CLIP-T,CLIP-I,DINO-I,CLIP-IQA,Aesthetic`."""
    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"method", *METRICS} - set(reader.fieldnames or ())
        if missing:
            raise FlexIPError(
                f"{path}: missing columns {sorted(missing)}; expected method,{','.join(METRICS)}"
            )
        table = {}
        for number, row in enumerate(reader, start=2):
            try:
                table[row["method"]] = {metric: float(row[metric]) for metric in METRICS}
            except ValueError as e:
                raise FlexIPError(f"{path}:{number}: {e}") from e
    return table
