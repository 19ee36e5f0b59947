"""FlexIP on SDXL (the tiny SDXL model set): the pipeline's invariants, stock SDXL pipelines, family checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

import flexip
from fixtures import poison_branch, stock_pipeline, tiny_flexip_pipe
from flexip import FlexIPAdapter, FlexIPError, FlexIPPipeline, FlexIPXLPipeline
from flexip.cli import main
from flexip.families.registry import SDXL

STEPS = 2
PROMPT = "a photo of a dog"


@pytest.fixture(scope="module")
def family():
    """The shared `adapter` and `pipe` of this module are SDXL's."""
    return "sdxl"


def generate(pipe, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    return pipe(PROMPT, generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs).images


def test_the_adapter_is_sized_from_the_sdxl_unet_and_records_its_family(adapter, tiny_xl_models):
    config = adapter.config
    assert config.base_family == "sdxl"
    assert config.cross_attention_dim == 32 + 48  # both text encoders' hidden states, concatenated
    heads = {out_dim for _, out_dim in config.layers.values()}
    assert len(config.layers) == 11 and heads == {32, 64}  # every attn2 of both widths, read from the UNet
    assert FlexIPAdapter.from_pretrained(tiny_xl_models.adapter).config.base_family == "sdxl"


def test_from_pretrained_gives_the_sdxl_pipeline_with_its_arguments(pipe, images):
    assert type(pipe) is FlexIPXLPipeline and isinstance(pipe, StableDiffusionXLPipeline)
    reference = images["references"][0]
    default = generate(pipe, reference=reference)
    assert default.shape == (1, 32, 32, 3)  # SDXL's default size: the UNet's sample size
    second = generate(pipe, reference=reference, prompt_2="a cat in the snow")
    assert np.abs(second - default).max() > 1e-3  # prompt_2 reaches the second text encoder
    sized = generate(pipe, reference=reference, original_size=(64, 64), target_size=(32, 32))
    assert np.abs(sized - default).max() > 1e-3  # the size conditioning reaches the UNet


def test_preservation_list_equals_values_one_by_one(pipe, images):
    values = [0.0, 0.3, 1.0]
    reference = images["references"][0]
    swept = generate(pipe, reference=reference, preservation=values, num_images_per_prompt=2)
    alone = {value: generate(pipe, reference=reference, preservation=value, num_images_per_prompt=2) for value in values}
    for image_index in range(2):
        for value_index, value in enumerate(values):
            got = swept[image_index * len(values) + value_index]
            np.testing.assert_allclose(got, alone[value][image_index], atol=1e-4)
    assert np.abs(alone[0.0] - alone[1.0]).max() > 1e-2, "the dial must change the image"


@pytest.mark.parametrize("zeros", [True, False], ids=["zeros-for-empty-prompt", "encoded-empty-prompt"])
@pytest.mark.parametrize("negative", [None, "blurry"])
def test_scale_zero_is_the_stock_sdxl_pipeline(pipe, images, zeros, negative):
    """Guidance's unconditional half (negative prompt and pooled embeddings, or zeros) is built as the stock
    pipeline builds it: at s = 0 the images are the stock pipeline's, built from the same components."""
    pipe.register_to_config(force_zeros_for_empty_prompt=zeros)
    try:
        stock = StableDiffusionXLPipeline(**pipe.components, force_zeros_for_empty_prompt=zeros)
        stock.set_progress_bar_config(disable=True)
        expected = generate(stock, negative_prompt=negative)
        got = generate(pipe, reference=images["references"][0], preservation=0.7, scale=0.0, negative_prompt=negative)
    finally:
        pipe.register_to_config(force_zeros_for_empty_prompt=True)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(generate(pipe, reference=images["references"][0], preservation=0.7) - expected).max() > 1e-3


@pytest.mark.parametrize("g, branch", [(1.0, "personalization"), (0.0, "preservation")])
def test_an_end_of_the_dial_never_reads_the_other_branch(request, images, g, branch):
    pipe = tiny_flexip_pipe(request, "sdxl")  # its own: the test poisons its weights
    reference = images["references"][0]
    before = generate(pipe, reference=reference, preservation=g)
    poison_branch(pipe.flexip.adapter, branch, float("nan"))
    np.testing.assert_array_equal(generate(pipe, reference=reference, preservation=g), before)
    assert np.isnan(generate(pipe, reference=reference, preservation=0.5)).any()  # the poison is live


def call(pipe, kind: str, images, **flexip_kwargs):
    inputs = {
        "txt2img": {},
        "img2img": {"image": images["init"], "strength": 0.9},
        "inpaint": {"image": images["init"], "mask_image": images["mask"], "strength": 0.9},
        "controlnet": {"image": images["control"]},
    }[kind]
    return generate(pipe, **inputs, **flexip_kwargs)


@pytest.mark.parametrize("kind", ["txt2img", "img2img", "inpaint", "controlnet"])
def test_load_flexip_on_stock_sdxl_pipelines(tiny_xl_models, adapter, images, kind):
    pipe = stock_pipeline(kind, tiny_xl_models.base, SDXL)
    stock_class, processors = type(pipe), dict(pipe.unet.attn_processors)
    before = call(pipe, kind, images)

    flexip.load_flexip(pipe, adapter)
    reference = images["references"][0]
    keep, edit = (call(pipe, kind, images, reference=reference, preservation=g) for g in (1.0, 0.0))
    assert np.abs(keep - edit).max() > 1e-3, "the dial must change the image"
    swept = call(pipe, kind, images, reference=reference, preservation=[1.0, 0.0])
    np.testing.assert_allclose(swept, np.concatenate([keep, edit]), atol=1e-4)
    np.testing.assert_allclose(call(pipe, kind, images, reference=reference, scale=0.0), before, atol=1e-5)

    flexip.unload_flexip(pipe)
    assert type(pipe) is stock_class and dict(pipe.unet.attn_processors) == processors
    np.testing.assert_array_equal(call(pipe, kind, images), before)


def test_an_adapter_of_the_other_family_is_refused_in_one_line(tiny_models, tiny_xl_models, tmp_path, capsys):
    cases = [
        (tiny_models.adapter, tiny_xl_models.base, "trained for Stable Diffusion 1.5 but the base", "is SDXL"),
        (tiny_xl_models.adapter, tiny_models.base, "trained for SDXL but the base", "is Stable Diffusion 1.5"),
    ]
    for adapter, base, first, second in cases:
        with pytest.raises(FlexIPError, match=first) as caught:
            FlexIPPipeline.from_pretrained(base=base, adapter=adapter)
        assert second in str(caught.value) and "\n" not in str(caught.value)
        stock_class = StableDiffusionXLPipeline if "SDXL" in second else StableDiffusionPipeline
        stock = stock_class.from_pretrained(base)
        with pytest.raises(FlexIPError, match="this adapter was trained for") as caught:
            flexip.load_flexip(stock, adapter)
        assert second.removeprefix("is ") in str(caught.value) and "\n" not in str(caught.value)
        assert getattr(stock, "flexip", None) is None and type(stock) is stock_class

        reference = str(tiny_models.data / "image0.png")
        code = main(["generate", "--adapter", str(adapter), "--base", str(base), "--reference", reference,
                     "--prompt", "a dog", "--steps", "1", "--out", str(tmp_path / "x.png")])  # fmt: skip
        captured = capsys.readouterr()
        assert code == 2 and "Traceback" not in captured.err
        errors = [line for line in captured.err.splitlines() if line.startswith("flexip ")]
        assert len(errors) == 1 and second in errors[0]
