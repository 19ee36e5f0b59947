"""The dial per block and over the steps, on the tiny SD1.5 and SDXL model sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fixtures import tiny_flexip_pipe
from flexip import DialSchedule, FlexIPError
from flexip.denoisers.blocks import UNET_BLOCKS

STEPS = 3
FAMILIES = ["sd15", "sdxl"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    """The shared `adapter` and `pipe` of this module, on each family."""
    return request.param


def generate(pipe, reference, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("output_type", "np")
    return pipe("a photo of a dog", reference=reference, generator=torch.Generator().manual_seed(0), **kwargs).images


def layers_of(pipe) -> list[str]:
    return list(pipe.flexip.adapter.config.layers)


def one_layer_dict(pipe, value: float, others: float = 0.5) -> tuple[str, dict]:
    """The last up layer of the UNet, and a finer per-block dict giving it `value` and every other layer `others`:
    its block is named attention by attention (diffusers' list form)."""
    layers = layers_of(pipe)
    ups = [layer for layer in layers if UNET_BLOCKS.block_of(layer)[0] == "up"]
    chosen = ups[-1]
    _, block, attention = UNET_BLOCKS.block_of(chosen)
    count = 1 + max(UNET_BLOCKS.block_of(layer)[2] for layer in ups if UNET_BLOCKS.block_of(layer)[1] == block)
    values = [others] * count
    values[attention] = value
    # Every transformer block of the chosen attention shares its value: SDXL's attentions hold several.
    sharing = [layer for layer in layers if UNET_BLOCKS.block_of(layer) == ("up", block, attention)]
    up = {f"block_{UNET_BLOCKS.block_of(layer)[1]}": others for layer in ups}
    return sharing, {"down": others, "mid": others, "up": {**up, f"block_{block}": values}}


# Exact equivalences with the scalar.


def test_a_dict_giving_every_layer_one_value_equals_the_scalar(pipe, reference):
    scalar = generate(pipe, reference, preservation=0.6, scale=1.3)
    blocks = generate(pipe, reference, preservation={"down": 0.6, "mid": 0.6, "up": 0.6},
                      scale={"down": 1.3, "mid": 1.3, "up": 1.3})  # fmt: skip
    _, finer = one_layer_dict(pipe, 0.6, others=0.6)
    assert np.array_equal(blocks, scalar)
    assert np.array_equal(generate(pipe, reference, preservation=finer, scale=1.3), scalar)


def test_blocks_a_dict_does_not_name_keep_the_default(pipe, reference):
    up_only = generate(pipe, reference, preservation={"up": 0.1}, scale={"up": 1.5})
    spelled = generate(pipe, reference, preservation={"down": 0.5, "mid": 0.5, "up": 0.1},
                       scale={"down": 1.0, "mid": 1.0, "up": 1.5})  # fmt: skip
    assert np.array_equal(up_only, spelled)
    assert np.abs(up_only - generate(pipe, reference)).max() > 1e-3  # the up blocks' dial acts


@pytest.mark.parametrize("schedule", [DialSchedule(0.6, 0.6), DialSchedule(0.6, 0.6, "cosine"), lambda progress: 0.6],
                         ids=["linear", "cosine", "callable"])  # fmt: skip
def test_a_constant_schedule_equals_the_scalar(pipe, reference, schedule):
    assert np.array_equal(generate(pipe, reference, preservation=schedule), generate(pipe, reference, preservation=0.6))


# The schedule runs through the pipeline's own steps.


def test_a_schedule_sees_progress_from_0_at_the_first_step_to_1_at_the_last(pipe, reference):
    seen = []

    def schedule(progress: float) -> float:
        seen.append(progress)
        return 0.5

    for steps in (2, 3, 5):
        seen.clear()
        generate(pipe, reference, preservation=schedule, num_inference_steps=steps)
        # the boundary tries 0, 0.5 and 1 first; then one value per step (one UNet call each, with guidance)
        assert seen[3:] == [step / (steps - 1) for step in range(steps)], seen


def test_a_schedule_changes_g_between_steps(pipe, reference):
    moving = generate(pipe, reference, preservation=DialSchedule(1.0, 0.0))
    for constant in (0.0, 0.5, 1.0):
        assert np.abs(moving - generate(pipe, reference, preservation=constant)).max() > 1e-3, constant
    # the first step at g = 1 and the others at 0 is a step function: the same through a callable
    step = generate(pipe, reference, preservation=lambda progress: 1.0 if progress == 0 else 0.0)
    assert np.abs(step - generate(pipe, reference, preservation=DialSchedule(1.0, 0.0))).max() > 0
    two_steps = {"num_inference_steps": 2}  # with two steps the linear schedule is exactly that step function
    assert np.array_equal(
        generate(pipe, reference, preservation=DialSchedule(1.0, 0.0), **two_steps),
        generate(pipe, reference, preservation=lambda progress: 1.0 if progress == 0 else 0.0, **two_steps),
    )


def test_a_users_step_callback_still_runs_under_a_schedule(pipe, reference):
    steps = []

    def callback(pipe, step, timestep, tensors):
        steps.append(step)
        return tensors

    generate(pipe, reference, preservation=DialSchedule(0.9, 0.3), callback_on_step_end=callback)
    assert steps == list(range(STEPS))


def test_the_kv_cache_stays_valid_under_a_schedule(pipe, reference):
    """Rows change between steps (g = 1 at the first step skips the Personalization branch, later steps use
    it); the cache holds every row's keys/values, projected once, and gives the uncached images."""
    dial = [1.0, DialSchedule(1.0, 0.0), DialSchedule(0.0, 1.0, "cosine"), {"up": 1.0}]
    projections = [linear for layer in pipe.flexip.adapter.layers.values()
                   for linear in (layer.to_k_preservation, layer.to_k_personalization)]  # fmt: skip
    runs = dict.fromkeys(projections, 0)
    hooks = [linear.register_forward_hook(lambda module, args, out: runs.__setitem__(module, runs[module] + 1))
             for linear in projections]  # fmt: skip
    try:
        cached = generate(pipe, reference, preservation=dial)
    finally:
        for hook in hooks:
            hook.remove()
    assert set(runs.values()) == {1}  # each branch of each layer projected once in the generation
    pipe.flexip._cache_kv = False
    try:
        uncached = generate(pipe, reference, preservation=dial)
    finally:
        pipe.flexip._cache_kv = True
    np.testing.assert_allclose(cached, uncached, atol=1e-6)


def test_a_sweep_of_every_form_is_one_batch_equal_to_each_alone(pipe, reference):
    values = [0.3, {"down": 0.9, "up": 0.2}, DialSchedule(0.9, 0.2), lambda progress: 1 - progress]
    swept = generate(pipe, reference, preservation=values, num_images_per_prompt=2)
    assert swept.shape[0] == 2 * len(values)
    for index, value in enumerate(values):
        alone = generate(pipe, reference, preservation=value, num_images_per_prompt=2)
        for image in range(2):
            np.testing.assert_allclose(swept[image * len(values) + index], alone[image], atol=1e-4)


# Per layer: linear in g, and a layer at an end of the dial never reads the other branch.


def attn2_outputs(pipe, reference, layers: list[str], preservation) -> list[torch.Tensor]:
    """The outputs of `layers`' cross-attention at the first UNet call of a one-step generation."""
    outputs = []
    hooks = [pipe.unet.get_submodule(layer.removesuffix(".processor")).register_forward_hook(
        lambda module, args, output: outputs.append(output)) for layer in layers]  # fmt: skip
    try:
        generate(pipe, reference, preservation=preservation, num_inference_steps=1, guidance_scale=1.0,
                 output_type="latent")  # fmt: skip
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


def test_each_layer_is_linear_in_its_own_g(pipe, reference):
    layers, _ = one_layer_dict(pipe, 0.0)
    z0, z1, z03 = (attn2_outputs(pipe, reference, layers, one_layer_dict(pipe, g)[1]) for g in (0.0, 1.0, 0.3))
    for a, b, mixed in zip(z0, z1, z03):
        assert (mixed - (0.7 * a + 0.3 * b)).abs().max() <= 1e-6
        assert (b - a).abs().max() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("end", [1.0, 0.0])
def test_a_layer_at_an_end_of_the_dial_never_reads_the_other_branch(request, reference, family, end):
    pipe = tiny_flexip_pipe(request, family)  # its own: the test poisons its weights
    layers, dial = one_layer_dict(pipe, end)
    before = generate(pipe, reference, preservation=dial)
    unused = "personalization" if end == 1.0 else "preservation"
    with torch.no_grad():
        for layer in layers:
            projections = pipe.flexip.adapter.layer_projections()[layer]
            for linear in (getattr(projections, f"to_k_{unused}"), getattr(projections, f"to_v_{unused}")):
                linear.weight.fill_(float("inf"))
    assert np.array_equal(generate(pipe, reference, preservation=dial), before)


# Validation: one line naming the value (the dial's own checks: test_settings_dial.py).


def test_the_pipeline_checks_the_dial_before_any_model_runs(pipe, reference):
    for preservation, expected in [({"up": {"block_9": 0.5}}, "'block_9' is not a block"),
                                   (lambda progress: -1, "gave -1 at progress 0"), ([], "preservation is empty")]:  # fmt: skip
        with pytest.raises(FlexIPError, match=expected):
            generate(pipe, reference, preservation=preservation)


def test_a_stock_image_to_image_pipeline_runs_the_schedule_over_its_executed_steps(tiny_models, load_test_adapter,
                                                                                    images):  # fmt: skip
    import flexip
    from fixtures import stock_pipeline

    pipe = flexip.load_flexip(stock_pipeline("img2img", tiny_models.base), load_test_adapter())
    seen = []

    def schedule(progress: float) -> float:
        seen.append(progress)
        return 0.4

    def run(preservation, **kwargs):
        return pipe("a dog", image=images["init"], strength=0.6, num_inference_steps=5, reference=images["references"][0],
                    preservation=preservation, generator=torch.Generator().manual_seed(0), output_type="np",
                    **kwargs).images  # fmt: skip

    constant = run(0.4)
    assert np.array_equal(run(schedule), constant)
    assert seen[3:] == [0.0, 0.5, 1.0]  # strength 0.6 of 5 steps runs 3: progress from the first executed one
    masks = [np.ones((32, 32))]
    assert np.array_equal(run(DialSchedule(0.4, 0.4), reference_masks=masks), constant)
    with pytest.raises(FlexIPError, match="but the latents' grid is 16x16"):
        run(0.4, reference_masks=[np.ones((32, 64))])
