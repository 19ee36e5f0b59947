"""`FlexIPPipeline.from_pretrained` in diffusers' shape: a base as the first argument (or `base=`), `adapter=`,
`torch_dtype`, `revision`, `variant`; the embedded demo model with neither, the recorded base with an adapter
alone, a one-line error for a base alone."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline

from flexip import FlexIPError, FlexIPPipeline
from flexip.pipeline.embedded import embedded_model


def unet_weights(pipe) -> list[torch.Tensor]:
    return [tensor.clone() for tensor in pipe.unet.state_dict().values()]


def test_the_base_is_the_first_argument_and_base_is_its_other_name(tiny_models):
    positional = FlexIPPipeline.from_pretrained(tiny_models.base, adapter=tiny_models.adapter)
    named = FlexIPPipeline.from_pretrained(base=tiny_models.base, adapter=tiny_models.adapter)
    assert positional.config._name_or_path == named.config._name_or_path == str(tiny_models.base)
    with pytest.raises(FlexIPError, match="give the base model once"):
        FlexIPPipeline.from_pretrained(tiny_models.base, base=tiny_models.base, adapter=tiny_models.adapter)


def test_an_adapter_alone_loads_the_base_it_records(tiny_models):
    pipe = FlexIPPipeline.from_pretrained(adapter=tiny_models.adapter)
    assert pipe.config._name_or_path == str(tiny_models.base)


def test_neither_loads_the_embedded_demo_model():
    models = embedded_model().models
    pipe = FlexIPPipeline.from_pretrained()
    assert pipe.config._name_or_path == str(models.base)
    assert pipe.flexip.adapter.config.layers.keys() == FlexIPPipeline.from_pretrained(
        models.base, adapter=models.adapter
    ).flexip.adapter.config.layers.keys()


def test_a_base_alone_asks_for_the_adapter(tiny_models):
    with pytest.raises(FlexIPError, match=r"pass adapter=") as raised:
        FlexIPPipeline.from_pretrained(tiny_models.base)
    assert "\n" not in str(raised.value) and str(tiny_models.base) in str(raised.value)


def test_variant_chooses_the_base_files(tmp_path, tiny_models):
    stock = StableDiffusionPipeline.from_pretrained(tiny_models.base)
    with torch.no_grad():
        for tensor in stock.unet.parameters():
            tensor.mul_(0.5)
    stock.save_pretrained(tmp_path / "base", variant="half")  # weights under *.half.safetensors only
    halved = FlexIPPipeline.from_pretrained(tmp_path / "base", adapter=tiny_models.adapter, variant="half")
    for got, expected in zip(unet_weights(halved), stock.unet.state_dict().values(), strict=True):
        assert torch.equal(got, expected)
    with pytest.raises(FlexIPError, match="cannot load a Stable Diffusion 1.5 base model"):
        FlexIPPipeline.from_pretrained(tmp_path / "base", adapter=tiny_models.adapter, variant="other")


def test_revision_reaches_diffusers_loader(monkeypatch, tiny_models):
    asked = []
    load = StableDiffusionPipeline.from_pretrained.__func__

    def recording(cls, path, **kwargs):
        asked.append(kwargs.get("revision"))
        return load(cls, path, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "from_pretrained", classmethod(recording))
    FlexIPPipeline.from_pretrained(tiny_models.base, adapter=tiny_models.adapter, revision="v2")
    FlexIPPipeline.from_pretrained(tiny_models.base, adapter=tiny_models.adapter)
    assert asked == ["v2", None]
