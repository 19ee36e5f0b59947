"""What each diffusers pipeline FlexIP supports does in a call, declared rather than guessed from signatures
or tensor shapes: whether it starts from an image (or a video), the size it makes when given none, how it
guides, and whether it makes clips.

The Stable Diffusion pipelines guide as diffusers' `do_classifier_free_guidance` says: when `guidance_scale` > 1
and the UNet has no guidance embedding (`time_cond_proj_dim`), each step is one UNet call on a batch of two
halves, the unconditional half first. FLUX.1's pipelines take `guidance_scale` into the transformer's guidance
embedding (no unconditional pass); with `true_cfg_scale` > 1 and a negative prompt (diffusers' `do_true_cfg`),
each step makes a second transformer call, after the conditional one, on the negative prompt alone. AnimateDiff's
pipelines make clips: their UNet folds each sample's frames into its batch (`denoisers/motion_unet.py`), they
count outputs per prompt as `num_videos_per_prompt`, and the video-to-video one starts from a `video`. A
pipeline class not declared here is refused by `load_flexip`, naming these.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import diffusers

from ..denoisers.registry import FLUX, MOTION_UNET, UNET, Denoiser
from ..errors import FlexIPError


def _unet_side(pipe) -> int:
    return pipe.unet.config.sample_size * pipe.vae_scale_factor  # as diffusers' Stable Diffusion pipelines do


def _flux_side(pipe) -> int:
    return pipe.default_sample_size * pipe.vae_scale_factor  # FLUX.1's pipelines: 128 latents, 1024 px


@dataclass(frozen=True)
class PipelineCall:
    """One pipeline class's call, as FlexIP needs to know it."""

    denoiser: Denoiser  # the kind of denoiser it runs
    starts_from_image: bool  # VAE-encodes `image` (and `mask_image`) with the call's generators: img2img, inpainting
    # The side of the square image it makes when given no height and width (None: sized by its input image).
    default_side: Callable[[object], int] | None
    # Guidance's unconditional prediction is a second denoiser call per step, after the conditional one, on the
    # negative prompt (FLUX.1's true CFG), rather than the first half of one call's batch.
    negative_call: bool = False
    # Reference masks divide the image stream among subjects; a pipeline whose image stream also holds a context
    # image's tokens (FLUX.1 Kontext) has no grid of the generated image alone to divide.
    takes_masks: bool = True
    # The arguments it VAE-encodes with the call's generators when it starts from an image (or a video).
    inputs: tuple[str, ...] = ("image", "mask_image")
    per_prompt: str = "num_images_per_prompt"  # the argument counting its outputs per prompt
    makes_clips: bool = False  # its outputs are clips of frames (a dial may run over the frames)

    def model(self, pipe):
        """The pipeline's denoiser model (its UNet or transformer)."""
        return getattr(pipe, self.denoiser.pipeline_attribute)

    def guided(self, pipe, guidance_scale: float, arguments: dict) -> bool:
        """Whether this call makes an unconditional prediction each step: guidance's half of the batch, or
        FLUX.1's negative call (`arguments`: the call's arguments by name, as given)."""
        if self.negative_call:
            negative = arguments.get("negative_prompt") is not None or (
                arguments.get("negative_prompt_embeds") is not None
                and arguments.get("negative_pooled_prompt_embeds") is not None
            )
            return arguments.get("true_cfg_scale", 1.0) > 1 and negative
        return guidance_scale > 1 and self.model(pipe).config.time_cond_proj_dim is None


TEXT_TO_IMAGE = PipelineCall(UNET, starts_from_image=False, default_side=_unet_side)
FROM_IMAGE = PipelineCall(UNET, starts_from_image=True, default_side=None)
CONTROLNET = PipelineCall(UNET, starts_from_image=False, default_side=None)  # sized by its control image
# FLUX.1's pipelines make 1024 px unless told, from an image too (they resize it); Kontext keeps its context
# image's aspect. Kontext VAE-encodes its context image without drawing noise (the latent mean).
FLUX_TEXT_TO_IMAGE = PipelineCall(FLUX, starts_from_image=False, default_side=_flux_side, negative_call=True)
FLUX_FROM_IMAGE = PipelineCall(FLUX, starts_from_image=True, default_side=_flux_side, negative_call=True)
FLUX_KONTEXT = PipelineCall(FLUX, starts_from_image=False, default_side=None, negative_call=True, takes_masks=False)
CLIPS = {"per_prompt": "num_videos_per_prompt", "makes_clips": True}
TEXT_TO_CLIP = PipelineCall(MOTION_UNET, starts_from_image=False, default_side=_unet_side, **CLIPS)
CLIP_FROM_CLIP = PipelineCall(MOTION_UNET, starts_from_image=True, default_side=_unet_side, inputs=("video",), **CLIPS)

SUPPORTED: dict[str, PipelineCall] = {
    "StableDiffusionPipeline": TEXT_TO_IMAGE,
    "StableDiffusionImg2ImgPipeline": FROM_IMAGE,
    "StableDiffusionInpaintPipeline": FROM_IMAGE,
    "StableDiffusionControlNetPipeline": CONTROLNET,
    "StableDiffusionXLPipeline": TEXT_TO_IMAGE,
    "StableDiffusionXLImg2ImgPipeline": FROM_IMAGE,
    "StableDiffusionXLInpaintPipeline": FROM_IMAGE,
    "StableDiffusionXLControlNetPipeline": CONTROLNET,
    "FluxPipeline": FLUX_TEXT_TO_IMAGE,
    "FluxImg2ImgPipeline": FLUX_FROM_IMAGE,
    "FluxInpaintPipeline": FLUX_FROM_IMAGE,
    "FluxControlNetPipeline": FLUX_TEXT_TO_IMAGE,  # its control image is resized to the size it makes
    "FluxKontextPipeline": FLUX_KONTEXT,
    "AnimateDiffPipeline": TEXT_TO_CLIP,
    "AnimateDiffVideoToVideoPipeline": CLIP_FROM_CLIP,
    "AnimateDiffSDXLPipeline": TEXT_TO_CLIP,
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
