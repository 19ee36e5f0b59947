"""Each cross-attention layer's key/value projections of the two branches (docs/method.md §2.3): the
adapter's weights inside the denoiser's layers."""

from __future__ import annotations

import torch
from torch import nn


class BranchProjections(nn.Module):
    """The key/value projections of both branches for one cross-attention layer."""

    def __init__(self, in_dim: int, inner_dim: int):
        super().__init__()
        self.to_k_preservation = nn.Linear(in_dim, inner_dim, bias=False)
        self.to_v_preservation = nn.Linear(in_dim, inner_dim, bias=False)
        self.to_k_personalization = nn.Linear(in_dim, inner_dim, bias=False)
        self.to_v_personalization = nn.Linear(in_dim, inner_dim, bias=False)

    @torch.no_grad()
    def start_from(self, text_keys: torch.Tensor) -> None:
        """The fresh adapter's starting point: keys from the layer's text keys (`text_keys`, the weight that maps
        text tokens to them: `Denoiser.text_keys`), values zero.

        Zero values make both branches add exactly nothing, so a fresh adapter is the base model at every g
        and s, as ControlNet's zero-initialised layers are; the text keys give each branch the text's
        attention pattern to start from. The value gradient is not zero (it is the attention-weighted output
        gradient), so the first step moves the values and the keys and tokens learn from then on.
        """
        for to_k in (self.to_k_preservation, self.to_k_personalization):
            to_k.weight.copy_(text_keys)
        for to_v in (self.to_v_preservation, self.to_v_personalization):
            to_v.weight.zero_()
