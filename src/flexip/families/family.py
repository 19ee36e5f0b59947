"""What a base-model family is to FlexIP: the few things Stable Diffusion 1.5, SDXL and FLUX.1 do differently.

Everything else (the adapters, the gated attention, the hook, the dial, the training loop) is the same code for
every family, sized from the denoiser it meets. A family says how its text reaches the denoiser (one CLIP
encoder; two with pooled embeddings and SDXL's size conditioning through `added_cond_kwargs`; FLUX.1's T5
tokens and CLIP's pooled embedding), which diffusers pipeline is its text-to-image pipeline, and how to tell its
denoiser apart.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from ..denoisers.registry import Denoiser


@dataclass
class TextConditioning:
    """What a family's text path gives the UNet for a batch of captions (training)."""

    embeds: torch.Tensor  # (batch, tokens, cross_attention_dim): `encoder_hidden_states`
    # The denoiser's other text inputs: SDXL's `added_cond_kwargs` (pooled text and time ids), FLUX.1's
    # `pooled_projections` (`{"pooled_projections": ...}`)
    added: dict[str, torch.Tensor] | None = None


class Family(ABC):
    """One base-model family: an abstract interface; `sd15.py`, `sdxl.py` and `flux.py` fill in the class
    attributes and the four methods."""

    name: ClassVar[str]  # recorded in an adapter's config as `base_family`
    denoiser: ClassVar[Denoiser]  # the kind of denoiser its pipelines run (flexip.denoisers)
    title: ClassVar[str]  # for messages: "Stable Diffusion 1.5", "SDXL", "FLUX.1"
    text_to_image: ClassVar[type]  # the diffusers text-to-image pipeline class
    text_parts: ClassVar[dict[str, type]]  # pipeline component name -> class: the text path's tokenizers, encoders
    pipeline_settings: ClassVar[tuple[str, ...]]  # config entries of `text_to_image` that a rebuilt pipeline keeps
    prompt_names: ClassVar[tuple[str, ...]]  # the call arguments carrying prompt text, emptied once it is encoded
    # Whether the family's own VAE overflows in float16 when its config says `force_upcast` (its pipelines upcast
    # it then): training encodes with it in float32 under fp16.
    vae_overflows_in_fp16: ClassVar[bool]
    # How many of the text tokens (the first ones) the Personalization branch reads; None: all of them.
    personalization_tokens: ClassVar[int | None] = None

    @abstractmethod
    def matches(self, model: nn.Module) -> bool:
        """Whether `model` (a denoiser: a UNet2DConditionModel, a FluxTransformer2DModel) is this family's."""

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

    def from_single_file(self, path: Path, base_config: str | os.PathLike | None, **loading):
        """The text-to-image pipeline of an original-layout checkpoint file (a whole pipeline's, as Stable
        Diffusion fine-tunes ship), converted by diffusers' `from_single_file`, the components' configs from
        `base_config` (a diffusers directory or hub id of the family) or the hub repository diffusers recognises
        in the file."""
        config = {} if base_config is None else {"config": os.fspath(base_config)}
        return self.text_to_image.from_single_file(os.fspath(path), **config, **loading)

    @abstractmethod
    def assemble(self, vae: nn.Module, unet: nn.Module, scheduler, text: dict[str, object], cls: type | None = None):
        """A text-to-image pipeline (or `cls`, a subclass of it) from loaded parts, with no safety checker;
        `unet` is the family's denoiser (FLUX.1's transformer)."""
