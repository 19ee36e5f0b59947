"""The invariants of the gated cross-attention (docs/method.md §2.3), on the tiny model set."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from diffusers import UNet2DConditionModel

from fixtures import poison_branch
from flexip import FlexIPAdapter, FlexIPError, ReferenceEncoder
from flexip.models.processor import FlexIPAttnProcessor


@pytest.fixture(scope="module")
def unet(tiny_models):
    return UNet2DConditionModel.from_pretrained(tiny_models.base, subfolder="unet").eval().requires_grad_(False)


@pytest.fixture(scope="module")
def features(tiny_models):
    """Encoder features of two different random reference images, and random text embeddings."""
    from PIL import Image

    encoder = ReferenceEncoder.from_pretrained(tiny_models.image_encoder, tiny_models.dinov2)
    generator = torch.Generator().manual_seed(0)
    images = [
        Image.fromarray((torch.rand(40, 48, 3, generator=generator) * 255).to(torch.uint8).numpy()) for _ in range(2)
    ]
    reference = encoder(images)
    text = torch.randn(2, 77, 32, generator=generator)
    latents = torch.randn(2, 4, 16, 16, generator=generator)
    return reference.clip_embeds, reference.dino_tokens, text, latents


@pytest.fixture
def adapter(load_test_adapter):
    """Each test's own, not the module's: these tests train it and save it."""
    return load_test_adapter()


def run_unet(unet, adapter, features, preservation, scale=1.0, cache=False):
    clip_embeds, dino_tokens, text, latents = features
    with torch.no_grad():
        condition = adapter(clip_embeds, dino_tokens, text, preservation, scale=scale, cache=cache)
        return unet(latents, 500, encoder_hidden_states=(text, condition)).sample


@pytest.fixture
def attached(unet, adapter):
    adapter.attach(unet)
    yield adapter
    FlexIPAdapter.detach(unet)


def test_scale_zero_reproduces_the_base_unet(unet, attached, features):
    _, _, text, latents = features
    with torch.no_grad():
        FlexIPAdapter.detach(unet)
        base = unet(latents, 500, encoder_hidden_states=text).sample
        attached.attach(unet)
        patched = run_unet(unet, attached, features, preservation=0.6, scale=0.0)
    assert torch.equal(patched, base)  # bit-identical, as docs/decisions/attention.md claims
    assert (run_unet(unet, attached, features, preservation=0.6) - base).abs().max() > 1e-3  # the adapter acts


def test_a_fresh_adapter_is_exactly_the_base_unet_at_every_g_and_s(tiny_models, unet, features):
    clip = ReferenceEncoder.from_pretrained(tiny_models.image_encoder, tiny_models.dinov2)
    fresh = FlexIPAdapter.for_unet(unet, clip.clip_embed_dim, clip.dino_hidden_dim)
    _, _, text, latents = features
    with torch.no_grad():
        base = unet(latents, 500, encoder_hidden_states=text).sample
        fresh.attach(unet)
        try:
            for g, s in [(0.0, 1.0), (0.3, 1.0), (1.0, 1.0), (0.5, 2.5), (torch.tensor([0.0, 1.0]), 1.0)]:
                assert torch.equal(run_unet(unet, fresh, features, preservation=g, scale=s), base), (g, s)
        finally:
            FlexIPAdapter.detach(unet)


def test_g_one_ignores_the_personalization_weights(unet, attached, features):
    reference = run_unet(unet, attached, features, preservation=1.0)
    poison_branch(attached, "personalization", float("inf"))
    assert torch.equal(run_unet(unet, attached, features, preservation=1.0), reference)


def test_g_zero_ignores_the_preservation_weights(unet, attached, features):
    reference = run_unet(unet, attached, features, preservation=0.0)
    poison_branch(attached, "preservation", float("inf"))
    assert torch.equal(run_unet(unet, attached, features, preservation=0.0), reference)


def test_processor_output_is_linear_in_g(unet, attached, features):
    outputs = {}

    def record(name):
        def hook(module, args, output):
            outputs.setdefault(name, []).append(output)

        return hook

    attn = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    handle = attn.register_forward_hook(record("attn2"))
    for g in (0.0, 1.0, 0.3):
        run_unet(unet, attached, features, preservation=g)
    handle.remove()
    z0, z1, z03 = outputs["attn2"]
    assert (z03 - (0.7 * z0 + 0.3 * z1)).abs().max() <= 1e-6
    assert (z1 - z0).abs().max() > 1e-3


def test_per_sample_g_equals_one_by_one(unet, attached, features):
    clip_embeds, dino_tokens, text, latents = features
    g = torch.tensor([0.0, 0.65])
    batched = run_unet(unet, attached, features, preservation=g)
    for i in range(2):
        single = (clip_embeds[i : i + 1], dino_tokens[i : i + 1], text[i : i + 1], latents[i : i + 1])
        assert (run_unet(unet, attached, single, preservation=float(g[i])) - batched[i : i + 1]).abs().max() <= 1e-4


def test_kv_cache_gives_the_same_output_over_steps(unet, attached, features):
    clip_embeds, dino_tokens, text, latents = features
    with torch.no_grad():
        cached = attached(clip_embeds, dino_tokens, text, torch.tensor([0.2, 1.0]), cache=True)
        fresh = attached(clip_embeds, dino_tokens, text, torch.tensor([0.2, 1.0]))
        for t in (900, 500):  # the second call reads the keys/values the first one stored
            expected = unet(latents, t, encoder_hidden_states=(text, fresh)).sample
            assert torch.equal(unet(latents, t, encoder_hidden_states=(text, cached)).sample, expected)
    assert len(cached.kv_cache) == 2 * len(attached.layers)  # both branches, every layer, once


def test_kv_cache_keys_are_the_layers_projections_and_survive_a_reattach(unet, attached, features):
    """Cached K/V belong to a layer's branch projections (objects), never to an id a new processor may reuse."""
    clip_embeds, dino_tokens, text, latents = features
    with torch.no_grad():
        condition = attached(clip_embeds, dino_tokens, text, 0.5, cache=True)
        first = unet(latents, 500, encoder_hidden_states=(text, condition)).sample
        FlexIPAdapter.detach(unet)
        attached.attach(unet)  # new processor objects, the same projections
        again = unet(latents, 500, encoder_hidden_states=(text, condition)).sample
    branches = [(layer.to_k_preservation, layer.to_k_personalization) for layer in attached.layers.values()]
    assert set(condition.kv_cache) == {to_k for pair in branches for to_k in pair}
    torch.testing.assert_close(again, first, rtol=0, atol=0)


def test_save_load_gives_identical_outputs(unet, adapter, features, tmp_path):
    adapter.attach(unet)
    before = run_unet(unet, adapter, features, preservation=torch.tensor([0.25, 0.8]))
    FlexIPAdapter.detach(unet)
    adapter.save_pretrained(tmp_path / "adapter")
    loaded = FlexIPAdapter.from_pretrained(tmp_path / "adapter")
    loaded.attach(unet)
    try:
        after = run_unet(unet, loaded, features, preservation=torch.tensor([0.25, 0.8]))
    finally:
        FlexIPAdapter.detach(unet)
    assert torch.equal(before, after)
    assert torch.equal(loaded.gate.logits, adapter.gate.logits)


def test_attach_then_detach_restores_the_unet(tiny_models, adapter, features):
    unet = UNet2DConditionModel.from_pretrained(tiny_models.base, subfolder="unet").eval()
    untouched = UNet2DConditionModel.from_pretrained(tiny_models.base, subfolder="unet").eval()
    processors_before = {name: type(p) for name, p in unet.attn_processors.items()}
    adapter.attach(unet)
    assert sum(isinstance(p, FlexIPAttnProcessor) for p in unet.attn_processors.values()) == len(adapter.layers)
    with pytest.raises(RuntimeError, match="already attached"):
        adapter.attach(unet)
    FlexIPAdapter.detach(unet)
    assert {name: type(p) for name, p in unet.attn_processors.items()} == processors_before
    assert unet.state_dict().keys() == untouched.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), untouched.state_dict().values()))
    _, _, text, latents = features
    with torch.no_grad():
        assert torch.equal(unet(latents, 10, text).sample, untouched(latents, 10, text).sample)


def test_adapter_for_another_base_size_fails_naming_the_layer(adapter):
    other = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=48,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=8, norm_num_groups=32,
    )  # fmt: skip
    with pytest.raises(FlexIPError) as error:
        adapter.attach(other)
    message = str(error.value)
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor" in message
    assert "32->32" in message and "48->32" in message
    assert not any(isinstance(p, FlexIPAttnProcessor) for p in other.attn_processors.values())


def test_forward_with_adapter_logs_no_warnings(unet, attached, features):
    records = []

    class ListHandler(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = ListHandler(level=logging.WARNING)
    loggers = [logging.getLogger("diffusers"), logging.getLogger("transformers"), logging.getLogger()]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_unet(unet, attached, features, preservation=0.5)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == []
    assert [str(w.message) for w in caught] == []


def test_gradients_reach_the_gate_and_both_branches(unet, adapter, features):
    clip_embeds, dino_tokens, text, latents = features
    adapter.attach(unet)
    try:
        adapter.train()
        g = adapter.gate(torch.tensor([0, 1]), generator=torch.Generator().manual_seed(0))
        condition = adapter(clip_embeds, dino_tokens, text, g)
        unet(latents, 500, encoder_hidden_states=(text, condition)).sample.square().mean().backward()
    finally:
        FlexIPAdapter.detach(unet)
    assert adapter.gate.logits.grad is not None and adapter.gate.logits.grad.abs().min() > 0
    layer = next(iter(adapter.layers.values()))
    assert layer.to_k_preservation.weight.grad.abs().max() > 0
    assert layer.to_v_personalization.weight.grad.abs().max() > 0
    assert adapter.preservation.queries.grad.abs().max() > 0
