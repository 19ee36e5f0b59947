"""The denoiser seam (`flexip.denoisers`) and the declared pipeline calls (`flexip.pipeline.calls`): a kind of
denoiser that lacks a piece is refused when registered, a pipeline class FlexIP has no declaration for is
refused by `load_flexip` in one line naming those it supports."""

from __future__ import annotations

import json
import shutil

import diffusers
import pytest

import flexip
from fixtures import stock_pipeline
from flexip import FlexIPError
from flexip.denoisers.denoiser import TrainableDenoiser
from flexip.denoisers.registry import DENOISERS, FLUX, UNET, register
from flexip.denoisers.unet import UNetCrossAttention, UNetLayers
from flexip.pipeline.calls import SUPPORTED


def denoiser_without(piece: str) -> type:
    """The UNet denoiser's class as a new module would write it, with one piece (method or attribute) left out."""
    kept = {
        name: value for cls in (UNetLayers, UNetCrossAttention) for name, value in vars(cls).items()
        if name not in (piece, "__dict__")
    }  # fmt: skip
    return type("Forgetful", (TrainableDenoiser,), kept)


@pytest.mark.parametrize("piece", ["attention_layers", "layer_grid", "text_keys", "with_condition", "noisy_and_target",
                                   "name", "pipeline_attribute", "block_names"])  # fmt: skip
def test_a_denoiser_missing_a_piece_is_refused_when_registered(piece):
    registered = dict(DENOISERS)
    with pytest.raises(TypeError, match=f"Forgetful is not a complete denoiser: it lacks {piece}"):
        register(denoiser_without(piece))
    assert DENOISERS == registered
    with pytest.raises(TypeError, match="a subclass of Denoiser"):
        register(object)


def test_the_unet_places_diffusers_block_names():
    names = UNET.block_names
    assert names.blocks == ("down", "mid", "up")
    assert names.block_of("down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor") == ("down", 1, 0)
    assert names.block_of("mid_block.attentions.0.transformer_blocks.0.attn2.processor") == ("mid", 0, 0)
    assert names.block_of("up_blocks.2.attentions.1.transformer_blocks.0.attn2.processor") == ("up", 2, 1)
    assert names.block_of("conv_in") is None


def test_flux_names_its_double_stream_blocks():
    names = FLUX.block_names
    assert names.blocks == ("double",)
    assert names.block_of("transformer_blocks.3.attn.processor") == ("double", 3, 0)
    assert names.block_of("single_transformer_blocks.3.attn.processor") is None  # not joined
    assert isinstance(FLUX, TrainableDenoiser) and isinstance(UNET, TrainableDenoiser)


def test_an_unsupported_pipeline_class_is_refused_in_one_line(tiny_models, load_test_adapter):
    pipe = stock_pipeline("txt2img", tiny_models.base)
    unsupported = diffusers.StableDiffusionPAGPipeline(**pipe.components)
    with pytest.raises(FlexIPError, match="StableDiffusionPAGPipeline is not a pipeline FlexIP supports") as error:
        flexip.load_flexip(unsupported, load_test_adapter())
    assert "\n" not in str(error.value) and all(name in str(error.value) for name in SUPPORTED)
    assert not hasattr(unsupported, "flexip")


def test_training_loads_the_denoiser_a_base_names_and_refuses_one_it_does_not_join(tiny_models, tmp_path, capsys):
    from fixtures import train_on_the_kit

    base = shutil.copytree(tiny_models.base, tmp_path / "base")
    index = json.loads((base / "model_index.json").read_text())
    index["unet"] = ["diffusers", "UNet2DModel"]  # an unconditional UNet: nothing for FlexIP to join
    (base / "model_index.json").write_text(json.dumps(index))
    assert train_on_the_kit(tiny_models, tmp_path / "run", "--set", f"model.base={base}") == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("flexip ")]
    assert len(lines) == 1 and "names no denoiser FlexIP joins (unet: UNet2DConditionModel, " in lines[0], err


def test_the_torch_free_names_agree_with_the_registries():
    """The command line reads block names and a family's denoiser without torch (`denoisers/blocks.py`,
    `families/names.py`); they must say what the registered denoisers and families say."""
    from flexip.denoisers.blocks import BLOCK_NAMES
    from flexip.denoisers.registry import DENOISERS
    from flexip.families.names import DENOISER_OF_FAMILY
    from flexip.families.registry import FAMILIES

    assert BLOCK_NAMES == {name: denoiser.block_names for name, denoiser in DENOISERS.items()}
    assert DENOISER_OF_FAMILY == {name: family.denoiser.name for name, family in FAMILIES.items()}
