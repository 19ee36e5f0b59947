"""Gated decoupled cross-attention (docs/method.md §2.3): the processor that replaces each cross-attention
layer's.

    Z = Attn(Q, K_text, V_text) + s * (g * Attn(Q, K_P, V_P) + (1 - g) * Attn(Q, K_S, V_S))

P, S and g reach every `attn2` as the second item of a `(text_embeds, FlexIPCondition)` tuple passed as the
UNet's `encoder_hidden_states`: diffusers hands that tuple to the cross-attention layers only, so the
self-attention processors never see (or warn about) our inputs. See docs/decisions/attention.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from .branches import add_branches
from .condition import FlexIPCondition
from .projections import BranchProjections


class FlexIPAttnProcessor:
    """Replaces one `attn2` processor; the text path is diffusers' `AttnProcessor2_0`, step for step.

    The shape of the computation (B samples, N latent positions, h heads of width d, r a branch's active rows):

        query (B, h, N, d) ── SDPA with the text K/V ──────────────────────────────> Z (B, h, N, d)
        for P, then S:  Z[rows] += factor (r, 1, 1, 1) * SDPA(query[rows], K, V)   # K, V: (r, h, n, d)
        Z -> (B, N, h·d) -> to_out

    With several references (`FlexIPCondition.subjects`) a branch's SDPA becomes the sum over references of
    share_i * SDPA(query[rows], K_i, V_i), share_i its weight, times its mask at this layer's grid (1, 1, N, 1);
    the factor is the layer's (`FlexIPCondition.weights_for`: per-block dials give layers their own weights).

    Both branches reuse the text path's query and are added in the attention's own (B, h, N, d) layout, so
    the text path's one transpose/reshape and `to_out` serve all three; `to_out` is linear, so the output
    stays exactly linear in g. With K/V cached a branch costs two ops, its SDPA and one fused multiply-add
    (`addcmul`) that applies s·g (or s·(1−g)): the weight scales the output, never the cached values, so it
    may change per step. A branch is computed only for its active rows (weight != 0): g = 1 never touches
    the Personalization weights (not even as 0 * inf), g = 0 never touches the Preservation weights, s = 0
    is the base model exactly, and the rows are gathered and put back (`index_put`) only when some are
    skipped (`branches.py`, shared with FLUX's processor).
    """

    def __init__(self, projections: BranchProjections, original: object):
        self.projections = projections
        self.original = original  # the processor this one replaced, restored by `detach`

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | tuple | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        condition = None
        if isinstance(encoder_hidden_states, tuple):
            encoder_hidden_states, condition = encoder_hidden_states
            if not isinstance(condition, FlexIPCondition):
                raise TypeError(
                    f"a FlexIP layer got a {type(condition).__name__} beside the text embeddings; it expects a "
                    "FlexIPCondition (another adapter may be loaded on this UNet: unload it first)"
                )

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads

        # (batch, tokens, heads * head_dim) -> (batch, heads, tokens, head_dim)
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        if condition is not None:
            hidden_states = add_branches(hidden_states, query, condition, self.projections, attn.heads, attn.norm_k)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        hidden_states = attn.to_out[0](hidden_states)  # linear projection
        hidden_states = attn.to_out[1](hidden_states)  # dropout
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor
