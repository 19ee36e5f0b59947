"""A FLUX.1 base given as one checkpoint file of its transformer (as Black Forest Labs and fine-tunes ship it)
loads through diffusers' `from_single_file`, its other parts from a diffusers directory (`--base-config`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FluxTransformer2DModel
from PIL import Image
from safetensors.torch import load_file, save_file

from flexip import FlexIPError, FlexIPPipeline
from flexip.families.flux import _repository_of
from flexip.families.registry import FLUX1, family_of_base


@pytest.fixture(scope="module")
def transformer_file(tiny_flux_models, tmp_path_factory):
    """A fine-tune of the tiny transformer (its output layer changed) as one file. In diffusers' key layout,
    which `from_single_file` loads as it is: diffusers converts Black Forest Labs' layout only at FLUX.1's own
    width (3072, written into its converter)."""
    path = tmp_path_factory.mktemp("flux-single-file") / "flux1-finetune.safetensors"
    weights = FluxTransformer2DModel.from_pretrained(tiny_flux_models.base, subfolder="transformer").state_dict()
    weights["proj_out.weight"] = weights["proj_out.weight"] * 1.5
    save_file(weights, path)
    return path


def generate(pipe):
    reference = Image.fromarray(np.full((32, 32, 3), 128, np.uint8))
    return pipe("a dog", reference=reference, preservation=0.7, num_inference_steps=2, height=32, width=32,
                generator=torch.Generator().manual_seed(0), output_type="np").images  # fmt: skip


def test_a_single_file_transformer_gives_the_images_of_its_diffusers_directory(tiny_flux_models, transformer_file):
    directory = FlexIPPipeline.from_pretrained(base=tiny_flux_models.base, adapter=tiny_flux_models.adapter)
    one_file = FlexIPPipeline.from_pretrained(
        base=transformer_file, adapter=tiny_flux_models.adapter, base_config=tiny_flux_models.base
    )
    assert type(one_file) is type(directory)
    base = generate(directory)
    fine_tune = load_file(transformer_file)
    ours = one_file.transformer.state_dict()
    assert ours.keys() == fine_tune.keys() and all(torch.equal(ours[key], fine_tune[key]) for key in ours)
    for name in ("vae", "text_encoder", "text_encoder_2"):  # the other parts: base_config's
        ours, theirs = getattr(one_file, name).state_dict(), getattr(directory, name).state_dict()
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs), name
    directory.transformer.load_state_dict(fine_tune)
    np.testing.assert_array_equal(generate(one_file), generate(directory))
    assert np.abs(generate(one_file) - base).max() > 1e-3


def test_a_flux_checkpoint_is_told_by_its_keys_before_it_loads(tiny_models, tmp_path):
    """Black Forest Labs' layout: double-stream blocks and `vector_in` (the pooled CLIP text, which FLUX.2 lacks);
    FLUX.1-dev has a guidance embedding, schnell none."""
    tensor = torch.zeros(1)
    flux1 = {"double_blocks.0.img_attn.norm.key_norm.scale": tensor, "vector_in.in_layer.weight": tensor}
    files = {}
    for name, keys in [("dev", {**flux1, "guidance_in.in_layer.weight": tensor}), ("schnell", flux1),
                       ("flux2", {"double_blocks.0.img_attn.norm.key_norm.scale": tensor})]:  # fmt: skip
        files[name] = tmp_path / f"{name}.safetensors"
        save_file({f"model.diffusion_model.{key}": value.clone() for key, value in keys.items()}, files[name])
    assert family_of_base(files["dev"]) is family_of_base(files["schnell"]) is FLUX1
    assert family_of_base(files["flux2"]) is None  # not FLUX.1's: the loader says what it is not
    assert _repository_of(files["dev"]) == "black-forest-labs/FLUX.1-dev"
    assert _repository_of(files["schnell"]) == "black-forest-labs/FLUX.1-schnell"
    with pytest.raises(FlexIPError, match="trained for Stable Diffusion 1.5 but the base .* is FLUX.1") as caught:
        FlexIPPipeline.from_pretrained(base=files["dev"], adapter=tiny_models.adapter, base_config=tiny_models.base)
    assert "\n" not in str(caught.value)
