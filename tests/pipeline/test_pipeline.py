"""FlexIPPipeline on the tiny model set: the dial, guidance's null reference, schedulers, input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from flexip import FlexIPAdapter, FlexIPError, FlexIPPipeline
from flexip.schedulers import SCHEDULERS, make_scheduler

STEPS = 2


def generate(pipe, reference, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    return pipe(
        "a photo of a dog", reference=reference, generator=torch.Generator().manual_seed(seed), output_type="np",
        **kwargs,
    ).images  # fmt: skip


def test_preservation_list_equals_values_one_by_one(pipe, pictures):
    values = [0.0, 0.3, 1.0]
    swept = generate(pipe, pictures[0], preservation=values, num_images_per_prompt=2)
    assert swept.shape == (2 * len(values), 32, 32, 3)
    alone = {
        value: generate(pipe, pictures[0], preservation=value, num_images_per_prompt=2) for value in values
    }
    # Documented order: for each image of the prompt, one image per preservation value.
    for image_index in range(2):
        for value_index, value in enumerate(values):
            got = swept[image_index * len(values) + value_index]
            np.testing.assert_allclose(got, alone[value][image_index], atol=1e-4)
    assert np.abs(alone[0.0] - alone[1.0]).max() > 1e-2, "the dial must change the image"


def test_scale_zero_is_plain_stable_diffusion(pipe, tiny_models, pictures):
    plain = StableDiffusionPipeline.from_pretrained(tiny_models.base)
    plain.set_progress_bar_config(disable=True)
    expected = plain(
        "a photo of a dog",
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    got = generate(pipe, pictures[0], preservation=0.7, scale=0.0)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(generate(pipe, pictures[0], preservation=0.7) - expected).max() > 1e-3


def test_reference_changes_the_image(pipe, pictures):
    first, second = (
        generate(pipe, reference, preservation=0.7, guidance_scale=1.0) for reference in pictures[:2]
    )
    assert np.abs(first - second).max() > 1e-3


def test_guidance_unconditional_half_uses_null_reference_and_negative_embeddings(pipe, adapter, pictures):
    """docs/method.md §4: the unconditional half gets P and S of the null reference, S from the embeddings
    used."""
    generator = torch.Generator().manual_seed(3)
    prompt_embeds, negative_embeds = torch.randn(2, 1, 77, 32, generator=generator)
    seen = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"]), with_kwargs=True
    )
    try:
        pipe(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds, reference=pictures[0],
             preservation=0.5, num_inference_steps=STEPS, output_type="latent")  # fmt: skip
    finally:
        hook.remove()
    assert len(seen) == STEPS
    text, condition = seen[0]
    assert all(step[1] is condition for step in seen), "one condition per generation, reused at every step"
    torch.testing.assert_close(text, torch.cat([negative_embeds, prompt_embeds]))

    encoded = pipe.flexip.encode_reference(pictures[0])
    clip_embeds = torch.cat([torch.zeros_like(encoded.clip_embeds), encoded.clip_embeds])  # the null reference first
    dino_tokens = torch.cat([torch.zeros_like(encoded.dino_tokens), encoded.dino_tokens])
    with torch.no_grad():
        expected_p = adapter.preservation(clip_embeds, dino_tokens)
        expected_s = adapter.personalization(clip_embeds, text)
    torch.testing.assert_close(condition.preservation_tokens, expected_p)
    torch.testing.assert_close(condition.personalization_tokens, expected_s)


def test_guidance_off_uses_the_reference_only(pipe, pictures):
    seen = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"]), with_kwargs=True
    )
    try:
        generate(pipe, pictures[0], preservation=0.5, guidance_scale=1.0)
    finally:
        hook.remove()
    text, condition = seen[0]
    assert text.shape[0] == 1 and condition.preservation_tokens.shape[0] == 1


def test_kv_cache_gives_the_same_images(pipe, pictures):
    cached = generate(pipe, pictures[0], preservation=[0.2, 0.9], guidance_scale=1.0)
    pipe.flexip._cache_kv = False
    try:
        uncached = generate(pipe, pictures[0], preservation=[0.2, 0.9], guidance_scale=1.0)
    finally:
        pipe.flexip._cache_kv = True
    np.testing.assert_allclose(cached, uncached, atol=1e-6)


def test_branch_keys_values_are_computed_once_per_generation(pipe, pictures):
    projections = [layer.to_k_preservation for layer in pipe.flexip.adapter.layers.values()]
    calls = []
    hooks = [projection.register_forward_hook(lambda *args: calls.append(1)) for projection in projections]
    try:
        generate(pipe, pictures[0], preservation=0.5, num_inference_steps=3)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(calls) == len(projections)


def test_encoded_reference_is_reused(pipe, pictures):
    encoded = pipe.flexip.encode_reference(pictures[0])
    np.testing.assert_allclose(
        generate(pipe, encoded, preservation=0.6, guidance_scale=1.0),
        generate(pipe, pictures[0], preservation=0.6, guidance_scale=1.0),
        atol=1e-6,
    )
    with pytest.raises(FlexIPError, match="2 subjects"):
        generate(pipe, type(encoded)(encoded.clip_embeds.repeat(2, 1), encoded.dino_tokens.repeat(2, 1, 1)))


def test_generator_list_is_one_per_prompt_and_image(pipe, pictures):
    generators = [torch.Generator().manual_seed(seed) for seed in (5, 6)]
    images = pipe(["a dog", "a cat"], reference=pictures[0], preservation=[0.0, 1.0], generator=generators,
                  num_inference_steps=STEPS, guidance_scale=1.0, output_type="np").images  # fmt: skip
    assert images.shape[0] == 4
    cat_alone = pipe("a cat", reference=pictures[0], preservation=1.0, generator=torch.Generator().manual_seed(6),
                     num_inference_steps=STEPS, guidance_scale=1.0, output_type="np").images  # fmt: skip
    np.testing.assert_allclose(images[3], cat_alone[0], atol=1e-4)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_schedulers(pipe, pictures, name):
    original = pipe.scheduler
    pipe.scheduler = make_scheduler(name, original)
    try:
        images = generate(pipe, pictures[0], preservation=[0.0, 1.0], guidance_scale=1.0)
    finally:
        pipe.scheduler = original
    assert images.shape == (2, 32, 32, 3) and np.isfinite(images).all()
    assert np.abs(images[0] - images[1]).max() > 1e-3


def test_follows_the_base_model_to_another_dtype(tiny_models, pictures):
    pipe = FlexIPPipeline.from_pretrained(base=tiny_models.base, adapter=tiny_models.adapter)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(torch.bfloat16)
    images = generate(pipe, pictures[0], preservation=0.5, guidance_scale=1.0)
    assert np.isfinite(images).all()
    assert next(pipe.flexip.adapter.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"preservation": 1.5}, "outside"),
        ({"preservation": -0.1}, "outside"),
        ({"preservation": float("nan")}, "outside"),
        ({"preservation": "a lot"}, "not a number"),
        ({"preservation": []}, "empty"),
        ({"preservation": [0.5, 2.0]}, "outside"),
        ({"scale": -1.0}, "scale"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"guidance_scale": float("inf")}, "guidance_scale"),
        ({"num_images_per_prompt": 0}, "num_images_per_prompt"),
        ({"reference": None}, "reference is missing"),
        ({"reference": "/nonexistent/dog.jpg"}, "does not exist"),
    ],
)
def test_bad_input_fails_before_any_model_runs(pipe, pictures, kwargs, message):
    calls = []
    modules = [pipe.unet, pipe.text_encoder, pipe.vae, pipe.flexip.reference_encoder, pipe.flexip.adapter]
    hooks = [module.register_forward_pre_hook(lambda *args: calls.append(args)) for module in modules]
    try:
        with pytest.raises(FlexIPError, match=message):
            pipe(**{"prompt": "a dog", "reference": pictures[0], "num_inference_steps": STEPS, **kwargs})
    finally:
        for hook in hooks:
            hook.remove()
    assert not calls


def test_loading_errors_name_what_is_wrong(tmp_path, tiny_models):
    with pytest.raises(FlexIPError, match="cannot load a Stable Diffusion 1.5 base"):
        FlexIPPipeline.from_pretrained(base=tmp_path / "nothing", adapter=tiny_models.adapter)
    with pytest.raises(FlexIPError, match="not found"):
        FlexIPPipeline.from_pretrained(base=tiny_models.base, adapter=tmp_path)
    unrecorded = FlexIPAdapter.from_pretrained(tiny_models.adapter)
    unrecorded.config.base_model = ""
    with pytest.raises(FlexIPError, match="does not record its base model"):
        FlexIPPipeline.from_pretrained(adapter=unrecorded)
