"""What each diffusers pipeline FlexIP supports does in a call, declared rather than guessed from signatures
or tensor shapes: whether it starts from an image, whether it makes its own default size, and how it guides.

Every pipeline here guides as diffusers' `do_classifier_free_guidance` says: when `guidance_scale` > 1 and the
UNet has no guidance embedding (`time_cond_proj_dim`), each step is one UNet call on a batch of two halves, the
unconditional half first. A pipeline class not declared here is refused by `load_flexip`, naming these.
"""

from __future__ import annotations

from dataclasses import dataclass

import diffusers

from ..denoisers.registry import UNET, Denoiser
from ..errors import FlexIPError


@dataclass(frozen=True)
class PipelineCall:
    """One pipeline class's call, as FlexIP needs to know it."""

    denoiser: Denoiser  # the kind of denoiser it runs
    starts_from_image: bool  # VAE-encodes `image` (and `mask_image`) with the call's generators: img2img, inpainting
    default_size: bool  # makes the UNet's sample size when given no height and width: text-to-image

    def model(self, pipe):
        """The pipeline's denoiser model (its UNet)."""
        return getattr(pipe, self.denoiser.pipeline_attribute)

    def guided(self, pipe, guidance_scale: float) -> bool:
        """Whether this call's UNet batches hold an unconditional half first (classifier-free guidance)."""
        return guidance_scale > 1 and self.model(pipe).config.time_cond_proj_dim is None


TEXT_TO_IMAGE = PipelineCall(UNET, starts_from_image=False, default_size=True)
FROM_IMAGE = PipelineCall(UNET, starts_from_image=True, default_size=False)
CONTROLNET = PipelineCall(UNET, starts_from_image=False, default_size=False)  # sized by its control image

SUPPORTED: dict[str, PipelineCall] = {
    "StableDiffusionPipeline": TEXT_TO_IMAGE,
    "StableDiffusionImg2ImgPipeline": FROM_IMAGE,
    "StableDiffusionInpaintPipeline": FROM_IMAGE,
    "StableDiffusionControlNetPipeline": CONTROLNET,
    "StableDiffusionXLPipeline": TEXT_TO_IMAGE,
    "StableDiffusionXLImg2ImgPipeline": FROM_IMAGE,
    "StableDiffusionXLInpaintPipeline": FROM_IMAGE,
    "StableDiffusionXLControlNetPipeline": CONTROLNET,
}


def pipeline_call(pipe) -> PipelineCall:
    """The declared call of `pipe`'s class (or of the supported class it derives from, as FlexIP's own
    pipelines and `load_flexip`'s subclasses do); a one-line FlexIPError naming the supported ones otherwise."""
    for cls in type(pipe).__mro__:
        if cls.__name__ in SUPPORTED and getattr(diffusers, cls.__name__, None) is cls:
            return SUPPORTED[cls.__name__]
    raise FlexIPError(
        f"{type(pipe).__name__} is not a pipeline FlexIP supports; it supports {', '.join(SUPPORTED)}"
    )
