"""Perceiver resampler: a fixed set of query tokens re-reads a variable set of feature tokens.

The Preservation adapter (docs/method.md §2.1) uses it over DINOv2 block features. Each layer lets the queries
attend to the features *and* to the queries themselves (keys/values = features ⊕ queries), as in the Perceiver
(Jaegle et al., 2021) and IP-Adapter Plus.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FeedForward(nn.Module):
    """Pre-norm two-layer MLP used after every attention block."""

    def __init__(self, width: int, mult: int = 4):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc_in = nn.Linear(width, width * mult, bias=False)
        self.fc_out = nn.Linear(width * mult, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.gelu(self.fc_in(self.norm(x))))


class CrossAttention(nn.Module):
    """Multi-head attention of `queries` over `context`, both already at `width`."""

    def __init__(self, width: int, heads: int, head_dim: int):
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        inner = heads * head_dim
        self.to_q = nn.Linear(width, inner, bias=False)
        self.to_k = nn.Linear(width, inner, bias=False)
        self.to_v = nn.Linear(width, inner, bias=False)
        self.to_out = nn.Linear(inner, width, bias=False)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch = queries.shape[0]
        # (batch, tokens, heads * head_dim) -> (batch, heads, tokens, head_dim)
        query = self.to_q(queries).view(batch, -1, self.heads, self.head_dim).transpose(1, 2)
        key = self.to_k(context).view(batch, -1, self.heads, self.head_dim).transpose(1, 2)
        value = self.to_v(context).view(batch, -1, self.heads, self.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(query, key, value)
        out = out.transpose(1, 2).reshape(batch, -1, self.heads * self.head_dim)
        return self.to_out(out)


class PerceiverLayer(nn.Module):
    """Queries attend to (features ⊕ queries), then a feed-forward; both with residuals."""

    def __init__(self, width: int, heads: int, head_dim: int, ff_mult: int):
        super().__init__()
        self.norm_features = nn.LayerNorm(width)
        self.norm_queries = nn.LayerNorm(width)
        self.attention = CrossAttention(width, heads, head_dim)
        self.feed_forward = FeedForward(width, ff_mult)

    def forward(self, queries: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        normed_queries = self.norm_queries(queries)
        context = torch.cat([self.norm_features(features), normed_queries], dim=1)
        queries = queries + self.attention(normed_queries, context)
        return queries + self.feed_forward(queries)


class PerceiverResampler(nn.Module):
    """Re-samples `features` (batch, n, feature_dim) into as many tokens as `queries` has, at `out_dim`."""

    def __init__(
        self,
        feature_dim: int,
        width: int,
        out_dim: int,
        depth: int = 4,
        heads: int = 12,
        head_dim: int = 64,
        ff_mult: int = 4,
    ):
        super().__init__()
        self.proj_in = nn.Linear(feature_dim, width)
        self.layers = nn.ModuleList(PerceiverLayer(width, heads, head_dim, ff_mult) for _ in range(depth))
        self.proj_out = nn.Linear(width, out_dim)
        self.norm_out = nn.LayerNorm(out_dim)

    def forward(self, queries: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        features = self.proj_in(features)  # (batch, n, width)
        for layer in self.layers:
            queries = layer(queries, features)
        return self.norm_out(self.proj_out(queries))  # (batch, n_queries, out_dim)
