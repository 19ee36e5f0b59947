"""The trade-off curve (docs/method.md §2.4, §5): identity (DINO-I, CLIP-I) against prompt fidelity (CLIP-T)
as the dial moves, one labelled point per preservation value or scale, and how smoothly each method moves along
it."""

from __future__ import annotations

import io
import itertools
import os
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..atomic import atomic_write_bytes

IDENTITY_METRICS = ("DINO-I", "CLIP-I")
CURVE_METRICS = ("DINO-I", "CLIP-I", "CLIP-T")


@dataclass(frozen=True)
class Series:
    """One method's summary points: its dial values (None for a method without a dial) and metric means."""

    label: str
    dial_name: str | None
    dials: tuple[float | None, ...]
    metrics: tuple[dict[str, float], ...]


def largest_jump_share(values: list[float]) -> float:
    """The largest change between neighbouring dial values as a share of the whole range the values cover.

    `values` are ordered by dial. n evenly spaced values give 1/(n-1), the smoothest possible; 1.0 means one
    step does all the moving (the abrupt switch FlexIP's dial is meant to avoid). A flat series gives 0.
    """
    span = max(values) - min(values)
    if span == 0:
        return 0.0
    return max(abs(b - a) for a, b in itertools.pairwise(values)) / span


def smoothness(series: Series) -> dict[str, float]:
    """{metric: largest_jump_share} over the curve metrics; needs three or more dial values to mean
    anything."""
    return {
        metric: largest_jump_share([point[metric] for point in series.metrics]) for metric in CURVE_METRICS
    }


def _save(figure: Figure, stem: Path) -> list[Path]:
    paths = []
    for suffix in (".png", ".svg"):
        buffer = io.BytesIO()
        # No date in the SVG, so that the same numbers always give the same file.
        figure.savefig(
            buffer,
            format=suffix[1:],
            dpi=150,
            bbox_inches="tight",
            metadata={"Date": None} if suffix == ".svg" else None,
        )
        atomic_write_bytes(stem.with_suffix(suffix), buffer.getvalue())
        paths.append(stem.with_suffix(suffix))
    return paths


def plot_curves(series: list[Series], stem: str | os.PathLike) -> list[Path]:
    """Identity vs CLIP-T, one panel per identity metric; writes `<stem>.png` and `<stem>.svg`."""
    figure = Figure(figsize=(11, 4.8), layout="constrained")
    axes = figure.subplots(1, len(IDENTITY_METRICS))
    for ax, identity in zip(axes, IDENTITY_METRICS):
        for item in series:
            x = [point["CLIP-T"] for point in item.metrics]
            y = [point[identity] for point in item.metrics]
            (line,) = ax.plot(x, y, marker="o", label=item.label)
            for dial, x_value, y_value in zip(item.dials, x, y):
                if dial is not None:
                    ax.annotate(
                        f"{dial:g}",
                        (x_value, y_value),
                        textcoords="offset points",
                        xytext=(4, 4),
                        fontsize=8,
                        color=line.get_color(),
                    )
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.ticklabel_format(useOffset=False)
        ax.set_xlabel("CLIP-T (prompt fidelity)")
        ax.set_ylabel(f"{identity} (identity)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle("Identity vs prompt fidelity; labels are preservation values or adapter scales")
    return _save(figure, Path(stem))


def plot_smoothness(
    shares: dict[str, dict[str, float]], steps: dict[str, int], stem: str | os.PathLike
) -> list[Path]:
    """Bars of the largest-jump share per method and metric, with each method's even-steps floor 1/(n-1)."""
    figure = Figure(figsize=(max(5.0, 2.2 * len(shares)), 4.2), layout="constrained")
    ax = figure.subplots()
    width = 0.8 / len(CURVE_METRICS)
    for offset, metric in enumerate(CURVE_METRICS):
        positions = [i + (offset - (len(CURVE_METRICS) - 1) / 2) * width for i in range(len(shares))]
        ax.bar(positions, [shares[label][metric] for label in shares], width, label=metric)
    for i, label in enumerate(shares):
        ax.hlines(1 / steps[label], i - 0.45, i + 0.45, colors="black", linestyles="dashed")
    ax.set_xticks(range(len(shares)), list(shares))
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("largest jump / range covered")
    ax.set_title("Dial smoothness (dashed: evenly spaced steps; lower is smoother)")
    ax.legend(fontsize=8)
    return _save(figure, Path(stem))
