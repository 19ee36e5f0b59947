"""How the benchmarks summarise paired timings (bench/measure.py): the interval a table prints is the one its
header names, and a verdict is given only where the rounds can carry one."""

from __future__ import annotations

import statistics

import pytest

from bench.measure import BOOTSTRAP_ROUNDS, interval_name, paired_ratio, verdict


@pytest.mark.parametrize(
    "slow, fast, name, interval",
    [
        (
            [2.0, 3.0],
            [1.0, 1.0],
            "min–max",
            (2.0, 3.0),
        ),  # two rounds: their range, whatever the bootstrap says
        ([1.1, 0.9, 1.3, 1.2], [1.0] * 4, "min–max", (0.9, 1.3)),
        ([1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0], [1.0] * 11, "95% CI", None),
    ],
    ids=["2-rounds", "4-rounds", "11-rounds"],
)
def test_the_interval_is_what_its_label_says(slow, fast, name, interval):
    ratio, low, high = paired_ratio(slow, fast)
    ratios = [a / b for a, b in zip(slow, fast)]
    assert interval_name(len(slow)) == name
    assert ratio == pytest.approx(statistics.median(ratios))
    if interval is not None:
        assert (low, high) == pytest.approx(interval)
    else:  # a bootstrap interval of the median: inside the range, and narrower than it with 11 rounds
        assert min(ratios) < low <= ratio <= high < max(ratios)


@pytest.mark.parametrize(
    "low, high, rounds, said",
    [
        (1.2, 1.3, 2, "too few rounds"),  # two slower rounds are no evidence of "slower"
        (0.5, 0.6, BOOTSTRAP_ROUNDS - 1, "too few rounds"),
        (1.2, 1.3, BOOTSTRAP_ROUNDS, "slower"),
        (0.5, 0.6, 10, "faster"),
        (0.98, 1.02, 10, "within 3%"),
        (0.9, 1.1, 10, "too wide to conclude"),
    ],
)
def test_a_verdict_needs_enough_rounds_and_an_interval_that_carries_it(low, high, rounds, said):
    assert verdict(low, high, rounds) == said
