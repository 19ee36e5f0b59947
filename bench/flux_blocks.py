"""Whether FLUX.1's 38 single-stream blocks should take FlexIP's branches too, or only its 19 double-stream
blocks (where diffusers' FLUX IP-Adapter attends): what each choice costs per step and how it moves the output.

    python -m bench.flux_blocks                 # CPU, float32, a few seconds

A tiny FLUX.1 of the real depth (19 double-stream and 38 single-stream blocks; the tiny kit's width: 2 heads of
16, T5 48 wide) with random weights, the tiny kit's adapter sizes and random branch values (as
`flexip tiny-models` makes them), the Personalization branch's 77 T5 tokens, a 32 px image (64 packed tokens).
One transformer call, batch 1, g = 0.5 (both branches), the branch keys/values cached (a generation's later
steps). Settings:

  bare      the transformer alone
  double    FlexIP in the double-stream blocks (the library's choice)
  both      FlexIP in the double- and single-stream blocks: a single-stream block's branches read the image
            tokens' query after `norm_q`, before the rotary embedding, and are added to its attention output's
            image tokens (which the block's `proj_out` and gate then carry), the only place that block has

Counts (ops, FLOPs) are exact; the output change is the relative L2 distance of the transformer's output
(the predicted velocity) from `bare`, and the single-stream blocks' part of it |both - double| / |both - bare|,
averaged over seeds and three timesteps. The parameters each choice adds
at the real FLUX.1 width (4096-wide tokens, 3072-wide keys/values) are computed from the layer counts.
"""

from __future__ import annotations

import argparse

import torch
from diffusers import FluxTransformer2DModel
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb

from bench.measure import counts
from flexip import FlexIPAdapter
from flexip.models.branches import add_branches
from flexip.models.projections import BranchProjections
from flexip.models.weights import BranchWeights, branch_weights
from flexip.tiny import FLUX_T5_WIDTH, WIDTH

DOUBLE, SINGLE = 19, 38  # FLUX.1's blocks
TEXT_TOKENS = 77  # the Personalization branch's T5 tokens (families/flux.py)
REAL_TEXT, REAL_INNER = 4096, 3072  # FLUX.1's T5 width and attention width


class SingleStreamBranches:
    """The measurement's processor for a single-stream block: diffusers' `FluxAttnProcessor` step for step (a
    single-stream block's attention has no separate text projections), plus the branches on the image tokens
    (the last `positions` of the joint sequence), from the query it has already made."""

    def __init__(self, projections: BranchProjections, positions: int):
        self.projections, self.positions = projections, positions

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                 ip_hidden_states=None):  # fmt: skip
        query, key, value = (
            projection(hidden_states).unflatten(-1, (-1, attn.head_dim)) for projection in (attn.to_q, attn.to_k, attn.to_v)
        )  # fmt: skip
        query, key = attn.norm_q(query), attn.norm_k(key)
        image_query = query[:, -self.positions :]
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        output = dispatch_attention_fn(query, key, value, attn_mask=attention_mask).flatten(2, 3).to(query.dtype)
        branches = add_branches(None, image_query.transpose(1, 2), ip_hidden_states, self.projections, attn.heads)
        batch, heads, positions, head_dim = branches.shape
        output[:, -positions:] += branches.transpose(1, 2).reshape(batch, positions, heads * head_dim)
        return output


def tiny_flux(seed: int) -> FluxTransformer2DModel:
    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=DOUBLE, num_single_layers=SINGLE, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=FLUX_T5_WIDTH, pooled_projection_dim=WIDTH, guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    ).eval()  # fmt: skip


def random_values(projections: BranchProjections) -> None:
    """The tiny kit's stand-in for trained branch values (`flexip.tiny.save_tiny_model_set`)."""
    with torch.no_grad():
        for to_v in (projections.to_v_preservation, projections.to_v_personalization):
            to_v.weight.normal_(std=to_v.in_features**-0.5)


def measure(seed: int) -> dict:
    model = tiny_flux(seed)
    adapter = FlexIPAdapter.for_unet(
        model, clip_embed_dim=WIDTH, dino_hidden_dim=WIDTH,
        preservation={"num_queries": 4, "num_clip_tokens": 2, "width": WIDTH, "depth": 1, "heads": 2, "head_dim": 16},
        personalization={"num_clip_tokens": 2, "depth": 1, "heads": 2, "head_dim": 16},
    ).eval()  # fmt: skip
    for layer in adapter.layers.values():
        random_values(layer)
    singles = []
    for block in model.single_transformer_blocks:
        projections = BranchProjections(FLUX_T5_WIDTH, block.attn.inner_dim)
        projections.start_from(block.attn.to_k.weight.detach() @ model.context_embedder.weight.detach())
        random_values(projections)
        singles.append(projections)

    generator = torch.Generator().manual_seed(seed)
    height = width = 8  # packed tokens of a 32 px image on the tiny kit's VAE
    text = torch.randn(1, TEXT_TOKENS, FLUX_T5_WIDTH, generator=generator)
    image_ids = torch.zeros(height, width, 3)
    image_ids[..., 1] += torch.arange(height)[:, None]
    image_ids[..., 2] += torch.arange(width)[None, :]
    inputs = {
        "encoder_hidden_states": text, "pooled_projections": torch.randn(1, WIDTH, generator=generator),
        "img_ids": image_ids.reshape(-1, 3), "txt_ids": torch.zeros(TEXT_TOKENS, 3),
        "guidance": torch.full((1,), 3.5),
    }  # fmt: skip
    # A reference's features (CLIP's embedding, DINOv2's tokens), and the condition as a pipeline's first call
    # builds it.
    features = [(torch.randn(1, WIDTH, generator=generator), torch.randn(1, 17, WIDTH, generator=generator))]
    weights = BranchWeights.create(*branch_weights(0.5, 1.0, 1, text.device), text.dtype)
    condition = adapter.condition(features, text, weights, kv_cache={}, latent_size=(height, width))
    stock = dict(model.attn_processors)
    adapter.attach(model)
    with_double = dict(model.attn_processors)
    with_both = dict(with_double)
    for index, projections in enumerate(singles):
        with_both[f"single_transformer_blocks.{index}.attn.processor"] = SingleStreamBranches(projections, height * width)

    def run(processors: dict, latents: torch.Tensor, timestep: float, joined: bool) -> torch.Tensor:
        model.set_attn_processor(dict(processors))
        kwargs = {"joint_attention_kwargs": {"ip_hidden_states": condition}} if joined else {}
        with torch.no_grad():
            return model(hidden_states=latents, timestep=torch.full((1,), timestep), **inputs, **kwargs).sample

    settings = {"bare": (stock, False), "double": (with_double, True), "both": (with_both, True)}
    latents = torch.randn(1, height * width, 16, generator=generator)
    for processors, joined in settings.values():
        run(processors, latents, 0.5, joined)  # fills the K/V cache: the counted call is a later step's
    result = {name: counts(lambda p=p, j=j: run(p, latents, 0.5, j)) for name, (p, j) in settings.items()}
    change = {"double": [], "both": [], "single's share": []}
    for timestep in (0.25, 0.5, 0.9):
        bare = run(stock, latents, timestep, False)
        double, both = (run(settings[name][0], latents, timestep, True) for name in ("double", "both"))
        change["double"].append(float((double - bare).norm() / bare.norm()))
        change["both"].append(float((both - bare).norm() / bare.norm()))
        change["single's share"].append(float((both - double).norm() / (both - bare).norm()))
    model.set_attn_processor(stock)
    return {"counts": result, "change": {name: sum(values) / len(values) for name, values in change.items()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="random models measured, averaged (default: 3)")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    runs = [measure(seed) for seed in range(args.seeds)]
    table = runs[0]["counts"]
    print(f"tiny FLUX.1, {DOUBLE} double + {SINGLE} single blocks, 1 call, batch 1, g 0.5, K/V cached")
    print(f"{'setting':8} {'ops':>6} {'ops added':>10} {'MFLOPs':>8} {'output change':>14}")
    for name, row in table.items():
        added = row["ops"] - table["bare"]["ops"]
        change = sum(run["change"].get(name, 0.0) for run in runs) / len(runs)
        print(f"{name:8} {row['ops']:6.0f} {added:10.0f} {row['flops'] / 1e6:8.2f} {change:14.3f}")
    share = sum(run["change"]["single's share"] for run in runs) / len(runs)
    print(f"the single-stream blocks' part of `both`'s change (|both - double| / |both - bare|): {share:.3f}")
    per_layer = 4 * REAL_TEXT * REAL_INNER  # four branch projections per layer, no bias
    for name, layers in (("double", DOUBLE), ("both", DOUBLE + SINGLE)):
        print(f"{name}: {layers} layers, {layers * per_layer / 1e9:.2f}B branch parameters at FLUX.1's width "
              f"({layers * per_layer * 2 / 2**30:.1f} GiB in bf16)")  # fmt: skip


if __name__ == "__main__":
    main()
