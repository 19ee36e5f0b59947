"""Stable Diffusion 1.5 (and bases of its shape): one CLIP text encoder, no pooled text, no added conditions.
AnimateDiff's UNet made from such a base (its motion modules added) is of the family too: an SD1.5 adapter
joins its spatial layers."""

from __future__ import annotations

from typing import ClassVar

import torch
from diffusers import StableDiffusionPipeline
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from ..denoisers.registry import MOTION_UNET, UNET
from .family import Family, TextConditioning


class StableDiffusion15(Family):
    name = "sd15"
    denoiser = UNET
    title = "Stable Diffusion 1.5"
    text_to_image = StableDiffusionPipeline
    text_parts: ClassVar[dict[str, type]] = {"tokenizer": CLIPTokenizer, "text_encoder": CLIPTextModel}
    pipeline_settings = ("requires_safety_checker",)
    prompt_names = ("prompt", "negative_prompt")
    vae_overflows_in_fp16 = False

    def matches(self, model: nn.Module) -> bool:
        unet = self.denoiser.matches(model) or MOTION_UNET.matches(model)
        return unet and getattr(model.config, "addition_embed_type", None) is None

    def encode_prompt(self, pipe, arguments: dict, images_per_prompt: int, guided: bool) -> dict:
        lora_scale = (arguments.get("cross_attention_kwargs") or {}).get("scale")
        prompt_embeds, negative_prompt_embeds = pipe.encode_prompt(
            arguments.get("prompt"), pipe._execution_device, images_per_prompt, guided,
            arguments.get("negative_prompt"), prompt_embeds=arguments.get("prompt_embeds"),
            negative_prompt_embeds=arguments.get("negative_prompt_embeds"), lora_scale=lora_scale,
            clip_skip=arguments.get("clip_skip"),
        )  # fmt: skip
        return {"prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_prompt_embeds}

    def encode_captions(
        self, text: dict[str, object], captions: list[str], sizes: torch.Tensor, device: torch.device
    ) -> TextConditioning:
        return TextConditioning(_last_hidden_state(text["tokenizer"], text["text_encoder"], captions, device))

    def assemble(self, vae, unet, scheduler, text, cls=None):
        return (cls or StableDiffusionPipeline)(
            vae=vae, unet=unet, scheduler=scheduler, **text, safety_checker=None, feature_extractor=None,
            image_encoder=None, requires_safety_checker=False,
        )  # fmt: skip


def tokens(tokenizer, text_encoder: nn.Module, captions: list[str], device: torch.device) -> torch.Tensor:
    """Token ids padded to the text encoder's own context length (a tokenizer saved without model_max_length
    reports about 1e30), as the pipelines pad them."""
    length = text_encoder.config.max_position_embeddings
    ids = tokenizer(captions, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return ids.input_ids.to(device)


def _last_hidden_state(tokenizer, text_encoder: nn.Module, captions: list[str], device: torch.device) -> torch.Tensor:
    return text_encoder(tokens(tokenizer, text_encoder, captions, device))[0]
