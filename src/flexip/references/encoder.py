"""The two frozen image encoders of a reference (docs/method.md §2): CLIP's image embedding and DINOv2's block
features."""

from __future__ import annotations

import logging
import os

import torch
from PIL import Image
from torch import nn
from transformers import AutoImageProcessor, CLIPImageProcessor, CLIPVisionModelWithProjection, Dinov2Model

from ..errors import FlexIPError
from ..model_paths import load_pretrained, load_weights
from .encoded import EncodedReference

logger = logging.getLogger(__name__)


def _load_processor(reference: str | os.PathLike, default):
    """The image processor saved with a model, or `default()` where the model ships none.

    IP-Adapter's CLIP-H (`h94/IP-Adapter/models/image_encoder`) has no preprocessor config; the standard CLIP
    preprocessing is what it was trained with, and what diffusers uses for it.
    """
    try:
        return load_pretrained(AutoImageProcessor, reference)
    except FlexIPError:
        if default is None:
            raise
        logger.info(f"{reference} has no image processor config; using {default.__name__} defaults")
        return default()


class ReferenceEncoder(nn.Module):
    """The two frozen image encoders, each with its own preprocessing."""

    def __init__(self, clip_model, clip_processor, dino_model, dino_processor, dino_layer: int = -2):
        super().__init__()
        self.clip_model = clip_model
        self.dino_model = dino_model
        self.clip_processor = clip_processor
        self.dino_processor = dino_processor
        self.dino_layer = dino_layer

    @classmethod
    def from_pretrained(
        cls,
        clip_model: str | os.PathLike,
        dino_model: str | os.PathLike,
        dino_layer: int = -2,
        torch_dtype: torch.dtype | None = None,
    ) -> ReferenceEncoder:
        """Load both encoders and their image processors from local directories or hub ids (`owner/repo/subfolder`)."""
        clip = load_weights(CLIPVisionModelWithProjection, clip_model, dtype=torch_dtype)
        dino = load_weights(Dinov2Model, dino_model, dtype=torch_dtype)
        states = dino.config.num_hidden_layers + 1  # the embeddings, then one per block
        if (
            isinstance(dino_layer, bool)
            or not isinstance(dino_layer, int)
            or not -states <= dino_layer < states
        ):
            raise FlexIPError(
                f"dino_layer={dino_layer!r} does not exist in {dino_model}, which has {states} hidden states: "
                f"give an integer from {-states} to {states - 1} (-2 is the penultimate block)"
            )
        clip_processor = _load_processor(clip_model, default=CLIPImageProcessor)
        dino_processor = _load_processor(dino_model, default=None)
        return cls(clip.eval().requires_grad_(False), clip_processor, dino.eval().requires_grad_(False),
                   dino_processor, dino_layer)  # fmt: skip

    @property
    def clip_embed_dim(self) -> int:
        return self.clip_model.config.projection_dim

    @property
    def dino_hidden_dim(self) -> int:
        return self.dino_model.config.hidden_size

    @torch.no_grad()
    def forward(self, images: list[Image.Image]) -> EncodedReference:
        """RGB PIL images -> EncodedReference on the encoders' device and dtype."""
        clip_pixels = self.clip_processor(images=images, return_tensors="pt")["pixel_values"]
        dino_pixels = self.dino_processor(images=images, return_tensors="pt")["pixel_values"]
        clip_param = next(self.clip_model.parameters())
        dino_param = next(self.dino_model.parameters())
        clip_embeds = self.clip_model(
            pixel_values=clip_pixels.to(clip_param.device, clip_param.dtype)
        ).image_embeds
        hidden_states = self.dino_model(
            pixel_values=dino_pixels.to(dino_param.device, dino_param.dtype), output_hidden_states=True
        ).hidden_states
        return EncodedReference(clip_embeds, hidden_states[self.dino_layer].to(clip_embeds.dtype))
