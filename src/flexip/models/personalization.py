"""Personalization adapter (docs/method.md §2.2): text tokens S grounded in the CLIP [CLS] embedding."""

from __future__ import annotations

import torch
from torch import nn

from .resampler import PerceiverLayer


class PersonalizationAdapter(nn.Module):
    """Each text token re-reads the CLIP [CLS] tokens (⊕ the text itself); one output token per text token.

    The residual branches start at zero, so before training S equals the prompt's own text embedding, and
    training adds the subject to it. (The branch values start at zero too, so a fresh adapter adds nothing:
    `BranchProjections.start_from`.)
    """

    def __init__(
        self,
        clip_embed_dim: int,
        text_dim: int,
        num_clip_tokens: int = 4,
        depth: int = 2,
        heads: int = 12,
        head_dim: int = 64,
        ff_mult: int = 4,
    ):
        super().__init__()
        self.num_clip_tokens = num_clip_tokens
        self.text_dim = text_dim
        self.clip_proj = nn.Linear(clip_embed_dim, num_clip_tokens * text_dim)
        self.layers = nn.ModuleList(PerceiverLayer(text_dim, heads, head_dim, ff_mult) for _ in range(depth))
        for layer in self.layers:
            nn.init.zeros_(layer.attention.to_out.weight)
            nn.init.zeros_(layer.feed_forward.fc_out.weight)

    def forward(self, clip_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """(batch, clip_embed_dim), (batch, tokens, text_dim) -> S: (batch, tokens, text_dim)."""
        batch = clip_embeds.shape[0]
        clip_tokens = self.clip_proj(clip_embeds).view(batch, self.num_clip_tokens, self.text_dim)
        tokens = text_embeds
        for layer in self.layers:
            tokens = layer(tokens, clip_tokens)
        return tokens
