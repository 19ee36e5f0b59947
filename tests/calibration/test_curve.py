"""The calibration's maths on hand-built trade-off curves: the fitted map is monotone, keeps the ends exactly, and
walks a known curve in equal arc-length steps, through flat stretches and noise."""

import itertools

import numpy as np
import pytest

from flexip.calibration.curve import (
    FLAT_SHARE,
    NARROWEST,
    curve_points,
    fit_dial_map,
    largest_step_share,
    monotone,
    next_gates,
)
from flexip.errors import FlexIPError
from flexip.settings.dial_map import DialMap

DENSE = np.linspace(0, 1, 201)


def arc_steps(dial_map: DialMap, identity, prompt, values=(0, 0.25, 0.5, 0.75, 1)) -> np.ndarray:
    """The curve's length between neighbouring dial values, each a share of the whole (the true curves are
    evaluated at map(u), both scaled to their range over [0, 1])."""
    gates = np.array([dial_map(u) for u in values])
    scale_i = identity(DENSE).max() - identity(DENSE).min()
    scale_p = prompt(DENSE).max() - prompt(DENSE).min()

    def length(a: float, b: float) -> float:
        g = np.linspace(a, b, 2001)
        points = np.stack([identity(g) / scale_i, prompt(g) / scale_p], axis=1)
        return float(np.linalg.norm(np.diff(points, axis=0), axis=1).sum())

    steps = np.array([length(a, b) for a, b in itertools.pairwise(gates)])
    return steps / steps.sum()


def fit_on(gates, identity, prompt, noise=None) -> DialMap:
    i, p = identity(np.asarray(gates)), prompt(np.asarray(gates))
    if noise is not None:
        i, p = i + noise[0], p + noise[1]
    return fit_dial_map(gates, i, p)


# Identity arrives early and fast, the prompt gives way in the middle, as on the demo model.
def early_identity(g):
    return 0.2 + 0.4 * (1 - np.exp(-12 * g))


def middle_prompt(g):
    return 0.9 - 0.3 / (1 + np.exp(-20 * (g - 0.4)))


def test_the_map_is_strictly_increasing_and_keeps_the_ends_exactly():
    dial_map = fit_on(DENSE[::10], early_identity, middle_prompt)
    assert dial_map(0.0) == 0.0 and dial_map(1.0) == 1.0
    values = [dial_map(u) for u in np.linspace(0, 1, 1001)]
    assert all(b > a for a, b in itertools.pairwise(values))
    assert all(dial_map(u) == g for u, g in zip(dial_map.dial, dial_map.gate))  # exact at every knot


def test_equal_dial_steps_are_equal_steps_along_a_known_curve():
    dial_map = fit_on(np.linspace(0, 1, 41), early_identity, middle_prompt)
    steps = arc_steps(dial_map, early_identity, middle_prompt)
    assert np.allclose(steps, 0.25, atol=0.01), steps
    # The raw gate is far from even on this curve: the check above is not trivially met.
    raw = arc_steps(DialMap((0.0, 1.0), (0.0, 1.0)), early_identity, middle_prompt)
    assert raw.max() > 0.4, raw


def test_a_straight_curve_gives_the_identity_map():
    dial_map = fit_on(np.linspace(0, 1, 9), lambda g: 0.3 + 0.5 * g, lambda g: 0.8 - 0.2 * g)
    assert np.allclose([dial_map(u) for u in np.linspace(0, 1, 11)], np.linspace(0, 1, 11), atol=1e-12)


def test_a_flat_stretch_is_crossed_in_a_small_share_of_the_dial():
    """Nothing moves for g in [0.5, 1]: the dial crosses it in FLAT_SHARE of its length, without a jump."""

    def identity(g):
        return np.minimum(g, 0.5)

    def prompt(g):
        return 1 - np.minimum(g, 0.5)

    dial_map = fit_on(np.linspace(0, 1, 11), identity, prompt)
    u_at_half = np.interp(0.5, dial_map.gate, dial_map.dial)
    assert u_at_half == pytest.approx(1 - FLAT_SHARE / 2)
    steps = arc_steps(dial_map, identity, prompt, values=(0, 0.25, 0.5, 0.75))
    assert np.allclose(steps, 1 / 3, atol=0.01), steps


def test_noise_against_the_trend_adds_no_length():
    """Scores that dip against the dial's direction are pooled (monotone fit) rather than walked: with noise of
    5-7% of each score's range at 21 gates the steps stay near even (walking the noise gives up to 0.43)."""
    gates = np.linspace(0, 1, 21)
    largest = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        noise = (rng.normal(0, 0.02, 21), rng.normal(0, 0.02, 21))
        largest.append(arc_steps(fit_on(gates, early_identity, middle_prompt, noise), early_identity, middle_prompt).max())
    assert max(largest) < 0.37 and np.mean(largest) < 0.32, largest


def test_monotone_pools_adjacent_violators():
    assert monotone([1, 3, 2, 4, 0, 5]).tolist() == [1, 2.25, 2.25, 2.25, 2.25, 5]
    assert monotone([3, 1, 2], increasing=False).tolist() == [3, 1.5, 1.5]
    assert monotone([0.1, 0.2, 0.3]).tolist() == [0.1, 0.2, 0.3]


def test_nothing_moving_gives_the_identity_map():
    dial_map = fit_dial_map([0, 0.5, 1], [0.4, 0.4, 0.4], [0.7, 0.7, 0.7])
    assert dial_map.dial == (0.0, 0.5, 1.0) and dial_map.gate == (0.0, 0.5, 1.0)


def test_bad_measurements_are_refused():
    with pytest.raises(FlexIPError, match="distinct gates from 0 to 1"):
        fit_dial_map([0, 0.5], [0, 1], [1, 0])
    with pytest.raises(FlexIPError, match="distinct gates from 0 to 1"):
        fit_dial_map([0, 0.5, 0.5, 1], [0, 1, 1, 1], [1, 0, 0, 0])
    with pytest.raises(FlexIPError, match="finite"):
        fit_dial_map([0, 0.5, 1], [0, float("nan"), 1], [1, 0, 0])


def test_refinement_measures_where_the_curve_moves():
    gates = [0, 0.25, 0.5, 0.75, 1]
    chosen = next_gates(gates, early_identity(np.array(gates)), middle_prompt(np.array(gates)), 2)
    assert chosen == [0.125, 0.375]  # identity's rise, then the prompt's fall; not the flat top
    narrow = [0, NARROWEST, 1]
    assert next_gates(narrow, [0, 1, 1], [1, 0, 0], 5) == []  # [0, NARROWEST] is too narrow, [NARROWEST, 1] flat


def test_largest_step_share_is_measured_along_the_scaled_curve():
    assert largest_step_share([0, 1, 2, 3, 4], [4, 3, 2, 1, 0]) == pytest.approx(0.25)
    assert largest_step_share([0, 1, 1, 1, 1], [1, 1, 1, 1, 0]) == pytest.approx(0.5)
    # Each score is scaled to its own range first: a small prompt range weighs as much as a large identity one.
    assert largest_step_share([0, 10, 10], [1, 1, 0.9]) == pytest.approx(0.5)
    assert np.isnan(largest_step_share([1, 1, 1], [2, 2, 2]))
    assert curve_points([0, 2], [1, 0]).tolist() == [[0, 1], [1, 0]]
