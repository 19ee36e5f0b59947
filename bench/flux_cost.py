"""What FlexIP adds to one FLUX.1 transformer call, side by side with diffusers' FLUX IP-Adapter at the sizes of
XLabs' published weights: ops, FLOPs, the Personalization token count at which the two cost the same FLOPs,
and each adapter's parameters and file size.

    python -m bench.flux_cost                  # CPU, about a minute (docs/performance.md)
    python -m bench.flux_cost --size 512

Method. FLUX.1-dev's transformer (`FluxTransformer2DModel` with its config: 19 double- and 38 single-stream
blocks, 24 heads of 128, T5 tokens 4096 wide, pooled CLIP text 768 wide, 64 input channels) with random
weights, one call: batch 1 (FLUX.1-dev is guidance-distilled: one call a step), the prompt's 512 T5 tokens
(`max_sequence_length`'s default), a `--size` px image (1024: 64 x 64 packed tokens). Settings:

  bare           the transformer alone
  flexip-cached  FlexIP, both branches active (g = 0.5), P, S and every layer's branch K/V made at an earlier
                 call (a generation's later steps)
  flexip-first   the first step: the adapters make P and S, each layer fills its K/V cache (once a generation)
  xlabs-v1/v2    diffusers' FLUX IP-Adapter as `FluxTransformer2DLoadersMixin._load_ip_adapter_weights` builds
                 it for XLabs-AI/flux-ip-adapter (v1: 4 image tokens) and -v2 (16): `ImageProjection` from CLIP
                 ViT-L/14's 768-wide embedding to 4096-wide tokens, run by the transformer at every call, and a
                 `FluxIPAdapterAttnProcessor` (`to_k_ip`/`to_v_ip`, 4096 to 3072 with biases) in each
                 double-stream block, which projects the tokens and attends to them at every call

Where each number is counted (bench/measure.py's counters):
  FLOPs          on the meta device at the real architecture, every block (nothing is allocated or computed:
                 torch's FLOP counter reads shapes). The meta device runs attention as the math path's
                 matmuls, whose FLOPs are the attention kernel's formula.
  ops            on the CPU at the real depth (every block) and a narrow width (2 heads of 16, the tiny kit's):
                 the aten ops a call dispatches do not depend on widths or token counts, and the meta device
                 cannot count them (its attention is a dozen ops where a CPU or GPU runs one kernel).
  parameters     FlexIP's adapter built for the real transformer on the meta device (its branch K/V sized by
                 the transformer, its adapters by configs/train/sdxl.yaml, the recipe for a 2048-wide text
                 stream: FLUX.1 has no training recipe yet; FlexIP's encoders, OpenCLIP ViT-H/14 and DINOv2-L);
                 XLabs' as diffusers builds it from the state dict's shapes (image projection 768 x 4 or 16
                 tokens x 4096 with bias and a 4096 LayerNorm; 19 x (to_k_ip, to_v_ip)). A file holds each
                 parameter in 4 bytes (fp32) or 2 (bf16); a safetensors header adds kilobytes.
The break-even sweeps the T5 tokens the Personalization branch reads (77 by default, `families/flux.py`):
FlexIP's added FLOPs are affine in it, so the crossing is solved from two counted calls and every swept value
is checked against the line. Counts are exact; nothing is timed (the real transformer, 12B parameters, does
not fit this CPU's memory in float32; tests/bench/test_flux_cost.py checks the method on the tiny kit).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from contextlib import contextmanager

import torch
from diffusers import FluxTransformer2DModel
from diffusers.models.embeddings import ImageProjection, MultiIPAdapterImageProjection
from diffusers.models.transformers.transformer_flux import FluxIPAdapterAttnProcessor
from torch.utils import flop_counter

from bench.measure import counts
from bench.step_cost import CLIP_EMBED_DIM, DINO_TOKENS, RECIPES
from flexip import FlexIPAdapter
from flexip.families.registry import FLUX1
from flexip.models.condition import FlexIPCondition
from flexip.models.weights import BranchWeights, branch_weights
from flexip.tiny import FLUX_T5_WIDTH, WIDTH
from flexip.training.config import load_config

# black-forest-labs/FLUX.1-dev, transformer/config.json (rotary axes: diffusers' default, FLUX.1's)
FLUX1_DEV = {
    "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
    "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}  # fmt: skip
# The tiny kit's transformer (flexip.tiny.tiny_flux_transformer): its widths count the ops; tests/bench/ runs it
TINY_FLUX = {
    **FLUX1_DEV, "in_channels": 16, "num_layers": 2, "num_single_layers": 1, "attention_head_dim": 16,
    "num_attention_heads": 2, "joint_attention_dim": FLUX_T5_WIDTH, "pooled_projection_dim": WIDTH,
    "axes_dims_rope": (4, 4, 8),
}  # fmt: skip
CLIP_L_EMBED = 768  # XLabs' image encoder, openai/clip-vit-large-patch14: its projection's width
XLABS_TOKENS = {"xlabs-v1": 4, "xlabs-v2": 16}  # image tokens: proj.weight is (4 or 16) x 4096 by 768
T5_TOKENS = 512  # FluxPipeline's default max_sequence_length
OPS_SIZE = 128  # the narrow transformer's image (8 x 8 tokens): ops do not depend on it
SWEEP = (1, 8, 16, 32, 64, 77, 128, 256, 512)  # Personalization tokens; at most T5_TOKENS


@dataclasses.dataclass(frozen=True)
class Architecture:
    """What is built: the transformer's config, the encoders' widths, FlexIP's adapter sizes."""

    transformer: dict
    clip_l: int  # XLabs' CLIP image embedding
    clip: int  # FlexIP's CLIP image embedding
    dino: tuple[int, int]  # FlexIP's DINOv2 tokens
    adapter: dict  # FlexIPAdapter.for_unet's preservation, personalization and gate sizes


def real() -> Architecture:
    """FLUX.1-dev's transformer, the encoders' real widths, FlexIP's adapters at the SDXL recipe's sizes."""
    model = load_config(RECIPES / "sdxl.yaml").model
    sizes = {
        part: dataclasses.asdict(getattr(model, part)) for part in ("preservation", "personalization", "gate")
    }
    return Architecture(FLUX1_DEV, CLIP_L_EMBED, CLIP_EMBED_DIM, DINO_TOKENS, sizes)


def narrow(architecture: Architecture, transformer: dict) -> Architecture:
    """`architecture` with `transformer` (a narrow config) and every width as narrow; the adapters' depths and
    token counts, which decide the ops, kept."""
    width, heads, head_dim = (
        transformer[key] for key in ("pooled_projection_dim", "num_attention_heads", "attention_head_dim")
    )
    adapter = {part: dict(sizes) for part, sizes in architecture.adapter.items()}
    adapter["preservation"].update(width=width, heads=heads, head_dim=head_dim)
    adapter["personalization"].update(heads=heads, head_dim=head_dim)
    return Architecture(transformer, width, width, (architecture.dino[0], width), adapter)


def at_tiny_width(transformer: dict) -> dict:
    """`transformer`'s blocks at the tiny kit's widths."""
    widths = ("in_channels", "attention_head_dim", "num_attention_heads", "joint_attention_dim",
              "pooled_projection_dim", "axes_dims_rope")  # fmt: skip
    return {**transformer, **{key: TINY_FLUX[key] for key in widths}}


@contextmanager
def personalization_tokens(count: int):
    """FLUX.1's Personalization branch reading the first `count` T5 tokens instead of its default."""
    default = FLUX1.personalization_tokens
    FLUX1.personalization_tokens = count
    try:
        yield
    finally:
        FLUX1.personalization_tokens = default


class Bench:
    """One transformer with every setting's processors, on one device, and the inputs of one call."""

    def __init__(self, architecture: Architecture, device: str, size: int):
        self.device = torch.device(device)
        config = architecture.transformer
        with self.device:
            torch.manual_seed(0)
            self.transformer = FluxTransformer2DModel(**config).eval().requires_grad_(False)
            self.adapter = FlexIPAdapter.for_unet(
                self.transformer, architecture.clip, architecture.dino[1], **architecture.adapter
            ).eval().requires_grad_(False)  # fmt: skip
        self.processors = {"bare": dict(self.transformer.attn_processors)}
        self.adapter.attach(self.transformer)
        self.processors["flexip"] = dict(self.transformer.attn_processors)
        FlexIPAdapter.detach(self.transformer)
        self.projections = {}
        inner, joint = self.transformer.inner_dim, config["joint_attention_dim"]
        for name, tokens in XLABS_TOKENS.items():
            self.processors[name] = {
                layer: processor if layer.startswith("single_transformer_blocks") else FluxIPAdapterAttnProcessor(
                    inner, joint, num_tokens=(tokens,), device=self.device)
                for layer, processor in self.processors["bare"].items()
            }  # fmt: skip
            with self.device:
                projection = ImageProjection(architecture.clip_l, joint, num_image_text_embeds=tokens)
            self.projections[name] = MultiIPAdapterImageProjection([projection])

        def randn(*shape):
            return torch.randn(*shape, device=self.device)

        grid = size // 16  # the VAE's 8x, then 2x2 packing
        self.grid = grid
        image_ids = torch.zeros(grid, grid, 3)
        image_ids[..., 1] += torch.arange(grid)[:, None]
        image_ids[..., 2] += torch.arange(grid)[None, :]
        self.inputs = {
            "hidden_states": randn(1, grid * grid, config["in_channels"]),
            "encoder_hidden_states": randn(1, T5_TOKENS, joint),
            "pooled_projections": randn(1, config["pooled_projection_dim"]),
            "timestep": torch.full((1,), 0.5, device=self.device),
            "img_ids": image_ids.reshape(-1, 3).to(self.device),
            "txt_ids": torch.zeros(T5_TOKENS, 3, device=self.device),
            "guidance": torch.full((1,), 3.5, device=self.device) if config["guidance_embeds"] else None,
        }
        # XLabs' input, as FluxPipeline passes it: (batch, images, embedding)
        self.clip_l = randn(1, 1, architecture.clip_l)
        self.features = [(randn(1, architecture.clip), randn(1, *architecture.dino))]

    def run(self, name: str, joint: dict | None = None, projection: torch.nn.Module | None = None):
        self.transformer.encoder_hid_proj = projection
        self.transformer.set_attn_processor(dict(self.processors[name]))
        with torch.no_grad():
            return self.transformer(**self.inputs, joint_attention_kwargs=joint)

    def condition(self):
        """The call's FlexIP condition as a pipeline's first call builds it: g = 0.5, s = 1, an empty cache."""
        text = self.inputs["encoder_hidden_states"]
        # The active rows are found on the CPU: the meta device holds no values to find them in.
        weights = BranchWeights.create(
            *branch_weights(0.5, 1.0, 1, torch.device("cpu")), text.dtype, self.device
        )
        with torch.no_grad():
            return self.adapter.condition(
                self.features, text, weights, kv_cache={}, latent_size=(self.grid,) * 2
            )

    def cached(self) -> tuple[Callable[[], object], FlexIPCondition]:
        """A later step's call and its condition, made and its K/V cache filled by a first call."""
        condition = self.condition()
        self.run("flexip", {"ip_hidden_states": condition})
        return lambda: self.run("flexip", {"ip_hidden_states": condition}), condition

    def calls(self) -> dict[str, Callable[[], object]]:
        calls = {"bare": lambda: self.run("bare"), "flexip-cached": self.cached()[0],
                 "flexip-first": lambda: self.run("flexip", {"ip_hidden_states": self.condition()})}  # fmt: skip
        for name, projection in self.projections.items():
            # A new dict each call: the transformer pops the embeddings from it.
            calls[name] = lambda n=name, p=projection: self.run(
                n, {"ip_adapter_image_embeds": [self.clip_l]}, p
            )
        return calls

    def image_projection(self, name: str) -> Callable[[], object]:
        return lambda: self.projections[name]([self.clip_l])

    def parameters(self) -> dict[str, int]:
        counted = {"transformer": _parameters(self.transformer), "flexip": _parameters(self.adapter),
                   "flexip branch K/V": _parameters(self.adapter.layers)}  # fmt: skip
        for name in XLABS_TOKENS:
            layers = [p for p in self.processors[name].values() if isinstance(p, torch.nn.Module)]
            counted[name] = _parameters(self.projections[name], *layers)
            counted[f"{name} image K/V"] = _parameters(*layers)
        return counted


def _parameters(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for module in modules for p in module.parameters())


def flops(call: Callable[[], object]) -> int:
    """The FLOPs of `call()` on the meta device: `counts`' FLOP counter alone, the ops and memory the meta
    device dispatches being none of a real device's."""
    with flop_counter.FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops()


def cache_bytes(condition: FlexIPCondition) -> int:
    """What a condition's cached branch keys/values hold in bf16 (2 bytes a number)."""
    return sum(
        tensor.numel() * 2 for pairs in condition.kv_cache.values() for pair in pairs for tensor in pair
    )


def measure(
    architecture: Architecture, ops_architecture: Architecture, size: int, ops_size: int, sweep=SWEEP
) -> dict:
    """Every count this script reports: FLOPs and parameters from `architecture` on the meta device, ops from
    `ops_architecture` on the CPU, and flexip-cached's added FLOPs at each Personalization token count of
    `sweep` (which holds the default, where the K/V cache's size is taken)."""
    meta = Bench(architecture, "meta", size)
    counted = {name: flops(call) for name, call in meta.calls().items()}
    cpu = Bench(ops_architecture, "cpu", ops_size)
    ops = {name: counts(call)["ops"] for name, call in cpu.calls().items()}
    ops.update(
        {f"{name} image projection": counts(cpu.image_projection(name))["ops"] for name in XLABS_TOKENS}
    )
    added, caches = {}, {}
    for count in sweep:
        with personalization_tokens(count):
            call, condition = meta.cached()
            added[count], caches[count] = flops(call) - counted["bare"], cache_bytes(condition)
    return {
        "flops": counted, "ops": ops, "sweep": added, "parameters": meta.parameters(),
        "double_blocks": architecture.transformer["num_layers"], "cache_bytes": caches[FLUX1.personalization_tokens],
    }  # fmt: skip


def break_even(sweep: dict[int, float], target: float) -> float:
    """The Personalization token count at which FlexIP's added FLOPs reach `target`, from the line through the
    sweep's first and last points; every other point must lie on it (attention FLOPs are linear in keys)."""
    (first, low), (last, high) = min(sweep.items()), max(sweep.items())
    for count, value in sweep.items():  # in integers: exact
        if (value - low) * (last - first) != (high - low) * (count - first):
            raise RuntimeError(f"FlexIP's FLOPs are not affine in the Personalization tokens at {count}")
    return first + (target - low) * (last - first) / (high - low)


def report(results: dict, size: int, title: str) -> None:
    flops, ops, double = results["flops"], results["ops"], results["double_blocks"]
    bare_flops, bare_ops = flops["bare"], ops["bare"]
    print(f"# {title}, one transformer call, batch 1, {size} px ({size // 16}x{size // 16} packed tokens), "
          f"{T5_TOKENS} T5 tokens, torch {torch.__version__}")  # fmt: skip
    print(
        "| setting | ops | +ops | +ops / flexip-cached's | GFLOPs | +GFLOPs | +FLOPs | +FLOPs / flexip-cached's |"
    )
    print("|---|---|---|---|---|---|---|---|")
    added_ops = {name: ops[name] - bare_ops for name in flops}
    added_flops = {name: flops[name] - bare_flops for name in flops}
    for name in flops:
        ops_ratio, flops_ratio = (
            ("", "") if name == "bare" else
            (f"{added_ops[name] / added_ops['flexip-cached']:.2f}",
             f"{added_flops[name] / added_flops['flexip-cached']:.2f}")
        )  # fmt: skip
        print(f"| {name} | {ops[name]} | {added_ops[name]:+d} | {ops_ratio} | {flops[name] / 1e9:.1f} | "
              f"{added_flops[name] / 1e9:+.2f} | {added_flops[name] / bare_flops:+.3%} | {flops_ratio} |")  # fmt: skip
    per_block = added_ops["flexip-cached"] / double
    splits = ", ".join(
        f"{name} {(added_ops[name] - ops[f'{name} image projection']) / double:g} per block + "
        f"{ops[f'{name} image projection']} for its image projection"
        for name in XLABS_TOKENS
    )
    print(f"ops added over {double} double-stream blocks: flexip-cached {per_block:g} per block; {splits}")

    print()
    print(
        "| Personalization tokens | flexip-cached +GFLOPs | "
        + " | ".join(f"/ {n}'s" for n in XLABS_TOKENS)
        + " |"
    )
    print("|---|---|" + "---|" * len(XLABS_TOKENS))
    for count, value in results["sweep"].items():
        ratios = " | ".join(f"{value / added_flops[name]:.2f}" for name in XLABS_TOKENS)
        mark = " (default)" if count == FLUX1.personalization_tokens else ""
        print(f"| {count}{mark} | {value / 1e9:.2f} | {ratios} |")
    for name in XLABS_TOKENS:
        tokens = break_even(results["sweep"], added_flops[name])
        if tokens >= 1:
            said = f"flexip-cached adds fewer FLOPs up to {int(tokens)}"
        else:  # the Preservation branch's 20 tokens alone cost as much or more
            said = "flexip-cached adds more FLOPs at every count"
        print(f"break-even with {name}: {tokens:.1f} Personalization tokens ({said})")
    print(f"FlexIP's K/V cache: {results['cache_bytes'] / 2**20:.1f} MiB per image in bf16")

    print()
    parameters = results["parameters"]
    print("| adapter | parameters | of which per-layer K/V | fp32 file | bf16 file |")
    print("|---|---|---|---|---|")
    for name, kv in (("flexip", "flexip branch K/V"), *((n, f"{n} image K/V") for n in XLABS_TOKENS)):
        count = parameters[name]
        print(f"| {name} | {count / 1e6:.1f}M | {parameters[kv] / 1e6:.1f}M | {count * 4 / 2**20:,.0f} MiB | "
              f"{count * 2 / 2**20:,.0f} MiB |")  # fmt: skip
    print(f"the transformer: {parameters['transformer'] / 1e9:.2f}B parameters")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size", type=int, default=1024, help="image size in pixels (default: 1024, FLUX.1's)"
    )
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    architecture = real()
    results = measure(architecture, narrow(architecture, at_tiny_width(FLUX1_DEV)), args.size, OPS_SIZE)
    report(results, args.size, "FLUX.1-dev's transformer (random weights)")
    return results


if __name__ == "__main__":
    main()
