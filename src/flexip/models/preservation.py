"""Preservation adapter (docs/method.md §2.1): identity tokens P from DINOv2 block features and the CLIP
embedding."""

from __future__ import annotations

import torch
from torch import nn

from .resampler import PerceiverResampler


class PreservationAdapter(nn.Module):
    """Learnable queries ⊕ tokens projected from the CLIP image embedding, re-sampled over DINOv2 features.

    The two query groups stay distinct tokens all the way through: the learned queries pick up fine detail,
    the CLIP tokens carry the global subject (the paper's attention maps show this split).
    """

    def __init__(
        self,
        clip_embed_dim: int,
        dino_hidden_dim: int,
        out_dim: int,
        num_queries: int = 16,
        num_clip_tokens: int = 4,
        width: int = 768,
        depth: int = 4,
        heads: int = 12,
        head_dim: int = 64,
        ff_mult: int = 4,
    ):
        super().__init__()
        self.num_clip_tokens = num_clip_tokens
        self.width = width
        self.queries = nn.Parameter(torch.randn(1, num_queries, width) / width**0.5)
        self.clip_proj = nn.Linear(clip_embed_dim, num_clip_tokens * width)
        self.clip_norm = nn.LayerNorm(width)
        self.resampler = PerceiverResampler(dino_hidden_dim, width, out_dim, depth, heads, head_dim, ff_mult)

    def forward(self, clip_embeds: torch.Tensor, dino_tokens: torch.Tensor) -> torch.Tensor:
        """(batch, clip_embed_dim), (batch, n, dino_hidden_dim) -> P: (batch, num_queries + num_clip_tokens, out_dim)."""
        batch = clip_embeds.shape[0]
        clip_tokens = self.clip_proj(clip_embeds).view(batch, self.num_clip_tokens, self.width)
        queries = torch.cat([self.queries.expand(batch, -1, -1), self.clip_norm(clip_tokens)], dim=1)
        return self.resampler(queries, dino_tokens)
