"""Gated decoupled cross-attention (method.md §2.3) and its attachment to a diffusers UNet.

    Z = Attn(Q, K_text, V_text) + s * (g * Attn(Q, K_P, V_P) + (1 - g) * Attn(Q, K_S, V_S))

P, S and g reach every `attn2` as the second item of a `(text_embeds, FlexIPCondition)` tuple passed as the
UNet's `encoder_hidden_states`: diffusers hands that tuple to the cross-attention layers only, so the
self-attention processors never see (or warn about) our inputs. See docs/design.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
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
    def start_from(self, attn: Attention) -> None:
        """The fresh adapter's starting point: keys from the layer's text keys, values zero.

        Zero values make both branches add exactly nothing, so a fresh adapter is the base model at every g
        and s, as ControlNet's zero-initialised layers are; the text keys give each branch the text's
        attention pattern to start from. The value gradient is not zero (it is the attention-weighted output
        gradient), so the first step moves the values and the keys and tokens learn from then on.
        """
        for to_k in (self.to_k_preservation, self.to_k_personalization):
            to_k.weight.copy_(attn.to_k.weight)
        for to_v in (self.to_v_preservation, self.to_v_personalization):
            to_v.weight.zero_()


def _active_rows(weight: torch.Tensor) -> torch.Tensor | None:
    """Rows whose weight is non-zero: None means all of them, an empty tensor none."""
    rows = torch.nonzero(weight).flatten()
    return None if rows.numel() == weight.numel() else rows


def _factor(weight: torch.Tensor, rows: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """A branch's weight over its active rows, shaped to scale an attention output (rows, heads, tokens, dim)."""
    return (weight if rows is None else weight[rows]).to(dtype)[:, None, None, None]


@dataclass(eq=False)
class BranchWeights:
    """The two branches' weights in one layer for one UNet call: s·g and s·(1−g) per sample, the rows each
    branch computes (non-zero weight), and those rows' weights shaped to scale an attention output."""

    preservation_weight: torch.Tensor  # s * g: (batch,)
    personalization_weight: torch.Tensor  # s * (1 - g): (batch,)
    preservation_rows: torch.Tensor | None
    personalization_rows: torch.Tensor | None
    # (rows, 1, 1, 1) in the tokens' dtype: shaped once per UNet call rather than in each layer.
    preservation_factor: torch.Tensor
    personalization_factor: torch.Tensor

    @classmethod
    def create(
        cls, preservation_weight: torch.Tensor, personalization_weight: torch.Tensor, dtype: torch.dtype,
        device: torch.device | None = None,
    ) -> BranchWeights:  # fmt: skip
        """Weights on any device; the rows are found where the weights are (one host sync at most when they are
        on an accelerator), and everything is then moved to `device` when given."""
        preservation_rows = _active_rows(preservation_weight)
        personalization_rows = _active_rows(personalization_weight)
        parts = [
            preservation_weight, personalization_weight, preservation_rows, personalization_rows,
            _factor(preservation_weight, preservation_rows, dtype),
            _factor(personalization_weight, personalization_rows, dtype),
        ]  # fmt: skip
        if device is not None:
            parts = [None if part is None else part.to(device) for part in parts]
        return cls(*parts)

    def uses(self, branch: str) -> bool:
        """Whether any row computes `branch` ("preservation" or "personalization")."""
        rows = getattr(self, f"{branch}_rows")
        return rows is None or rows.numel() > 0


@dataclass(eq=False)
class Subject:
    """How one reference's branch outputs enter every layer: scaled by `weight`, and only inside `mask`.

    A layer's branch output is the sum over subjects of weight * mask * Attn(Q, K_i, V_i), each subject's
    keys and values from its own tokens (docs/design.md, "Several references"). The mask is area-resized to
    each layer's grid, so a grid cell with no mask pixel gets exactly zero and an all-ones mask exactly one.
    """

    weight: float = 1.0
    mask: torch.Tensor | None = None  # (height, width) in [0, 1] at any resolution of the image's aspect ratio
    _resized: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)  # positions -> (1, 1, N, 1)

    def share(self, positions: int, latent_size: tuple[int, int] | None, dtype: torch.dtype) -> torch.Tensor | float:
        """`weight`, times the mask at a layer of `positions` latent positions, shaped (1, 1, positions, 1)."""
        if self.mask is None:
            return self.weight
        if positions not in self._resized:
            height, width = layer_grid(positions, latent_size)
            resized = F.interpolate(self.mask[None, None], size=(height, width), mode="area")
            self._resized[positions] = (resized * self.weight).reshape(1, 1, positions, 1)
        return self._resized[positions].to(dtype)


def layer_grid(positions: int, latent_size: tuple[int, int] | None) -> tuple[int, int]:
    """The (height, width) of a UNet level with `positions` latent positions, from the latents' own size.

    Each down block halves the latents rounding up (a stride-2 convolution with padding 1), and the up blocks
    return to those sizes, so every level's grid is the latent grid halved a whole number of times.
    """
    if latent_size is None:
        raise ValueError("a masked reference needs the latents' size; FlexIPCondition.latent_size is not set")
    height, width = latent_size
    while height * width > positions and (height, width) != (1, 1):
        height, width = (height + 1) // 2, (width + 1) // 2
    if height * width != positions:
        raise ValueError(f"no UNet level of {latent_size[0]}x{latent_size[1]} latents has {positions} positions")
    return height, width


PLAIN = (Subject(),)  # one reference, weight 1, no mask: the branches are added as they come


@dataclass(eq=False)
class FlexIPCondition:
    """What one UNet call needs to add the two branches: tokens P and S, the subjects, and the branch weights.

    Build it with `FlexIPCondition.create`. With `cache=True` each layer keeps its branch keys/values after
    the first call, so a generation computes them once rather than once per denoising step; a condition
    with a cache must therefore only be reused with the same tokens (the pipeline makes one per call). The
    weights never enter the cache: they scale each branch's attention output, so they may change between
    calls that share the keys/values (`reweighted`: a dial over the steps), and per layer (`layer_weights`).
    """

    # P and S, each subject's tokens in turn: (batch, subjects * n_p, cross_attention_dim), likewise n_s.
    preservation_tokens: torch.Tensor
    personalization_tokens: torch.Tensor
    weights: BranchWeights  # every layer's, except those in `layer_weights`
    layer_weights: dict[nn.Module, BranchWeights] = field(default_factory=dict)  # by the layer's BranchProjections
    subjects: tuple[Subject, ...] = PLAIN
    latent_size: tuple[int, int] | None = None  # (height, width) of the latents: where masks are resized from
    # True when the weights change between calls (a schedule): the cache then holds every row's keys/values
    # and each call takes its active rows from them, since the active rows may change from step to step.
    kv_all_rows: bool = False
    # Branch keys/values (one (key, value) per subject) by the branch's key projection (one per layer and
    # branch): the module itself, not its id, so a processor built later for another layer can never find
    # this one's values.
    kv_cache: dict[nn.Linear, list[tuple[torch.Tensor, torch.Tensor]]] | None = field(default=None)
    # Whether the subjects are mixed (several, or a weight or mask) rather than added as they come; a plain
    # bool, which torch.compile reads as a constant.
    mixed: bool = field(init=False)

    def __post_init__(self):
        self.mixed = self.subjects is not PLAIN

    @classmethod
    def create(
        cls,
        preservation_tokens: torch.Tensor,
        personalization_tokens: torch.Tensor,
        preservation_weight: torch.Tensor,
        personalization_weight: torch.Tensor,
        cache: bool = False,
    ) -> FlexIPCondition:
        """One reference's tokens, with the per-sample weights s·g and s·(1−g) of every layer (training, and
        direct UNet calls); the pipeline builds its conditions, per layer and per reference, itself."""
        # Computed once per condition: one host sync per UNet call, not one per layer.
        weights = BranchWeights.create(preservation_weight, personalization_weight, preservation_tokens.dtype)
        return cls(preservation_tokens, personalization_tokens, weights, kv_cache={} if cache else None)

    def reweighted(self, weights: BranchWeights, layer_weights: dict[nn.Module, BranchWeights]) -> FlexIPCondition:
        """This condition with other weights, sharing its tokens, subjects and key/value cache."""
        return dataclasses.replace(self, weights=weights, layer_weights=layer_weights)

    def weights_for(self, projections: nn.Module) -> BranchWeights:
        return self.layer_weights.get(projections, self.weights)

    @property
    def preservation_weight(self) -> torch.Tensor:
        return self.weights.preservation_weight

    @property
    def personalization_weight(self) -> torch.Tensor:
        return self.weights.personalization_weight


def branch_weights(
    preservation: torch.Tensor | float, scale: torch.Tensor | float, batch: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample weights (s·g, s·(1−g)) of the two branches, each of shape (batch,)."""
    g = torch.as_tensor(preservation, dtype=torch.float32, device=device).expand(batch)
    s = torch.as_tensor(scale, dtype=torch.float32, device=device).expand(batch)
    return s * g, s * (1 - g)


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
    skipped.
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
            projections, weights = self.projections, condition.weights_for(self.projections)
            hidden_states = self._add_branch(
                attn, hidden_states, query, condition, condition.preservation_tokens,
                weights.preservation_rows, weights.preservation_factor,
                projections.to_k_preservation, projections.to_v_preservation,
            )  # fmt: skip
            hidden_states = self._add_branch(
                attn, hidden_states, query, condition, condition.personalization_tokens,
                weights.personalization_rows, weights.personalization_factor,
                projections.to_k_personalization, projections.to_v_personalization,
            )  # fmt: skip
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        hidden_states = attn.to_out[0](hidden_states)  # linear projection
        hidden_states = attn.to_out[1](hidden_states)  # dropout
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    @staticmethod
    def _add_branch(
        attn: Attention,
        hidden_states: torch.Tensor,
        query: torch.Tensor,
        condition: FlexIPCondition,
        tokens: torch.Tensor,
        rows: torch.Tensor | None,
        factor: torch.Tensor,
        to_k: nn.Linear,
        to_v: nn.Linear,
    ) -> torch.Tensor:
        """hidden_states + factor * Σ_subjects share * Attn(query, to_k(tokens), to_v(tokens)) over the active
        rows, in (B, h, N, d); one subject of weight 1 without a mask is added as it comes."""
        if rows is not None and rows.numel() == 0:
            return hidden_states
        keys_values = FlexIPAttnProcessor._keys_values(attn, condition, tokens, rows, to_k, to_v)
        if rows is not None:
            query = query[rows]
        if not condition.mixed:
            out = F.scaled_dot_product_attention(query, *keys_values[0])
        else:
            # The subjects' mixture first, then one multiply-add: the same image twice at weights 0.5 and 0.5
            # then gives exactly the image once (0.5·A + 0.5·A is A in floating point).
            out = None
            for subject, (key, value) in zip(condition.subjects, keys_values):
                share = subject.share(query.shape[2], condition.latent_size, query.dtype)
                term = F.scaled_dot_product_attention(query, key, value) * share
                out = term if out is None else out + term

        # Cast only under autocast, where the attention runs below the tokens' dtype; otherwise a no-op.
        factor = factor.to(hidden_states.dtype)
        if rows is None:
            return torch.addcmul(hidden_states, out, factor)
        # `index_put` keeps the attention's memory layout, so the reshape after it stays a view (`index_add`
        # would return a contiguous tensor, and the reshape would copy it).
        return hidden_states.index_put((rows,), out * factor, accumulate=True)

    @staticmethod
    def _keys_values(
        attn: Attention, condition: FlexIPCondition, tokens: torch.Tensor, rows: torch.Tensor | None,
        to_k: nn.Linear, to_v: nn.Linear,
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
                head_dim = to_k.out_features // attn.heads
                # (rows, n, heads * head_dim) -> (rows, heads, n, head_dim)
                key = to_k(own).view(batch, -1, attn.heads, head_dim).transpose(1, 2)
                value = to_v(own).view(batch, -1, attn.heads, head_dim).transpose(1, 2)
                if attn.norm_k is not None:
                    key = attn.norm_k(key)
                cached.append((key, value))
            if condition.kv_cache is not None:
                condition.kv_cache[to_k] = cached
        if condition.kv_all_rows and rows is not None:
            return [(key[rows], value[rows]) for key, value in cached]
        return cached


def cross_attention_layers(unet: nn.Module) -> dict[str, Attention]:
    """The UNet's cross-attention layers by processor name, found through diffusers' processor API."""
    layers = {}
    for name in unet.attn_processors:
        module = unet.get_submodule(name.removesuffix(".processor"))
        if isinstance(module, Attention) and module.is_cross_attention:
            layers[name] = module
    return layers


def attach(unet: nn.Module, projections: dict[str, BranchProjections]) -> None:
    """Install a FlexIP processor on every cross-attention layer named in `projections`."""
    if any(isinstance(p, FlexIPAttnProcessor) for p in unet.attn_processors.values()):
        raise RuntimeError("a FlexIP adapter is already attached to this UNet; detach it first")
    processors = {}
    for name, processor in unet.attn_processors.items():
        if name in projections:
            processors[name] = FlexIPAttnProcessor(projections[name], original=processor)
        else:
            processors[name] = processor
    unet.set_attn_processor(processors)


def detach(unet: nn.Module) -> None:
    """Put back the processors that `attach` replaced; the UNet is then exactly as before."""
    processors = {
        name: processor.original if isinstance(processor, FlexIPAttnProcessor) else processor
        for name, processor in unet.attn_processors.items()
    }
    unet.set_attn_processor(processors)
