"""The clip benchmark (`bench/video_cost.py`) runs on the tiny kit and prints what it measured."""

from __future__ import annotations

import statistics

import pytest

from bench import video_cost


def test_the_clip_benchmark_reports_what_it_measured(capsys):
    results = video_cost.main(["--frames", "2", "--steps", "1", "--rounds", "2"])
    assert set(results) == {"animatediff", "ip-adapter-plus", "flexip", "flexip-frames"}
    output = capsys.readouterr().out
    base = results["animatediff"]["seconds"]
    for name, row in results.items():
        assert len(row["seconds"]) == 2 and row["median_s"] == statistics.median(row["seconds"])
        assert row["peak_bytes"] > 0
        if name != "animatediff":
            ratios = sorted(a / b for a, b in zip(row["seconds"], base))
            assert (row["low"], row["high"]) == pytest.approx(ratios)
            assert f"| {name} | {row['median_s']:.3f} | {row['ratio']:.3f} [{row['low']:.3f}, {row['high']:.3f}] " \
                   "| too few rounds |" in output  # fmt: skip
    assert "time / animatediff [min–max]" in output and "2 frames" in output
