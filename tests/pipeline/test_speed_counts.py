"""What FlexIP costs, counted on the tiny models: ops per layer, K/V projections, encoder runs.

Counts, not timings (bench/ times, side by side: docs/performance.md). The bounds are what
`FlexIPAttnProcessor` does, so a processor that regressed fails here.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from bench.measure import DispatchedOps
from fixtures import picture
from flexip.models.attach import joined_layers
from flexip.references.cache import ReferenceCache

COPIES = {"clone", "copy_", "_to_copy"}  # data moved, not computed


@pytest.fixture(scope="module")
def unet(tiny_models, adapter):
    unet = (
        UNet2DConditionModel.from_pretrained(tiny_models.base, subfolder="unet").eval().requires_grad_(False)
    )
    adapter.attach(unet)
    return unet


def inputs(adapter, batch: int):
    generator = torch.Generator().manual_seed(0)
    config = adapter.config
    clip = torch.randn(batch, config.clip_embed_dim, generator=generator)
    dino = torch.randn(batch, 5, config.dino_hidden_dim, generator=generator)
    text = torch.randn(batch, 77, config.cross_attention_dim, generator=generator)
    latents = torch.randn(batch, 4, 16, 16, generator=generator)
    return clip, dino, text, latents


def step_ops(unet, latents, encoder_hidden_states) -> DispatchedOps:
    with torch.no_grad(), DispatchedOps() as ops:
        unet(latents, 500, encoder_hidden_states=encoder_hidden_states)
    return ops


@pytest.mark.parametrize(
    "g, cached_per_layer, filling_per_layer",
    [(0.5, 4, 28), (torch.tensor([0.0, 0.5, 1.0]), 8, 34)],  # every row active; rows skipped by each branch
    ids=["all-rows", "rows-skipped"],
)
def test_extra_ops_per_cross_attention_layer(
    unet, adapter, g, cached_per_layer, filling_per_layer
):
    """Both branches active: with K/V cached, an SDPA and one addcmul per branch (a gather, an SDPA, a
    multiply and an index_put where rows are skipped); filling the cache adds each branch's two projections
    (a linear and a reshape to heads each: 12 ops) and, where rows are skipped, the gather of its tokens."""
    clip, dino, text, latents = inputs(adapter, 3)
    layers = len(joined_layers(unet))
    bare = step_ops(unet, latents, text).ops
    condition = adapter(clip, dino, text, g, cache=True)
    filling = step_ops(unet, latents, (text, condition)).ops - bare
    cached = step_ops(unet, latents, (text, condition)).ops - bare
    assert sum(cached.values()) == cached_per_layer * layers, cached
    assert cached_per_layer <= 10  # the most a cached step may add per layer
    assert sum(filling.values()) <= filling_per_layer * layers, filling
    assert not COPIES & (set(cached) | set(filling)), (cached, filling)
    if cached_per_layer == 4:
        assert cached["addcmul"] == 2 * layers  # the branch weight is folded into one multiply-add


def test_uncached_costs_the_projections_and_nothing_else(unet, adapter):
    clip, dino, text, latents = inputs(adapter, 2)
    condition = adapter(clip, dino, text, 0.5, cache=True)
    step_ops(unet, latents, (text, condition))
    cached = step_ops(unet, latents, (text, condition)).ops
    uncached = step_ops(unet, latents, (text, adapter(clip, dino, text, 0.5))).ops
    extra = uncached - cached
    layers = len(joined_layers(unet))
    assert extra["mm"] == 4 * layers and sum(extra.values()) == 24 * layers, extra


def test_processor_equals_the_equation(unet, adapter):
    """Z = Attn(Q, K_text, V_text) + s·g·Attn(Q, K_P, V_P) + s·(1−g)·Attn(Q, K_S, V_S), before to_out."""
    clip, dino, text, _ = inputs(adapter, 3)
    g, s = torch.tensor([0.0, 0.3, 1.0]), 1.5
    name, attn = next(iter(joined_layers(unet).items()))
    layer = adapter.layers[name.removesuffix(".processor").replace(".", "__")]
    hidden = torch.randn(3, 64, attn.to_q.in_features)
    with torch.no_grad():
        condition = adapter(clip, dino, text, g, scale=s, cache=True)
        got = [
            attn.processor(attn, hidden, (text, condition)) for _ in range(2)
        ]  # fills, then reads the cache

        def attend(tokens, to_k, to_v):
            def heads(x):
                return x.unflatten(-1, (attn.heads, -1)).transpose(1, 2)

            return F.scaled_dot_product_attention(
                heads(attn.to_q(hidden)), heads(to_k(tokens)), heads(to_v(tokens))
            )

        z = (
            attend(text, attn.to_k, attn.to_v)
            + (s * g)[:, None, None, None] * attend(condition.preservation_tokens, layer.to_k_preservation, layer.to_v_preservation)
            + (s * (1 - g))[:, None, None, None] * attend(condition.personalization_tokens, layer.to_k_personalization, layer.to_v_personalization)
        )  # fmt: skip
        expected = attn.to_out[0](z.transpose(1, 2).flatten(2))
    for output in got:
        torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-6)


def test_the_weights_stay_out_of_the_cached_keys_values(unet, adapter):
    """A later g (per step, per layer) reuses the K/V cached under another g: only the tokens fill the cache."""
    clip, dino, text, latents = inputs(adapter, 2)
    with torch.no_grad():
        first = adapter(clip, dino, text, 0.2, cache=True)
        unet(latents, 500, encoder_hidden_states=(text, first))
        again = adapter(clip, dino, text, 0.7)
        moved = first.reweighted(again.weights, {})  # the first call's tokens and filled cache, g = 0.7
        fresh = dataclasses.replace(moved, kv_cache=None)
        reused = unet(latents, 500, encoder_hidden_states=(text, moved)).sample
        expected = unet(latents, 500, encoder_hidden_states=(text, fresh)).sample
    assert torch.equal(reused, expected)


# The pipeline: encoders once per reference image, branch K/V once per generation.


def forward_counter(modules) -> dict:
    runs = {module: 0 for module in modules}

    def count(module, args, output):
        runs[module] += 1

    return runs, [module.register_forward_hook(count) for module in modules]


def generate(pipe, reference, preservation, **kwargs):
    return pipe(
        "a dog", reference=reference, preservation=preservation, num_inference_steps=3,
        generator=torch.Generator().manual_seed(0), output_type="np", **kwargs,
    ).images  # fmt: skip


def test_a_sweep_encodes_once_and_projects_each_branch_once(pipe):
    encoder = pipe.flexip.reference_encoder
    projections = [
        linear for layer in pipe.flexip.adapter.layers.values()
        for linear in (layer.to_k_preservation, layer.to_v_preservation, layer.to_k_personalization,
                       layer.to_v_personalization)
    ]  # fmt: skip
    runs, hooks = forward_counter([encoder.clip_model, encoder.dino_model, pipe.text_encoder, *projections])
    try:
        generate(
            pipe, picture(30), [0.0, 0.25, 0.5, 0.75, 1.0]
        )  # guided: 10 rows, some skipped by each branch
        assert runs[encoder.clip_model] == runs[encoder.dino_model] == 1
        assert runs[pipe.text_encoder] == 2  # the prompt and the negative prompt, once for all five values
        assert all(runs[linear] == 1 for linear in projections)  # 3 steps, one projection per generation
        generate(pipe, picture(30), 0.6)  # the same reference again
        assert runs[encoder.clip_model] == runs[encoder.dino_model] == 1
        assert all(runs[linear] == 2 for linear in projections)
    finally:
        for hook in hooks:
            hook.remove()


def test_images_equal_with_and_without_every_cache(pipe):
    values = [0.0, 0.4, 1.0]
    warm = generate(pipe, picture(31), values)
    warm = generate(pipe, picture(31), values)  # features from the reference cache
    pipe.flexip._cache_kv = False
    cache = pipe.flexip.reference_cache
    pipe.flexip.reference_cache = ReferenceCache(pipe.flexip.reference_encoder, capacity=0)
    try:
        cold = generate(pipe, picture(31), values)
    finally:
        pipe.flexip._cache_kv, pipe.flexip.reference_cache = True, cache
    np.testing.assert_allclose(warm, cold, atol=1e-6)
    assert np.abs(warm[0] - warm[-1]).max() > 1e-3  # the branches act
