"""The encoder features of a batch of reference images, and their file (docs/formats.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save

from ..atomic import atomic_write_bytes
from ..errors import FlexIPError


@dataclass
class EncodedReference:
    """Encoder features of a batch of reference images; keep it to skip re-encoding the same subject."""

    clip_embeds: torch.Tensor  # (batch, clip_embed_dim): CLIP image embedding (the projected [CLS])
    dino_tokens: torch.Tensor  # (batch, tokens, dino_hidden_dim): DINOv2 hidden states of one block

    def __len__(self) -> int:
        return self.clip_embeds.shape[0]

    def to(self, device=None, dtype=None) -> EncodedReference:
        return EncodedReference(self.clip_embeds.to(device, dtype), self.dino_tokens.to(device, dtype))

    def save(self, path: str | os.PathLike) -> None:
        """One safetensors file with tensors `clip_embeds` and `dino_tokens` (docs/formats.md)."""
        tensors = {
            "clip_embeds": self.clip_embeds.contiguous().cpu(),
            "dino_tokens": self.dino_tokens.contiguous().cpu(),
        }
        atomic_write_bytes(path, save(tensors, metadata={"format": "flexip-encoded-reference"}))

    @classmethod
    def load(cls, path: str | os.PathLike) -> EncodedReference:
        try:
            tensors = load_file(path)
        except Exception as e:  # safetensors raises its own error types
            raise FlexIPError(f"{path} is not an encoded reference (safetensors) file: {e}") from e
        missing = {"clip_embeds", "dino_tokens"} - set(tensors)
        if missing:
            raise FlexIPError(
                f"{path}: an encoded reference needs tensors clip_embeds and dino_tokens; missing {sorted(missing)}"
            )
        clip_embeds, dino_tokens = tensors["clip_embeds"], tensors["dino_tokens"]
        if clip_embeds.ndim != 2 or dino_tokens.ndim != 3 or clip_embeds.shape[0] != dino_tokens.shape[0]:
            raise FlexIPError(
                f"{path}: expected clip_embeds (batch, dim) and dino_tokens (batch, tokens, dim), got "
                f"{tuple(clip_embeds.shape)} and {tuple(dino_tokens.shape)}"
            )
        for name, tensor in (("clip_embeds", clip_embeds), ("dino_tokens", dino_tokens)):
            if not tensor.is_floating_point():
                dtype = str(tensor.dtype).removeprefix("torch.")
                raise FlexIPError(
                    f"{path}: tensor {name} holds {dtype} values, not features; encode the reference again"
                )
            if not tensor.isfinite().all():
                raise FlexIPError(
                    f"{path}: tensor {name} holds values that are not finite; encode the reference again"
                )
        return cls(clip_embeds, dino_tokens)
