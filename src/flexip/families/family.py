"""What a base-model family is to FlexIP: the few things Stable Diffusion 1.5 and SDXL do differently.

Everything else (the adapters, the gated cross-attention, the hook, the dial, the training loop) is the same
code for every family, sized from the UNet it meets. A family says how its text reaches the UNet (one CLIP
encoder, or two with pooled embeddings and SDXL's size conditioning through `added_cond_kwargs`), which
diffusers pipeline is its text-to-image pipeline, and how to tell its UNet apart.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..denoisers.registry import Denoiser


@dataclass
class TextConditioning:
    """What a family's text path gives the UNet for a batch of captions (training)."""

    embeds: torch.Tensor  # (batch, tokens, cross_attention_dim): `encoder_hidden_states`
    added: dict[str, torch.Tensor] | None = None  # `added_cond_kwargs` (SDXL: pooled text and time ids)


class Family(ABC):
    """One base-model family: an abstract interface; `sd15.py` and `sdxl.py` fill in the class attributes and
    the four methods."""

    name: ClassVar[str]  # recorded in an adapter's config as `base_family`
    denoiser: ClassVar[Denoiser]  # the kind of denoiser its pipelines run (flexip.denoisers)
    title: ClassVar[str]  # for messages: "Stable Diffusion 1.5", "SDXL"
    text_to_image: ClassVar[type]  # the diffusers text-to-image pipeline class
    text_parts: ClassVar[dict[str, type]]  # pipeline component name -> class: the text path's tokenizers, encoders
    pipeline_settings: ClassVar[tuple[str, ...]]  # config entries of `text_to_image` that a rebuilt pipeline keeps
    prompt_names: ClassVar[tuple[str, ...]]  # the call arguments carrying prompt text, emptied once it is encoded
    # Whether the family's own VAE overflows in float16 when its config says `force_upcast` (its pipelines upcast
    # it then): training encodes with it in float32 under fp16.
    vae_overflows_in_fp16: ClassVar[bool]

    @abstractmethod
    def matches(self, unet: nn.Module) -> bool:
        """Whether `unet` (a diffusers UNet2DConditionModel) is this family's."""

    @abstractmethod
    def encode_prompt(self, pipe, arguments: dict, images_per_prompt: int, guided: bool) -> dict:
        """The call's embedding arguments, encoded by the pipeline's own `encode_prompt` from `arguments`.

        `prompt_embeds` (one row per prompt and image) comes first; every value is a tensor with one row per
        sample, or None. Guidance's unconditional half is built exactly as the stock pipeline builds it.
        """

    @abstractmethod
    def encode_captions(
        self, text: dict[str, object], captions: list[str], sizes: torch.Tensor, device: torch.device
    ) -> TextConditioning:
        """Training's text path for a batch: `text` holds the loaded `text_parts`; `sizes` is (batch, 6) of
        (original height, original width, crop top, crop left, target height, target width) per sample."""

    @abstractmethod
    def assemble(self, vae: nn.Module, unet: nn.Module, scheduler, text: dict[str, object], cls: type | None = None):
        """A text-to-image pipeline (or `cls`, a subclass of it) from loaded parts, with no safety checker."""
