"""The GPU script (`bench/pipeline_cost.py`) runs on the tiny kit's shapes on a CPU, so it is ready to run
whole when a GPU is lent: every setting generates, and what it prints is what it measured."""

from __future__ import annotations

import statistics

import pytest
import torch

from bench import pipeline_cost


def test_the_whole_pipeline_benchmark_reports_what_it_measured(capsys):
    results = pipeline_cost.main(["--tiny", "--device", "cpu", "--dtype", "float32", "--size", "32", "--steps", "2",
                                  "--rounds", "2"])  # fmt: skip
    assert set(results) == {"sd", "ip-adapter-plus", "ip-adapter-x5", "flexip-1", "flexip-5"}
    sd = results["sd"]["seconds"]
    output = capsys.readouterr().out
    for name, row in results.items():
        seconds = row["seconds"]
        assert len(seconds) == 2 and row["median_s"] == statistics.median(seconds)
        assert row["images_per_s"] == pytest.approx(pipeline_cost.images_made(name) / row["median_s"])
        assert row["peak_bytes"] > 0
        if name != "sd":  # two rounds: the ratio's interval is their range, and the table says so
            ratios = sorted(a / b for a, b in zip(seconds, sd))
            assert (row["low"], row["high"]) == pytest.approx(ratios)
            assert row["ratio"] == pytest.approx(statistics.median(ratios))
            line = f"| {name} | {pipeline_cost.images_made(name)} | {row['median_s']:.3f} |"
            assert f"{line} {row['images_per_s']:.2f} | {row['ratio']:.3f} [{row['low']:.3f}, {row['high']:.3f}] " \
                   "| too few rounds |" in output  # fmt: skip
    # Five values in one batch allocate more than one value does: the peaks are each setting's own.
    assert results["flexip-5"]["peak_bytes"] > results["flexip-1"]["peak_bytes"]
    assert "time / sd [min–max]" in output and "95%" not in output
    assert "offload: needs an accelerator" in output


def test_a_setting_s_memory_is_measured_with_only_its_own_weights_on_the_device():
    """`resident` leaves one pipeline's modules on the device (the meta device stands in for a GPU here) and
    every other pipeline's, the IP-Adapter's and FlexIP's UNets and image encoders too, on the CPU."""
    models = pipeline_cost.build_models(tiny=True)
    pipes = pipeline_cost.pipelines(models, torch.device("cpu"), torch.float32, tiny=True)
    every = list(pipes.values())

    def devices(pipe) -> set[str]:
        return {p.device.type for module in pipeline_cost.modules_of(pipe) for p in module.parameters()}

    pipeline_cost.resident(pipes["sd"], every, torch.device("meta"))
    assert devices(pipes["sd"]) == {"meta"}
    assert pipes["ip-adapter-plus"].unet.device.type == pipes["flexip"].unet.device.type == "cpu"
    assert {p.device.type for p in models["clip"].parameters()} | {
        p.device.type for p in models["dino"].parameters()
    } == {"cpu"}
    flexip = pipeline_cost.modules_of(pipes["flexip"])
    assert pipes["flexip"].flexip.adapter in flexip and pipes["flexip"].flexip.reference_encoder in flexip
