"""The trade-off curve measured along the raw gate, and the dial map that walks it at constant speed.

Identity and prompt following are measured at gate values g_0 = 0 < ... < g_n = 1 (means over pairs and seeds).
Each is made monotone in g (identity rises, the prompt falls: pool-adjacent-violators, so noise does not add
length that is not there) and scaled to its range, which puts both on one footing whatever the scorer. Between
measured gates the curve is the straight line between their points, so the arc length s(g) is piecewise linear
in g, and the map u -> g that moves at constant speed along the curve is its inverse: piecewise linear through
the knots (s(g_i) / s(1), g_i). A small share of the dial (`FLAT_SHARE`) moves g evenly, so a stretch where
nothing measured moves is crossed rather than jumped and the map stays strictly increasing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import FlexIPError
from ..settings.dial_map import DialMap

FLAT_SHARE = 0.02
# Refinement never splits a stretch of the gate narrower than this: a finer step is below what a 50-step
# sampler's images resolve, and the map interpolates it.
NARROWEST = 1 / 64


def monotone(values: Sequence[float], increasing: bool = True) -> np.ndarray:
    """The least-squares fit to `values` that never falls (or never rises): pool adjacent violators."""
    sign = 1.0 if increasing else -1.0
    blocks: list[list[float]] = []  # [mean, count] of pooled runs
    for value in np.asarray(values, dtype=np.float64) * sign:
        blocks.append([value, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            mean, count = blocks.pop()
            blocks[-1] = [(blocks[-1][0] * blocks[-1][1] + mean * count) / (blocks[-1][1] + count), blocks[-1][1] + count]
    return sign * np.concatenate([np.full(int(count), mean) for mean, count in blocks])


def scaled(values: np.ndarray) -> np.ndarray:
    """`values` scaled to their range, 0 to 1; all zeros when they do not move."""
    spread = values.max() - values.min()
    return (values - values.min()) / spread if spread > 0 else np.zeros_like(values)


def curve_points(identity: Sequence[float], prompt: Sequence[float], fit: bool = True) -> np.ndarray:
    """(n, 2): each measured point of the trade-off curve, both scores scaled to their range (made monotone
    first unless `fit` is False)."""
    identity, prompt = np.asarray(identity, dtype=np.float64), np.asarray(prompt, dtype=np.float64)
    if fit:
        identity, prompt = monotone(identity, increasing=True), monotone(prompt, increasing=False)
    return np.stack([scaled(identity), scaled(prompt)], axis=1)


def segment_lengths(points: np.ndarray) -> np.ndarray:
    """The length of each straight piece between neighbouring points."""
    return np.linalg.norm(np.diff(points, axis=0), axis=1)


def largest_step_share(identity: Sequence[float], prompt: Sequence[float]) -> float:
    """The largest step between neighbouring dial values along the trade-off curve, as a share of the curve's
    length (both scores scaled to their range, as measured: 1 / (values - 1) is perfectly even); NaN when
    neither score moves."""
    lengths = segment_lengths(curve_points(identity, prompt, fit=False))
    total = lengths.sum()
    return float(lengths.max() / total) if total > 0 else float("nan")


def _checked(gates, identity, prompt) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    gates = np.asarray(gates, dtype=np.float64)
    order = np.argsort(gates, kind="stable")
    gates, identity, prompt = gates[order], np.asarray(identity)[order], np.asarray(prompt)[order]
    if len(gates) < 2 or gates[0] != 0.0 or gates[-1] != 1.0 or np.any(np.diff(gates) <= 0):
        raise FlexIPError(f"a calibration needs distinct gates from 0 to 1, got {gates.tolist()}")
    if not (np.isfinite(identity).all() and np.isfinite(prompt).all()):
        raise FlexIPError("a calibration's scores must be finite numbers; check the scorer")
    return gates, identity, prompt


def fit_dial_map(gates: Sequence[float], identity: Sequence[float], prompt: Sequence[float]) -> DialMap:
    """The map u -> g under which the measured trade-off curve moves at constant speed as u goes 0 -> 1."""
    gates, identity, prompt = _checked(gates, identity, prompt)
    lengths = np.concatenate([[0.0], np.cumsum(segment_lengths(curve_points(identity, prompt)))])
    along = lengths / lengths[-1] if lengths[-1] > 0 else gates
    dial = (1 - FLAT_SHARE) * along + FLAT_SHARE * gates
    dial[0], dial[-1] = 0.0, 1.0
    dial_map = DialMap(tuple(dial.tolist()), tuple(gates.tolist()))
    dial_map.check("the fitted calibration")
    return dial_map


def next_gates(gates: Sequence[float], identity: Sequence[float], prompt: Sequence[float], count: int) -> list[float]:
    """Up to `count` new gates to measure: the midpoints of the longest pieces of the curve, so measurements
    gather where the scores move fast; pieces narrower than 2 * NARROWEST in g are left whole."""
    gates, identity, prompt = _checked(gates, identity, prompt)
    lengths = segment_lengths(curve_points(identity, prompt))
    widths = np.diff(gates)
    candidates = [index for index in np.argsort(-lengths, kind="stable") if widths[index] >= 2 * NARROWEST and lengths[index] > 0]
    return sorted(float((gates[index] + gates[index + 1]) / 2) for index in candidates[:count])
