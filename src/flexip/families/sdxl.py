"""SDXL: two CLIP text encoders whose penultimate hidden states are concatenated (2048 wide on the real base),
the second one's pooled projection, and the size conditioning (original size, crop, target size) of every
sample, both through the UNet's `added_cond_kwargs`."""

from __future__ import annotations

from typing import ClassVar

import torch
from diffusers import StableDiffusionXLPipeline
from torch import nn
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from ..denoisers.registry import MOTION_UNET, UNET
from .family import Family, TextConditioning
from .sd15 import tokens


class StableDiffusionXL(Family):
    name = "sdxl"
    denoiser = UNET
    title = "SDXL"
    text_to_image = StableDiffusionXLPipeline
    text_parts: ClassVar[dict[str, type]] = {
        "tokenizer": CLIPTokenizer, "text_encoder": CLIPTextModel,
        "tokenizer_2": CLIPTokenizer, "text_encoder_2": CLIPTextModelWithProjection,
    }  # fmt: skip
    pipeline_settings = ("force_zeros_for_empty_prompt",)
    prompt_names = ("prompt", "prompt_2", "negative_prompt", "negative_prompt_2")
    vae_overflows_in_fp16 = True

    def matches(self, model: nn.Module) -> bool:
        unet = self.denoiser.matches(model) or MOTION_UNET.matches(model)  # AnimateDiff's SDXL UNet too
        return unet and getattr(model.config, "addition_embed_type", None) == "text_time"

    def encode_prompt(self, pipe, arguments: dict, images_per_prompt: int, guided: bool) -> dict:
        lora_scale = (arguments.get("cross_attention_kwargs") or {}).get("scale")
        names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
        # The count per prompt by position: AnimateDiff's SDXL pipeline names it num_videos_per_prompt.
        encoded = pipe.encode_prompt(
            arguments.get("prompt"), arguments.get("prompt_2"), pipe._execution_device, images_per_prompt,
            do_classifier_free_guidance=guided,
            negative_prompt=arguments.get("negative_prompt"), negative_prompt_2=arguments.get("negative_prompt_2"),
            **{name: arguments.get(name) for name in names}, lora_scale=lora_scale,
            clip_skip=arguments.get("clip_skip"),
        )  # fmt: skip
        return dict(zip(names, encoded))

    def encode_captions(
        self, text: dict[str, object], captions: list[str], sizes: torch.Tensor, device: torch.device
    ) -> TextConditioning:
        # As the SDXL pipeline encodes a prompt: each encoder's penultimate hidden states, concatenated, and
        # the second encoder's projected [EOS] as the pooled text.
        hidden = []
        for tokenizer, encoder in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")):
            output = text[encoder](tokens(text[tokenizer], text[encoder], captions, device), output_hidden_states=True)
            hidden.append(output.hidden_states[-2])
        pooled = output.text_embeds
        time_ids = sizes.to(device, pooled.dtype)
        return TextConditioning(torch.cat(hidden, dim=-1), {"text_embeds": pooled, "time_ids": time_ids})

    def assemble(self, vae, unet, scheduler, text, cls=None):
        return (cls or StableDiffusionXLPipeline)(
            vae=vae, unet=unet, scheduler=scheduler, **text, add_watermarker=False, force_zeros_for_empty_prompt=True
        )
