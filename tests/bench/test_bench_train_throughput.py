"""The training-throughput benchmark (`bench/train_throughput.py`) runs whole on the tiny models, so its numbers
at the real architecture come from code that is exercised by the suite; what it reports is what it timed."""

from __future__ import annotations

import statistics

import pytest

from bench import train_throughput


def test_the_training_throughput_benchmark_reports_the_rates_and_ratios_it_timed(capsys):
    steps, batch = 1, 2
    results = train_throughput.main(
        ["--models", "tiny", "--rounds", "2", "--steps", str(steps), "--pairs", "8"]
    )
    tiny = results["tiny"]
    files = tiny["files"]["seconds"]
    output = capsys.readouterr().out
    for source in train_throughput.SOURCES:
        row = tiny[source]
        assert len(row["seconds"]) == 2
        assert row["samples_per_s"] == pytest.approx(steps * batch / statistics.median(row["seconds"]))
        # Files' time over this source's, round by round: two rounds give their range, and the table says so.
        speedups = sorted(a / b for a, b in zip(files, row["seconds"]))
        assert (row["low"], row["ratio"], row["high"]) == pytest.approx((speedups[0], statistics.median(speedups),
                                                                          speedups[1]))  # fmt: skip
        printed = f"| {source} | {row['samples_per_s']:.3g} | {row['ratio']:.2f} [{row['low']:.2f}, {row['high']:.2f}] |"
        assert printed in output
    assert tiny["cache_bytes_per_sample"] > 0
    assert (
        "speed-up over files [min–max]" in output and "| too few rounds |" in output and "95%" not in output
    )
    assert f"{tiny['cache_bytes_per_sample'] / 1024:.1f} KiB per sample" in output


def test_the_benchmark_measures_the_tiny_flux_kit(capsys):
    results = train_throughput.main(["--family", "flux", "--rounds", "2", "--steps", "1", "--pairs", "8"])
    assert set(results) == {"tiny-flux"}
    assert all(results["tiny-flux"][source]["samples_per_s"] > 0 for source in train_throughput.SOURCES)
    assert results["tiny-flux"]["cache_bytes_per_sample"] > 0 and "## tiny-flux (32 px" in capsys.readouterr().out
