"""What one UNet step costs with FlexIP, against the bare UNet and diffusers' IP-Adapter Plus, side by side.

    python -m bench.step_cost --size 256                      # CPU, float32 (docs/performance.md)
    python -m bench.step_cost --size 512 --rounds 8
    python -m bench.step_cost --family sdxl --size 256 --rounds 5
    python -m bench.step_cost --device cuda --dtype float16 --size 512 --rounds 50

The real Stable Diffusion 1.5 (or SDXL) UNet architecture with random weights (built from its config in code,
nothing downloaded): costs do not depend on the weights' values. One step, batch 2 (one image with guidance),
both FlexIP branches active (g = 0.5), the adapter sized as the family's training recipe
(configs/train/sd15.yaml, sdxl.yaml). Settings, all in one process on one UNet whose attention processors are
swapped before each call (so SDXL's 2.6B parameters are in memory once):

  bare            the UNet alone
  flexip-cached   FlexIP with P, S and every layer's branch K/V computed at the first step (the pipeline's case)
  flexip-first    the first step: the adapters make P and S, the layers fill the K/V cache (counted only)
  flexip-uncached the adapters and the K/V projections every step (training's case)
  ip-adapter-plus diffusers' IP-Adapter Plus (its resampler runs inside every step, as diffusers does it)

Counts (ops, FLOPs, peak bytes of the tensors a step allocates) are exact; times are interleaved rounds,
and each ratio to `bare` is the median of per-round ratios with a bootstrap 95% interval (the smallest and
largest ratio below 5 rounds: bench/measure.py).
The adapters' parameter counts (what an adapter file holds) are printed too, and IP-Adapter Plus's extra ops
split into its resampler (counted alone) and the rest, per cross-attention layer.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import platform
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0
from diffusers.models.embeddings import IPAdapterPlusImageProjection, MultiIPAdapterImageProjection

from bench.measure import counts, interleaved_times, interval_name, paired_ratio, verdict
from flexip import FlexIPAdapter
from flexip.training.config import load_config

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "train"
# stable-diffusion-v1-5/stable-diffusion-v1-5, unet/config.json
SD15_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280), "cross_attention_dim": 768, "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "norm_num_groups": 32, "norm_eps": 1e-5, "act_fn": "silu", "flip_sin_to_cos": True, "freq_shift": 0,
    "downsample_padding": 1, "mid_block_scale_factor": 1, "center_input_sample": False,
}  # fmt: skip
# stabilityai/stable-diffusion-xl-base-1.0, unet/config.json: 70 cross-attention layers of 5, 10 and 20 heads
SDXL_UNET = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280), "cross_attention_dim": 2048, "attention_head_dim": (5, 10, 20),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10), "use_linear_projection": True,
    "addition_embed_type": "text_time", "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32, "norm_eps": 1e-5, "act_fn": "silu", "flip_sin_to_cos": True, "freq_shift": 0,
}  # fmt: skip
CLIP_EMBED_DIM = 1024  # IP-Adapter's OpenCLIP ViT-H/14: projection size
CLIP_HIDDEN = (257, 1280)  # its penultimate hidden states at 224 px (IP-Adapter Plus's input)
DINO_TOKENS = (257, 1024)  # DINOv2-L at 224 px: [CLS] and 16 x 16 patches
# h94/IP-Adapter models/ip-adapter-plus_sd15.safetensors and sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors,
# as diffusers converts them
IP_ADAPTER_PLUS = {
    "sd15": {"embed_dims": 1280, "output_dims": 768, "hidden_dims": 768, "depth": 4, "dim_head": 64, "heads": 12,
             "num_queries": 16, "ffn_ratio": 4},
    "sdxl": {"embed_dims": 1280, "output_dims": 2048, "hidden_dims": 1280, "depth": 4, "dim_head": 64, "heads": 20,
             "num_queries": 16, "ffn_ratio": 4},
}  # fmt: skip
FAMILIES = {"sd15": (SD15_UNET, "sd15.yaml", "SD1.5"), "sdxl": (SDXL_UNET, "sdxl.yaml", "SDXL")}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--family", default="sd15", choices=sorted(FAMILIES), help="the base's UNet architecture"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--size", type=int, default=512, help="image size in pixels; latents are size / 8")
    parser.add_argument(
        "--rounds", type=int, default=10, help="timed rounds, each running every setting once"
    )
    return parser.parse_args(argv)


def ip_adapter_plus(unet: UNet2DConditionModel, family: str) -> tuple[dict, torch.nn.Module]:
    """IP-Adapter Plus for `unet` (its processors and image projection, random weights), built as diffusers'
    `_load_ip_adapter_weights` builds them; not installed."""
    config = IP_ADAPTER_PLUS[family]
    processors = {}
    for name in unet.attn_processors:
        attn = unet.get_submodule(name.removesuffix(".processor"))
        if attn.is_cross_attention:
            processors[name] = IPAdapterAttnProcessor2_0(
                attn.to_k.out_features, unet.config.cross_attention_dim, num_tokens=(config["num_queries"],)
            )
        else:
            processors[name] = AttnProcessor2_0()
    return processors, MultiIPAdapterImageProjection([IPAdapterPlusImageProjection(**config)])


def parameters(*modules) -> int:
    return sum(p.numel() for module in modules for p in module.parameters())


def settings(args) -> tuple[dict, dict, int]:
    """(name -> a call running one step of that setting, name -> adapter parameters, the UNet's cross-attention
    layers); `flexip-first` builds its condition inside, `ip-adapter-resampler` is IP-Adapter Plus's image
    projection alone."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    unet_config, recipe, _ = FAMILIES[args.family]
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**unet_config).eval().requires_grad_(False)
    bare_processors = dict(unet.attn_processors)
    ip_processors, ip_projection = ip_adapter_plus(unet, args.family)
    model = load_config(RECIPES / recipe).model
    sizes = {
        part: dataclasses.asdict(getattr(model, part)) for part in ("preservation", "personalization", "gate")
    }
    adapter = (
        FlexIPAdapter.for_unet(unet, CLIP_EMBED_DIM, DINO_TOKENS[1], **sizes).eval().requires_grad_(False)
    )
    adapter.attach(unet)
    flexip_processors = dict(unet.attn_processors)
    FlexIPAdapter.detach(unet)
    ip_modules = [p for p in ip_processors.values() if isinstance(p, torch.nn.Module)]
    layers = len(ip_modules)  # one IP-Adapter processor per cross-attention layer
    counted = {"flexip": parameters(adapter), "ip-adapter-plus": parameters(ip_projection, *ip_modules)}
    for module in (unet, adapter, ip_projection, *ip_modules):
        module.to(device, dtype)

    def use(processors: dict, projection: torch.nn.Module | None = None) -> None:
        """Install one setting on the shared UNet: its image projection (IP-Adapter's resampler has attention
        layers of its own, which keep their processors), then its processors."""
        unet.encoder_hid_proj = projection
        unet.register_to_config(encoder_hid_dim_type=None if projection is None else "ip_image_proj")
        current = unet.attn_processors
        unet.set_attn_processor({name: processors.get(name, current[name]) for name in current})

    def randn(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    batch, latent, width = 2, args.size // 8, unet.config.cross_attention_dim
    latents, text = randn(batch, 4, latent, latent), randn(batch, 77, width)
    clip, dino = randn(batch, CLIP_EMBED_DIM), randn(batch, *DINO_TOKENS)
    added = {}
    if unet.config.addition_embed_type == "text_time":  # SDXL: pooled text (1280) and six size numbers
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        time_ids = torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]] * batch, device=device, dtype=dtype)
        added = {"text_embeds": randn(batch, pooled), "time_ids": time_ids}
    ip_added = {**added, "image_embeds": [randn(batch, 1, *CLIP_HIDDEN)]}
    t = torch.tensor(500, device=device)
    cached = adapter(clip, dino, text, 0.5, cache=True)
    use(flexip_processors)
    unet(latents, t, encoder_hidden_states=(text, cached), added_cond_kwargs=added)  # fills the cache

    @torch.no_grad()
    def bare():
        use(bare_processors)
        return unet(latents, t, encoder_hidden_states=text, added_cond_kwargs=added)

    @torch.no_grad()
    def flexip_cached():
        use(flexip_processors)
        return unet(latents, t, encoder_hidden_states=(text, cached), added_cond_kwargs=added)

    @torch.no_grad()
    def flexip_first():
        use(flexip_processors)
        condition = adapter(clip, dino, text, 0.5, cache=True)
        return unet(latents, t, encoder_hidden_states=(text, condition), added_cond_kwargs=added)

    @torch.no_grad()
    def flexip_uncached():
        use(flexip_processors)
        return unet(
            latents, t, encoder_hidden_states=(text, adapter(clip, dino, text, 0.5)), added_cond_kwargs=added
        )

    @torch.no_grad()
    def ip_adapter():
        use(ip_processors, ip_projection)
        return unet(latents, t, encoder_hidden_states=text, added_cond_kwargs=ip_added)

    @torch.no_grad()
    def ip_resampler():
        return ip_projection(ip_added["image_embeds"])

    calls = {"bare": bare, "flexip-cached": flexip_cached, "flexip-first": flexip_first,
             "flexip-uncached": flexip_uncached, "ip-adapter-plus": ip_adapter,
             "ip-adapter-resampler": ip_resampler}  # fmt: skip
    return calls, counted, layers


def main(argv=None) -> dict:
    args = parse_args(argv)
    calls, sizes, layers = settings(args)
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    resampler = counts(calls.pop("ip-adapter-resampler"))["ops"]
    counted = {name: counts(call) for name, call in calls.items()}  # also touches every weight once
    if cuda:  # warm-up (kernel selection), then the caching allocator's own peak, weights included
        for name, call in calls.items():
            call()
            torch.cuda.reset_peak_memory_stats()
            call()
            counted[name]["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
    timed = {name: call for name, call in calls.items() if name != "flexip-first"}
    times = interleaved_times(timed, args.rounds, sync)

    bare = counted["bare"]
    print(f"# {FAMILIES[args.family][2]} UNet step, {args.size} px ({args.size // 8}x{args.size // 8} latents), "
          f"batch 2, "
          f"{args.device} {args.dtype}, {args.rounds} rounds, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"{datetime.date.today()}")  # fmt: skip
    print(
        f"| setting | ops | +ops | GFLOPs | +FLOPs | peak MiB | median s | time / bare [{interval_name(args.rounds)}] "
        "| verdict |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    results = {}
    for name, c in counted.items():
        row = dict(c)
        line = (f"| {name} | {c['ops']} | {c['ops'] - bare['ops']:+d} | {c['flops'] / 1e9:.1f} | "
                f"{(c['flops'] - bare['flops']) / bare['flops']:+.2%} | {c['peak_bytes'] / 2**20:.0f} |")  # fmt: skip
        if name in times and name != "bare":
            ratio, low, high = paired_ratio(times[name], times["bare"])
            row.update(ratio=ratio, low=low, high=high)
            median = sorted(times[name])[len(times[name]) // 2]
            line += (
                f" {median:.3f} | {ratio:.3f} [{low:.3f}, {high:.3f}] | {verdict(low, high, args.rounds)} |"
            )
        elif name == "bare":
            line += f" {sorted(times[name])[len(times[name]) // 2]:.3f} | 1 | |"
        else:
            line += " | (counted only) | |"
        print(line)
        results[name] = row
    print("adapter parameters (float32 file / float16 file): " + ", ".join(
        f"{name} {count / 1e6:.1f}M ({count * 4 / 2**20:.0f} / {count * 2 / 2**20:.0f} MiB)"
        for name, count in sizes.items()
    ))  # fmt: skip
    results["parameters"] = sizes
    ip_extra = counted["ip-adapter-plus"]["ops"] - bare["ops"]
    per_layer = (ip_extra - resampler) / layers
    print(
        f"IP-Adapter Plus's +{ip_extra} ops: its resampler {resampler} (every step), and {per_layer:g} per "
        f"cross-attention layer over {layers} layers"
    )
    results["ip-adapter-plus-ops"] = {"resampler": resampler, "per_layer": per_layer, "layers": layers}
    if cuda:
        print("CUDA peak allocated (weights included), MiB: "
              + ", ".join(f"{n} {c['cuda_peak_bytes'] / 2**20:.0f}" for n, c in counted.items()))  # fmt: skip
    return results


if __name__ == "__main__":
    main()
