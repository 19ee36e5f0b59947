"""The training-throughput benchmark (`bench/train_throughput.py`) runs whole on the tiny models, so its numbers
at the real architecture come from code that is exercised by the suite."""

from __future__ import annotations

from bench import train_throughput


def test_the_training_throughput_benchmark_times_files_shards_and_cache_side_by_side(one_thread, capsys):
    results = train_throughput.main(["--models", "tiny", "--rounds", "2", "--steps", "1", "--pairs", "8"])
    tiny = results["tiny"]
    for source in train_throughput.SOURCES:
        row = tiny[source]
        assert row["samples_per_s"] > 0 and row["low"] <= row["ratio"] <= row["high"]
    assert tiny["files"]["ratio"] == 1.0
    assert tiny["cache_bytes_per_sample"] > 0
    output = capsys.readouterr().out
    assert "| cache |" in output and "KiB per sample" in output
