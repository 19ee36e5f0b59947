"""`torch.compile` with FlexIP attached: no graph break inside the processor, the same image.

Dynamo's eager backend (tracing only) keeps this in seconds; a full inductor compile is for bench/ on a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from fixtures import flexip_pipe


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("g", [0.5, torch.tensor([0.0, 0.5, 1.0])], ids=["all-rows", "rows-skipped"])
def test_one_graph_on_the_cache_filling_step_and_with_a_warm_cache(tiny_models, adapter, g):
    unet = (
        UNet2DConditionModel.from_pretrained(tiny_models.base, subfolder="unet").eval().requires_grad_(False)
    )
    adapter.attach(unet)
    generator = torch.Generator().manual_seed(0)
    clip = torch.randn(3, adapter.config.clip_embed_dim, generator=generator)
    dino = torch.randn(3, 5, adapter.config.dino_hidden_dim, generator=generator)
    text = torch.randn(3, 77, adapter.config.cross_attention_dim, generator=generator)
    latents = torch.randn(3, 4, 16, 16, generator=generator)

    def step(latents, condition):
        return unet(latents, 500, encoder_hidden_states=(text, condition)).sample

    with torch.no_grad():
        condition = adapter(clip, dino, text, g, cache=True)
        for cache in ("filling", "warm"):
            explanation = torch._dynamo.explain(step)(latents, condition)
            assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), (
                cache, [str(reason.reason) for reason in explanation.break_reasons]
            )  # fmt: skip
    assert len(condition.kv_cache) == 2 * len(adapter.layers)  # the traced filling step did fill it


@pytest.mark.parametrize("region", ["whole-unet", "repeated-blocks"])
def test_a_compiled_unet_generates_the_same_image(tiny_models, adapter, reference, region):
    def generate(pipe):
        return pipe(
            "a dog", reference=reference, preservation=[0.0, 0.5, 1.0], num_inference_steps=2,
            generator=torch.Generator().manual_seed(0), output_type="np",
        ).images  # fmt: skip

    plain, compiled = (flexip_pipe(tiny_models.base, adapter) for _ in range(2))
    # aot_eager traces through AOTAutograd as inductor does (functionalised, the cache's writes as outputs)
    # without generating code.
    if region == "whole-unet":
        compiled.unet.compile(backend="aot_eager")
    else:  # diffusers' regional compilation: each BasicTransformerBlock (attn2, FlexIP's processor, inside)
        compiled.unet.compile_repeated_blocks(backend="aot_eager")
    np.testing.assert_allclose(generate(compiled), generate(plain), atol=1e-5)
    np.testing.assert_allclose(
        generate(compiled), generate(plain), atol=1e-5
    )  # a second generation, recompiled or not
