"""AnimateDiff's UNet as a denoiser (`flexip.denoisers.motion_unet`): registered, generation-only, joined at the
spatial cross-attention layers (named as in the UNet it was made from) and never at the motion modules, and of
the Stable Diffusion 1.5 family, so an SD1.5 adapter loads on it and still records sd15."""

from __future__ import annotations

from diffusers import MotionAdapter, StableDiffusionPipeline, UNetMotionModel

from flexip import FlexIPAdapter
from flexip.denoisers.denoiser import TrainableDenoiser
from flexip.denoisers.registry import MOTION_UNET, UNET, denoiser_of
from flexip.families.registry import SD15, family_of_unet
from flexip.models.attach import joined_layers


def test_the_motion_unet_joins_the_spatial_cross_attention_of_the_unet_it_was_made_from(tiny_models):
    unet = StableDiffusionPipeline.from_pretrained(tiny_models.base).unet
    motion = UNetMotionModel.from_unet2d(unet, MotionAdapter.from_pretrained(tiny_models.motion_adapter))
    assert denoiser_of(motion) is MOTION_UNET and denoiser_of(unet) is UNET
    assert not isinstance(MOTION_UNET, TrainableDenoiser)  # generation only
    layers = joined_layers(motion)
    assert sorted(layers) == sorted(joined_layers(unet))
    assert not any("motion_modules" in name for name in layers)
    assert any("motion_modules" in name for name in motion.attn_processors)  # there, and left alone
    assert MOTION_UNET.block_names is UNET.block_names

    assert family_of_unet(motion) is SD15
    adapter = FlexIPAdapter.from_pretrained(tiny_models.adapter)
    adapter.check_compatible(motion)
    adapter.attach(motion)
    assert adapter.config.base_family == "sd15"
    FlexIPAdapter.detach(motion)
