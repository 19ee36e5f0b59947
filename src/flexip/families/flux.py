"""FLUX.1 (-dev, -schnell and their fine-tunes): the prompt's T5 tokens as the transformer's text stream and
CLIP's pooled embedding beside the timestep, both encoded by `FluxPipeline.encode_prompt`. FLUX.1-dev is
guidance-distilled (a `guidance` embedding, one transformer call a step); true classifier-free guidance
(`true_cfg_scale` > 1 with a negative prompt) adds a second call a step on the negative prompt."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import torch
from diffusers import FluxPipeline
from safetensors import safe_open
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

from ..denoisers.registry import FLUX
from ..model_paths import check_hub_model
from .family import Family, TextConditioning
from .sd15 import tokens

# FluxPipeline's default (and largest) T5 length.
MAX_SEQUENCE_LENGTH = 512


class Flux1(Family):
    name = "flux"
    denoiser = FLUX
    title = "FLUX.1"
    text_to_image = FluxPipeline
    text_parts: ClassVar[dict[str, type]] = {
        "tokenizer": CLIPTokenizer, "text_encoder": CLIPTextModel,
        "tokenizer_2": T5TokenizerFast, "text_encoder_2": T5EncoderModel,
    }  # fmt: skip
    pipeline_settings = ()
    prompt_names = ("prompt", "prompt_2", "negative_prompt", "negative_prompt_2")
    vae_overflows_in_fp16 = False
    # The Personalization branch reads the first 77 T5 tokens: the span of a CLIP-length prompt, what SD's
    # branch reads. The rest of the 512 are, for most prompts, T5's encoding of padding, which would cost
    # 6.6x the branch's attention and key/value memory and dilute the prompt's tokens in its softmax; a longer
    # prompt's tail still reaches the image through FLUX's own text stream (docs/decisions/denoisers.md).
    personalization_tokens = 77

    def matches(self, model: nn.Module) -> bool:
        return self.denoiser.matches(model)

    def encode_prompt(self, pipe, arguments: dict, images_per_prompt: int, guided: bool) -> dict:
        lora_scale = (arguments.get("joint_attention_kwargs") or {}).get("scale")

        def encode(prefix: str) -> dict:
            embeds, pooled, _ = pipe.encode_prompt(
                prompt=arguments.get(f"{prefix}prompt"), prompt_2=arguments.get(f"{prefix}prompt_2"),
                prompt_embeds=arguments.get(f"{prefix}prompt_embeds"),
                pooled_prompt_embeds=arguments.get(f"{prefix}pooled_prompt_embeds"), device=pipe._execution_device,
                num_images_per_prompt=images_per_prompt,
                max_sequence_length=arguments.get("max_sequence_length", MAX_SEQUENCE_LENGTH), lora_scale=lora_scale,
            )  # fmt: skip
            return {f"{prefix}prompt_embeds": embeds, f"{prefix}pooled_prompt_embeds": pooled}

        # Guided (true CFG), the negative prompt is encoded as the stock call encodes it, for its own call.
        return {**encode(""), **(encode("negative_") if guided else {})}

    def encode_captions(
        self, text: dict[str, object], captions: list[str], sizes: torch.Tensor, device: torch.device
    ) -> TextConditioning:
        # As FluxPipeline encodes a prompt: T5's last hidden states at the default length, CLIP's pooled output.
        ids = text["tokenizer_2"](
            captions, padding="max_length", max_length=MAX_SEQUENCE_LENGTH, truncation=True, return_tensors="pt"
        ).input_ids
        embeds = text["text_encoder_2"](ids.to(device))[0]
        pooled = text["text_encoder"](tokens(text["tokenizer"], text["text_encoder"], captions, device)).pooler_output
        return TextConditioning(embeds, {"pooled_projections": pooled})

    def from_single_file(self, path: Path, base_config: str | os.PathLike | None, **loading):
        """A FLUX.1 checkpoint file holds the transformer alone (as Black Forest Labs and fine-tunes ship it): the
        transformer loads through diffusers' `from_single_file`, every other part from `base_config`, or from the
        FLUX.1 repository the file's keys say (dev with a guidance embedding, schnell without, as diffusers
        tells them apart)."""
        if base_config is None:
            config = _repository_of(path)
            check_hub_model(config, "the FLUX.1 repository of the single-file base's other parts", "model_index.json")
        else:
            config = os.fspath(base_config)  # checked by `load_base`
        transformer = self.denoiser.model_class.from_single_file(
            os.fspath(path), config=config, subfolder="transformer", **loading
        )
        return self.text_to_image.from_pretrained(config, transformer=transformer, use_safetensors=True, **loading)

    def assemble(self, vae, unet, scheduler, text, cls=None):
        return (cls or FluxPipeline)(vae=vae, transformer=unet, scheduler=scheduler, **text)


def _repository_of(path: Path) -> str:
    """The FLUX.1 repository a transformer checkpoint's keys say: FLUX.1-dev has a guidance embedding."""
    with safe_open(path, framework="pt") as file:
        keys = list(file.keys())
    guided = any(key.endswith("guidance_in.in_layer.weight") for key in keys)
    return "black-forest-labs/FLUX.1-dev" if guided else "black-forest-labs/FLUX.1-schnell"
