"""`bench/flux_cost.py` counts FLUX.1's costs where the real transformer cannot run: FLOPs on the meta device
and ops at a narrow width. On the tiny kit's transformer both shortcuts are checked against a plain count on
the CPU, and the report against what was counted."""

from __future__ import annotations

import pytest

from bench import flux_cost
from bench.measure import counts

TINY = flux_cost.narrow(flux_cost.real(), flux_cost.TINY_FLUX)
SWEEP = (1, 77, 512)


@pytest.fixture(scope="module")
def results():
    return flux_cost.measure(TINY, TINY, size=64, ops_size=64, sweep=SWEEP)


def test_the_meta_device_s_flops_and_a_narrow_width_s_ops_are_a_real_call_s(results):
    counted = {name: counts(call) for name, call in flux_cost.Bench(TINY, "cpu", 64).calls().items()}
    assert results["flops"] == {name: c["flops"] for name, c in counted.items()}
    assert {name: results["ops"][name] for name in counted} == {name: c["ops"] for name, c in counted.items()}
    # Other widths, other head counts, another image size: the same ops.
    other = {**flux_cost.TINY_FLUX, "num_attention_heads": 3, "attention_head_dim": 8, "axes_dims_rope": (2, 2, 4),
             "joint_attention_dim": 40, "pooled_projection_dim": 24}  # fmt: skip
    other_width = flux_cost.Bench(flux_cost.narrow(TINY, other), "cpu", 128)
    assert {name: counts(call)["ops"] for name, call in other_width.calls().items()} == {
        name: c["ops"] for name, c in counted.items()
    }


def test_the_report_says_what_was_counted(results, capsys):
    flops, ops, parameters = results["flops"], results["ops"], results["parameters"]
    config = flux_cost.TINY_FLUX
    blocks, joint = config["num_layers"], config["joint_attention_dim"]
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    # XLabs' structure: an image projection (clip_l -> tokens x joint, with bias) and a LayerNorm, and a biased
    # to_k_ip and to_v_ip in each double-stream block; FlexIP's four branch projections per block, no bias.
    for name, tokens in flux_cost.XLABS_TOKENS.items():
        projection = TINY.clip_l * tokens * joint + tokens * joint + 2 * joint
        assert parameters[f"{name} image K/V"] == blocks * 2 * (joint * inner + inner)
        assert parameters[name] == projection + parameters[f"{name} image K/V"]
    assert parameters["flexip branch K/V"] == blocks * 4 * joint * inner
    # The sweep's default point is the table's flexip-cached; the crossing lies between the swept counts
    # on either side of it.
    added = {name: flops[name] - flops["bare"] for name in flops}
    assert results["sweep"][77] == added["flexip-cached"]
    crossing = flux_cost.break_even(results["sweep"], added["xlabs-v2"])
    below = max(count for count in SWEEP if count <= crossing)
    assert (
        results["sweep"][below] <= added["xlabs-v2"] < results["sweep"][min(c for c in SWEEP if c > crossing)]
    )

    flux_cost.report(results, 64, "tiny")
    output = capsys.readouterr().out
    cached = ops["flexip-cached"] - ops["bare"]
    assert f"| flexip-cached | {ops['flexip-cached']} | +{cached} | 1.00 |" in output
    for name in flux_cost.XLABS_TOKENS:
        projection = ops[f"{name} image projection"]
        per_block = (ops[name] - ops["bare"] - projection) / blocks
        assert f"{name} {per_block:g} per block + {projection} for its image projection" in output
    assert f"break-even with xlabs-v2: {crossing:.1f} Personalization tokens" in output
    assert f"| flexip | {parameters['flexip'] / 1e6:.1f}M |" in output
