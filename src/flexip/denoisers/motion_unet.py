"""AnimateDiff's UNet (`UNetMotionModel`: a Stable Diffusion UNet with motion modules): FlexIP joins the
spatial cross-attention layers (every `attn2` of the spatial transformers, named as in the UNet it was made
from, so an adapter of that UNet's family loads on it), never the motion modules, whose attention is
self-attention over the frames.

The UNet folds a clip's frames into the batch for its spatial layers: their rows are (sample, frame), and the
text reaching them as `encoder_hidden_states` is the pipeline's, already repeated once per frame. The condition
is built for the samples (one row each) and the layers read it for every frame of their sample
(`FlexIPCondition.frames`), so the references, tokens P and S and branch keys/values are computed once per
generation, not once per frame. Generation only: FlexIP does not train on clips through this UNet
(`Denoiser`, not `TrainableDenoiser`).
"""

from __future__ import annotations

from collections.abc import Callable

from diffusers import UNetMotionModel

from .blocks import UNET_BLOCKS
from .unet import UNetLayers


class MotionUNet(UNetLayers):
    name = "motion_unet"
    model_class = UNetMotionModel
    pipeline_attribute = "unet"
    block_names = UNET_BLOCKS  # the spatial layers keep the UNet's block names

    def with_condition(
        self, args: tuple, kwargs: dict, condition_for: Callable[..., object]
    ) -> tuple[tuple, dict]:
        """`unet(sample, timestep, encoder_hidden_states, ...)`, the sample (batch, channels, frames, height,
        width), the text given by name or third with a row per sample and frame."""
        sample = kwargs["sample"] if "sample" in kwargs else args[0]
        frames = sample.shape[2]

        def latent_size() -> tuple[int, int]:
            return tuple(sample.shape[-2:])

        if "encoder_hidden_states" in kwargs:
            text = kwargs["encoder_hidden_states"]
            kwargs["encoder_hidden_states"] = (text, condition_for(text, latent_size, frames))
        else:
            args = (*args[:2], (args[2], condition_for(args[2], latent_size, frames)), *args[3:])
        return args, kwargs
