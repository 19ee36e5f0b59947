"""The two branches of one joined layer (docs/method.md §2.3), shared by every denoiser's processor:

    s·g·Attn(Q, K_P, V_P) + s·(1 − g)·Attn(Q, K_S, V_S)

computed from the layer's query Q in the attention's (B, h, N, d) layout, each branch only for its active rows
(weight != 0), its keys/values from the condition's cache once filled, several references summed with their
weights and masks. The processors differ in where Q comes from and where the sum goes (`processor.py` adds it
to a UNet's text attention, `flux_processor.py` hands it to a FLUX block). A clip's layer (`condition.frames`
rows per sample) attends with each sample's frames as one sequence of queries (`_add_clip_branch`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .condition import FlexIPCondition
from .projections import BranchProjections


def add_branches(
    hidden_states: torch.Tensor | None, query: torch.Tensor, condition: FlexIPCondition,
    projections: BranchProjections, heads: int, norm_k: nn.Module | None = None,
) -> torch.Tensor | None:  # fmt: skip
    """`hidden_states` (B, h, N, d) plus both branches of the layer whose branch K/V are `projections`; with
    `hidden_states` None, the branches alone, or None where no row computes either. `norm_k` normalises the
    branch keys as the layer's own keys are (None: as they come)."""
    weights = condition.weights_for(projections)
    hidden_states = _add_branch(
        hidden_states, query, condition, condition.preservation_tokens, weights.preservation_rows,
        weights.preservation_factor, projections.to_k_preservation, projections.to_v_preservation, heads, norm_k,
    )  # fmt: skip
    return _add_branch(
        hidden_states, query, condition, condition.personalization_tokens, weights.personalization_rows,
        weights.personalization_factor, projections.to_k_personalization, projections.to_v_personalization, heads,
        norm_k,
    )  # fmt: skip


def _add_branch(
    hidden_states: torch.Tensor | None, query: torch.Tensor, condition: FlexIPCondition, tokens: torch.Tensor,
    rows: torch.Tensor | None, factor: torch.Tensor, to_k: nn.Linear, to_v: nn.Linear, heads: int,
    norm_k: nn.Module | None,
) -> torch.Tensor | None:  # fmt: skip
    """hidden_states + factor * Σ_subjects share * Attn(query, to_k(tokens), to_v(tokens)) over the active
    rows, in (B, h, N, d); one subject of weight 1 without a mask is added as it comes."""
    if rows is not None and rows.numel() == 0:
        return hidden_states
    keys_values = _keys_values(condition, tokens, rows, to_k, to_v, heads, norm_k)
    if condition.frames > 1:
        return _add_clip_branch(hidden_states, query, condition, rows, factor, keys_values)
    full_query = query
    if rows is not None:
        query = query[rows]
    if not condition.mixed:
        out = F.scaled_dot_product_attention(query, *keys_values[0])
    else:
        # The subjects' mixture first, then one multiply-add: the same image twice at weights 0.5 and 0.5
        # then gives exactly the image once (0.5·A + 0.5·A is A in floating point).
        out = None
        for subject, (key, value) in zip(condition.subjects, keys_values):
            share = subject.share(query.shape[2], condition.layer_grid, query.dtype)
            term = F.scaled_dot_product_attention(query, key, value) * share
            out = term if out is None else out + term

    if hidden_states is None:
        if rows is None:
            return out * factor.to(out.dtype)
        hidden_states = full_query.new_zeros(full_query.shape, dtype=out.dtype)
    # Cast only under autocast, where the attention runs below the tokens' dtype; otherwise a no-op.
    factor = factor.to(hidden_states.dtype)
    if rows is None:
        return torch.addcmul(hidden_states, out, factor)
    # `index_put` keeps the attention's memory layout, so the reshape after it stays a view (`index_add`
    # would return a contiguous tensor, and the reshape would copy it).
    return hidden_states.index_put((rows,), out * factor, accumulate=True)


def _add_clip_branch(
    hidden_states: torch.Tensor | None, query: torch.Tensor, condition: FlexIPCondition, rows: torch.Tensor | None,
    factor: torch.Tensor, keys_values: list[tuple[torch.Tensor, torch.Tensor]],
) -> torch.Tensor:  # fmt: skip
    """`_add_branch` for a clip: the query's rows are (sample, frame), the keys/values' rows samples. The frames
    of a sample share its keys/values, so its frames' queries attend as one sequence, (B, h, F·N, d), a view
    of the (B·F, h, N, d) query: the keys/values are read as they are, never repeated per frame. The output
    goes back to (B, F, h, N, d), where `factor` (rows, F, 1, 1, 1) gives each frame its own weight."""
    frames, positions = condition.frames, query.shape[2]
    clip_query = query.transpose(1, 2).unflatten(0, (-1, frames)).flatten(1, 2).transpose(1, 2)
    if rows is not None:
        clip_query = clip_query[rows]
    if not condition.mixed:
        out = F.scaled_dot_product_attention(clip_query, *keys_values[0])
    else:
        out = None
        for subject, (key, value) in zip(condition.subjects, keys_values):
            share = subject.share(positions, condition.layer_grid, query.dtype)
            if isinstance(share, torch.Tensor):  # the same mask in every frame
                share = share.repeat(1, 1, frames, 1)
            term = F.scaled_dot_product_attention(clip_query, key, value) * share
            out = term if out is None else out + term
    out = out.unflatten(2, (frames, positions)).transpose(1, 2)  # (rows, F, h, N, d)
    if hidden_states is None:
        hidden_states = query.new_zeros(query.shape, dtype=out.dtype)
    clip = hidden_states.unflatten(0, (-1, frames))
    factor = factor.to(clip.dtype)
    if rows is None:
        return torch.addcmul(clip, out, factor).flatten(0, 1)
    return clip.index_put((rows,), out * factor, accumulate=True).flatten(0, 1)


def _keys_values(
    condition: FlexIPCondition, tokens: torch.Tensor, rows: torch.Tensor | None, to_k: nn.Linear, to_v: nn.Linear,
    heads: int, norm_k: nn.Module | None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
    """Each subject's branch keys/values (rows, heads, n, head_dim) over `rows`, from the cache when filled."""
    cached = condition.kv_cache.get(to_k) if condition.kv_cache is not None else None
    if cached is None:
        filled = None if condition.kv_all_rows else rows
        count = len(condition.subjects)
        width = tokens.shape[1] // count
        cached = []
        for index in range(count):
            own = tokens if count == 1 else tokens[:, index * width : (index + 1) * width]
            if filled is not None:
                own = own[filled]
            batch = own.shape[0]
            head_dim = to_k.out_features // heads
            # (rows, n, heads * head_dim) -> (rows, heads, n, head_dim)
            key = to_k(own).view(batch, -1, heads, head_dim).transpose(1, 2)
            value = to_v(own).view(batch, -1, heads, head_dim).transpose(1, 2)
            if norm_k is not None:
                key = norm_k(key)
            cached.append((key, value))
        if condition.kv_cache is not None:
            condition.kv_cache[to_k] = cached
    if condition.kv_all_rows and rows is not None:
        return [(key[rows], value[rows]) for key, value in cached]
    return cached
