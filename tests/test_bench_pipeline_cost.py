"""The GPU script (`bench/pipeline_cost.py`) runs on the tiny kit's shapes on a CPU, so it is ready to run
whole when a GPU is lent: every setting generates and gets a time, a rate and a ratio to plain SD."""

from __future__ import annotations

import pytest

from bench import pipeline_cost


def test_the_whole_pipeline_benchmark_runs_every_setting_on_the_tiny_shapes(one_thread, capsys):
    results = pipeline_cost.main(["--tiny", "--device", "cpu", "--dtype", "float32", "--size", "32", "--steps", "2",
                                  "--rounds", "2"])  # fmt: skip
    assert set(results) == {"sd", "ip-adapter-plus", "ip-adapter-x5", "flexip-1", "flexip-5"}
    for name, row in results.items():
        assert row["median_s"] > 0 and row["images_per_s"] > 0 and row["peak_bytes"] > 0
        assert name == "sd" or row["low"] <= row["ratio"] <= row["high"]
    assert results["flexip-5"]["images_per_s"] == pytest.approx(5 / results["flexip-5"]["median_s"])
    output = capsys.readouterr().out
    assert "| flexip-5 | 5 |" in output and "offload: needs an accelerator" in output
