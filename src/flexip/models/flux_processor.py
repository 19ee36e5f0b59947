"""Gated decoupled attention on FLUX.1 (docs/method.md §2.3): the processor that replaces the attention
processor of each double-stream block.

    image stream += s * (g * Attn(Q, K_P, V_P) + (1 - g) * Attn(Q, K_S, V_S))

Q is the image stream's query after `norm_q`, before the rotary embedding, and the branches' sum is added to
the image stream after the block's feed-forward, ungated: where and how diffusers' own FLUX IP-Adapter
(`FluxIPAdapterAttnProcessor`) attends and adds. The condition arrives as the `ip_hidden_states` keyword,
the one `joint_attention_kwargs` entry diffusers hands quietly to the processors that take it
(`flexip.denoisers.flux`); the single-stream blocks' processors ignore it. See docs/decisions/denoisers.md.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import _get_qkv_projections

from .branches import add_branches
from .condition import FlexIPCondition
from .projections import BranchProjections


class FlexIPFluxAttnProcessor:
    """Replaces one double-stream block's processor; the text path is diffusers' `FluxAttnProcessor`, step for
    step, so without a condition (or at s = 0) the block is the base model's bit for bit.

    With a condition the processor returns a third output, the branches (B, N, h·d), which diffusers' FLUX
    block adds to the image stream (the output diffusers' FLUX IP-Adapter returns). The branch maths are the
    UNet processor's (`branches.py`): cached keys/values, two ops per branch, only the active rows, several
    references with weights and masks on the packed token grid. The branch keys are not normalised, as
    diffusers' FLUX IP-Adapter leaves its image keys.
    """

    # Set by diffusers' `set_attention_backend` on every processor; the text path's attention honours them.
    _attention_backend = None
    _parallel_config = None

    def __init__(self, projections: BranchProjections, original: object):
        self.projections = projections
        self.original = original  # the processor this one replaced, restored by `detach`

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
        ip_hidden_states: FlexIPCondition | None = None,
    ) -> tuple[torch.Tensor, ...]:
        condition = _checked(ip_hidden_states)
        query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
            attn, hidden_states, encoder_hidden_states
        )
        query = query.unflatten(-1, (-1, attn.head_dim))
        key = key.unflatten(-1, (-1, attn.head_dim))
        value = value.unflatten(-1, (-1, attn.head_dim))

        query = attn.norm_q(query)
        key = attn.norm_k(key)
        image_query = query  # (B, N, h, d): the branches' query, before the rotary embedding

        encoder_query = encoder_query.unflatten(-1, (-1, attn.head_dim))
        encoder_key = encoder_key.unflatten(-1, (-1, attn.head_dim))
        encoder_value = encoder_value.unflatten(-1, (-1, attn.head_dim))

        encoder_query = attn.norm_added_q(encoder_query)
        encoder_key = attn.norm_added_k(encoder_key)

        query = torch.cat([encoder_query, query], dim=1)
        key = torch.cat([encoder_key, key], dim=1)
        value = torch.cat([encoder_value, value], dim=1)

        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        hidden_states = dispatch_attention_fn(
            query, key, value, attn_mask=attention_mask, backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )  # fmt: skip
        hidden_states = hidden_states.flatten(2, 3)
        hidden_states = hidden_states.to(query.dtype)

        encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
            [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1
        )
        hidden_states = attn.to_out[0](hidden_states.contiguous())
        hidden_states = attn.to_out[1](hidden_states)
        encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())
        if condition is None:
            return hidden_states, encoder_hidden_states

        # The branches in the attention's (B, h, N, d) layout; None when no row computes either (s = 0).
        branches = add_branches(None, image_query.transpose(1, 2), condition, self.projections, attn.heads)
        if branches is None:
            return hidden_states, encoder_hidden_states
        batch, heads, positions, head_dim = branches.shape
        branches = branches.transpose(1, 2).reshape(batch, positions, heads * head_dim).to(image_query.dtype)
        return hidden_states, encoder_hidden_states, branches


def _checked(condition) -> FlexIPCondition | None:
    if condition is not None and not isinstance(condition, FlexIPCondition):
        raise TypeError(
            f"a FlexIP layer got {type(condition).__name__} as ip_hidden_states; it expects a FlexIPCondition "
            "(diffusers' IP-Adapter may be in use on this transformer: unload one of the two)"
        )
    return condition
