"""A base given as one checkpoint file (a fine-tune's `.safetensors`, original layout) loads for both families
through diffusers' `from_single_file`, taking its configs from a diffusers directory (`--base-config`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from flexip import FlexIPError, FlexIPPipeline
from flexip.cli import main
from flexip.families.registry import SD15, SDXL, family_of_base
from ldm_checkpoint import save_single_file


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def kit(request):
    return request.getfixturevalue({"sd15": "tiny_models", "sdxl": "tiny_xl_models"}[request.param])


@pytest.fixture(scope="module")
def single_file(kit, tmp_path_factory):
    path = tmp_path_factory.mktemp("single-file") / "fine-tune.safetensors"
    pipe = FlexIPPipeline.from_pretrained(base=kit.base, adapter=kit.adapter)
    save_single_file(pipe, path)
    return path


def generate(pipe):
    reference = Image.fromarray(np.full((32, 32, 3), 128, np.uint8))
    return pipe("a dog", reference=reference, preservation=0.7, num_inference_steps=2,
                generator=torch.Generator().manual_seed(0), output_type="np").images  # fmt: skip


def test_a_single_file_base_gives_the_same_images_as_its_diffusers_directory(kit, single_file):
    assert family_of_base(single_file) is family_of_base(kit.base)
    directory = FlexIPPipeline.from_pretrained(base=kit.base, adapter=kit.adapter)
    one_file = FlexIPPipeline.from_pretrained(base=single_file, adapter=kit.adapter, base_config=kit.base)
    assert type(one_file) is type(directory)
    for name in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(one_file, name).state_dict(), getattr(directory, name).state_dict()
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs), name
    np.testing.assert_array_equal(generate(one_file), generate(directory))


def test_flexip_generate_takes_a_single_file_base_with_base_config(kit, single_file, tmp_path, capsys):
    out = tmp_path / "image.png"
    code = main(["generate", "--adapter", str(kit.adapter), "--base", str(single_file), "--base-config", str(kit.base),
                 "--reference", str(kit.data / "image0.png"), "--prompt", "a dog", "--steps", "1", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err[-2000:]
    assert out.is_file()


def test_single_file_mistakes_fail_in_one_line(tiny_models, tiny_xl_models, tmp_path):
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"not opened")
    with pytest.raises(FlexIPError, match=r"must be a \.safetensors file .* pickles"):
        FlexIPPipeline.from_pretrained(base=pickle, adapter=tiny_models.adapter)
    with pytest.raises(FlexIPError, match="base_config .* is for a base given as one checkpoint file"):
        FlexIPPipeline.from_pretrained(base=tiny_models.base, adapter=tiny_models.adapter, base_config=tiny_models.base)
    xl_file = tmp_path / "xl.safetensors"
    save_single_file(FlexIPPipeline.from_pretrained(base=tiny_xl_models.base, adapter=tiny_xl_models.adapter), xl_file)
    assert family_of_base(xl_file) is SDXL and family_of_base(tiny_models.base) is SD15
    assert family_of_base("../not-here") is family_of_base(pickle) is None  # neither a hub id nor safetensors
    with pytest.raises(FlexIPError, match="trained for Stable Diffusion 1.5 but the base .* is SDXL"):
        FlexIPPipeline.from_pretrained(base=xl_file, adapter=tiny_models.adapter, base_config=tiny_models.base)
