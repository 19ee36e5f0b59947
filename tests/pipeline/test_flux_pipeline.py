"""FlexIP on FLUX.1 (the tiny FLUX.1 model set): the pipeline's invariants against diffusers' FluxPipeline, with
and without true CFG, FLUX.1-schnell, the stock FLUX pipelines, masks on the packed token grid, family checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusionPipeline
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

import flexip
from fixtures import poison_branch, tiny_flexip_pipe
from flexip import DialSchedule, FlexIPAdapter, FlexIPError, FlexIPFluxPipeline, FlexIPPipeline
from flexip.families.flux import Flux1
from flexip.families.registry import FLUX1, family_of_base
from flexip.models.flux_processor import FlexIPFluxAttnProcessor
from flexip.tiny import FLUX_T5_WIDTH, tiny_flux_transformer

STEPS = 2
SIZE = 32  # FLUX's pipelines make 1024 px unless told (256 px on the tiny kit): every call here asks for 32
TRUE_CFG = {"negative_prompt": "blurry", "true_cfg_scale": 2.0}


@pytest.fixture(scope="module")
def family():
    """The shared `adapter` and `pipe` of this module are FLUX.1's."""
    return "flux"


def generate(pipe, seed=0, **kwargs):
    kwargs = {"num_inference_steps": STEPS, "height": SIZE, "width": SIZE, **kwargs}
    kwargs.setdefault("prompt", "a photo of a dog")  # by name: Kontext's first argument is its image
    return pipe(generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs).images


def stock(base) -> FluxPipeline:
    """diffusers' FluxPipeline on `base`, loaded anew: its transformer runs diffusers' own processors."""
    pipe = FluxPipeline.from_pretrained(base)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_tiny_kit_is_a_flux_model_set_and_its_adapter_joins_the_double_stream_blocks(tiny_flux_models, pipe,
                                                                                           adapter):  # fmt: skip
    """`flexip tiny-models --family flux` (the session's kit) writes FLUX.1's pipeline in diffusers' formats."""
    assert family_of_base(tiny_flux_models.base) is FLUX1
    assert type(pipe.tokenizer_2).__name__ in ("T5TokenizerFast", "T5Tokenizer")  # transformers 4 and 5
    assert tiny_flux_models.manifest.is_file() and tiny_flux_models.clip_model.is_dir()
    assert FlexIPAdapter.from_pretrained(tiny_flux_models.adapter).config.base_model == "../base"
    config = adapter.config
    assert config.base_family == "flux" and config.cross_attention_dim == FLUX_T5_WIDTH  # the T5 tokens' width
    assert list(config.layers) == [f"transformer_blocks.{index}.attn.processor" for index in range(2)]
    assert type(pipe) is FlexIPFluxPipeline and isinstance(pipe, FluxPipeline)
    processors = pipe.transformer.attn_processors
    assert isinstance(processors["transformer_blocks.1.attn.processor"], FlexIPFluxAttnProcessor)
    assert type(processors["single_transformer_blocks.0.attn.processor"]) is FluxAttnProcessor


@pytest.mark.parametrize("guidance", [{}, TRUE_CFG], ids=["distilled", "true-cfg"])
def test_scale_zero_is_the_stock_flux_pipeline(tiny_flux_models, pipe, reference, guidance):
    expected = generate(stock(tiny_flux_models.base), **guidance)
    np.testing.assert_array_equal(generate(pipe, reference=reference, preservation=0.7, scale=0.0, **guidance),
                                  expected)  # fmt: skip
    assert np.abs(generate(pipe, reference=reference, preservation=0.7, **guidance) - expected).max() > 1e-3


def transformer_calls(pipe, run) -> list[tuple]:
    """(text embeddings, FlexIP condition) of every transformer call while `run()` runs."""
    calls = []

    def record(module, args, kwargs):
        calls.append((kwargs["encoder_hidden_states"], kwargs["joint_attention_kwargs"]["ip_hidden_states"]))

    hook = pipe.transformer.register_forward_pre_hook(record, with_kwargs=True)  # after FlexIP's own hook
    try:
        run()
    finally:
        hook.remove()
    return calls


def test_true_cfg_gives_the_negative_call_alone_the_null_reference(pipe, reference):
    calls = transformer_calls(pipe, lambda: generate(pipe, reference=reference, num_inference_steps=3, **TRUE_CFG))
    assert len(calls) == 6  # two calls a step: the conditional one, then the negative prompt's
    (text, conditional), (negative_text, negative) = calls[:2]
    assert all(c is conditional for _, c in calls[0::2]) and all(c is negative for _, c in calls[1::2])
    encoded = pipe.flexip.encode_reference(reference)
    adapter, null = pipe.flexip.adapter, (torch.zeros_like(encoded.clip_embeds), torch.zeros_like(encoded.dino_tokens))
    read = Flux1.personalization_tokens
    for condition, features, embeds in ((conditional, (encoded.clip_embeds, encoded.dino_tokens), text),
                                        (negative, null, negative_text)):  # fmt: skip
        torch.testing.assert_close(condition.preservation_tokens, adapter.preservation(*features))
        torch.testing.assert_close(condition.personalization_tokens, adapter.personalization(features[0], embeds[:, :read]))
    assert condition.personalization_tokens.shape[1] == read < text.shape[1]  # the first 77 of the 512 T5 tokens


def test_training_will_encode_captions_as_the_pipeline_encodes_prompts(pipe):
    """FLUX.1's caption text path (`Flux1.encode_captions`, for its training) is `FluxPipeline.encode_prompt`'s."""
    captions = ["a red circle on a white background", ""]
    text = pipe.flexip.family.encode_captions(pipe.components, captions, torch.zeros(2, 6), torch.device("cpu"))
    embeds, pooled, _ = pipe.encode_prompt(captions, device="cpu")
    assert torch.equal(text.embeds, embeds) and torch.equal(text.added["pooled_projections"], pooled)


def test_a_sweep_equals_its_values_one_by_one(pipe, reference):
    values = [0.0, 0.3, 1.0]
    swept = generate(pipe, reference=reference, preservation=values, num_images_per_prompt=2)
    alone = {value: generate(pipe, reference=reference, preservation=value, num_images_per_prompt=2) for value in values}
    for image_index in range(2):
        for value_index, value in enumerate(values):
            np.testing.assert_allclose(swept[image_index * len(values) + value_index], alone[value][image_index],
                                       atol=1e-4)  # fmt: skip
    assert np.abs(alone[0.0] - alone[1.0]).max() > 1e-2, "the dial must change the image"


@pytest.mark.parametrize("g, branch", [(1.0, "personalization"), (0.0, "preservation")])
def test_an_end_of_the_dial_never_reads_the_other_branch(request, reference, g, branch):
    pipe = tiny_flexip_pipe(request, "flux")  # its own: the test poisons its weights
    before = generate(pipe, reference=reference, preservation=g, **TRUE_CFG)
    poison_branch(pipe.flexip.adapter, branch, float("nan"))
    np.testing.assert_array_equal(generate(pipe, reference=reference, preservation=g, **TRUE_CFG), before)
    assert np.isnan(generate(pipe, reference=reference, preservation=0.5)).any()  # the poison is live


def test_the_dial_per_block_and_over_the_steps_equals_the_number_it_holds_everywhere(pipe, reference):
    number = generate(pipe, reference=reference, preservation=0.3)
    for same in ({"double": 0.3}, {"double": {"block_0": 0.3, "block_1": [0.3]}}, DialSchedule(0.3, 0.3)):
        np.testing.assert_array_equal(generate(pipe, reference=reference, preservation=same), number)
    for other in ({"double": {"block_1": 0.9}}, DialSchedule(0.3, 0.9)):
        assert np.abs(generate(pipe, reference=reference, preservation=other) - number).max() > 1e-3
    with pytest.raises(FlexIPError, match="unknown block 'single'; the keys are double"):
        generate(pipe, reference=reference, preservation={"single": 0.3})


def test_several_references_mix_as_on_a_unet(pipe, pictures):
    once = generate(pipe, reference=pictures[0])
    np.testing.assert_array_equal(generate(pipe, reference=[pictures[0], pictures[0]]), once)
    assert np.abs(generate(pipe, reference=pictures[:2], reference_weights=[0.7, 0.3]) - once).max() > 1e-3


def branch_outputs(pipe, run) -> list[torch.Tensor]:
    """The branches (B, N, h·d) each double-stream block's FlexIP processor hands its block while `run()` runs."""
    outputs = []
    hooks = [block.attn.register_forward_hook(lambda module, args, output: outputs.append(output[2]))
             for block in pipe.transformer.transformer_blocks]  # fmt: skip
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


def test_masks_act_on_the_packed_token_grid(pipe, pictures):
    plain = generate(pipe, reference=pictures[0], preservation=[0.3, 1.0])
    ones = np.ones((SIZE, SIZE))
    np.testing.assert_array_equal(generate(pipe, reference=pictures[0], reference_masks=[ones],
                                           preservation=[0.3, 1.0]), plain)  # fmt: skip
    # 32x64 px is 16x32 latents, 8x16 tokens once packed 2x2, in rows: the mask's left half is their 8 first
    # columns.
    left = np.zeros((SIZE, 2 * SIZE))
    left[:, :SIZE] = 1
    outputs = branch_outputs(pipe, lambda: generate(pipe, reference=pictures[0], reference_masks=[left],
                                                    width=2 * SIZE, num_inference_steps=1))  # fmt: skip
    assert len(outputs) == 2
    for output in outputs:
        grid = output.reshape(1, 8, 16, -1)
        assert grid[:, :, 8:].abs().max() == 0 and grid[:, :, :8].abs().min() > 0
    with pytest.raises(FlexIPError, match="reference_masks are 32x64 .* but the image is 32x32"):
        generate(pipe, reference=pictures[0], reference_masks=[left])


@pytest.mark.parametrize("guidance, calls", [({}, 1), (TRUE_CFG, 2)], ids=["distilled", "true-cfg"])
def test_each_branchs_keys_values_are_computed_once_per_generation(pipe, reference, guidance, calls):
    """Once for the conditional calls and, under true CFG, once for the negative ones: not once a step."""
    layers = pipe.flexip.adapter.layers.values()
    projections = [getattr(layer, name) for layer in layers for name in ("to_k_preservation", "to_k_personalization")]
    counted = []
    hooks = [projection.register_forward_hook(lambda *args: counted.append(1)) for projection in projections]
    try:
        generate(pipe, reference=reference, num_inference_steps=3, **guidance)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(counted) == calls * len(projections)


def test_flux_schnell_runs_with_its_own_defaults(tiny_flux_models, adapter, reference):
    """FLUX.1-schnell: no guidance embedding, no resolution-dependent shift, guidance_scale 0, 256 T5 tokens."""
    base = FluxPipeline.from_pretrained(tiny_flux_models.base)
    torch.manual_seed(1)
    schnell = FluxPipeline(**{**base.components, "transformer": tiny_flux_transformer(guidance_embeds=False),
                              "scheduler": FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)})  # fmt: skip
    schnell.set_progress_bar_config(disable=True)
    settings = {"guidance_scale": 0.0, "max_sequence_length": 256}
    expected = generate(schnell, **settings)
    flexip.load_flexip(schnell, adapter)
    np.testing.assert_array_equal(generate(schnell, reference=reference, scale=0.0, **settings), expected)
    keep, edit = (generate(schnell, reference=reference, preservation=g, **settings) for g in (1.0, 0.0))
    assert np.abs(keep - edit).max() > 1e-3
    flexip.unload_flexip(schnell)


def call(pipe, kind: str, images, **flexip_kwargs):
    inputs = {
        "txt2img": {},
        "img2img": {"image": images["init"], "strength": 0.9},
        "inpaint": {"image": images["init"], "mask_image": images["mask"], "strength": 0.9},
        "controlnet": {"control_image": images["control"]},
        "kontext": {"image": images["init"], "_auto_resize": False, "max_area": SIZE * SIZE},
    }[kind]
    return generate(pipe, **inputs, **flexip_kwargs)


def stock_flux_pipeline(kind: str, base):
    import diffusers

    text_to_image = FluxPipeline.from_pretrained(base)
    if kind == "txt2img":
        pipe = text_to_image
    elif kind == "controlnet":
        torch.manual_seed(0)
        controlnet = diffusers.FluxControlNetModel.from_transformer(
            text_to_image.transformer, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2
        )
        pipe = diffusers.FluxControlNetPipeline(**text_to_image.components, controlnet=controlnet)
    else:
        name = {"img2img": "FluxImg2ImgPipeline", "inpaint": "FluxInpaintPipeline", "kontext": "FluxKontextPipeline"}
        pipe = getattr(diffusers, name[kind])(**text_to_image.components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("kind", ["txt2img", "img2img", "inpaint", "controlnet", "kontext"])
def test_load_flexip_on_stock_flux_pipelines(tiny_flux_models, adapter, images, kind):
    pipe = stock_flux_pipeline(kind, tiny_flux_models.base)
    stock_class, processors = type(pipe), dict(pipe.transformer.attn_processors)
    before = call(pipe, kind, images)

    flexip.load_flexip(pipe, adapter)
    reference = images["references"][0]
    keep, edit = (call(pipe, kind, images, reference=reference, preservation=g) for g in (1.0, 0.0))
    assert np.abs(keep - edit).max() > 1e-3, "the dial must change the image"
    swept = call(pipe, kind, images, reference=reference, preservation=[1.0, 0.0])
    np.testing.assert_allclose(swept, np.concatenate([keep, edit]), atol=1e-4)
    if kind == "kontext":  # its context image shares the image stream: masks are refused before any step
        calls = []
        hook = pipe.transformer.register_forward_pre_hook(lambda *_: calls.append(1))
        with pytest.raises(FlexIPError, match="takes no reference_masks"):
            call(pipe, kind, images, reference=reference, reference_masks=[np.ones((SIZE, SIZE))])
        hook.remove()
        assert calls == []

    flexip.unload_flexip(pipe)
    assert type(pipe) is stock_class and dict(pipe.transformer.attn_processors) == processors
    np.testing.assert_array_equal(call(pipe, kind, images), before)


def test_an_adapter_of_the_other_family_is_refused_in_one_line(tiny_models, tiny_flux_models):
    cases = [
        (tiny_models.adapter, tiny_flux_models.base, "Stable Diffusion 1.5", "FLUX.1"),
        (tiny_flux_models.adapter, tiny_models.base, "FLUX.1", "Stable Diffusion 1.5"),
    ]
    for adapter, base, ours, theirs in cases:
        with pytest.raises(FlexIPError, match=f"trained for {ours} but the base .* is {theirs}") as caught:
            FlexIPPipeline.from_pretrained(base=base, adapter=adapter)
        assert "\n" not in str(caught.value)
        stock_class = FluxPipeline if theirs == "FLUX.1" else StableDiffusionPipeline
        stock = stock_class.from_pretrained(base)
        with pytest.raises(FlexIPError, match=f"trained for {ours} .* but the base model is {theirs}") as caught:
            flexip.load_flexip(stock, adapter)
        assert "\n" not in str(caught.value) and getattr(stock, "flexip", None) is None and type(stock) is stock_class
