"""What one UNet step costs with FlexIP, against the bare UNet and diffusers' IP-Adapter Plus, side by side.

    python -m bench.step_cost --size 256                      # CPU, float32 (docs/performance.md)
    python -m bench.step_cost --size 512 --rounds 8
    python -m bench.step_cost --device cuda --dtype float16 --size 512 --rounds 50

The real Stable Diffusion 1.5 UNet architecture with random weights (built from its config in code, nothing
downloaded): costs do not depend on the weights' values. One step, batch 2 (one image with guidance), both
FlexIP branches active (g = 0.5). Settings, all in one process on copies of one UNet:

  bare            the UNet alone
  flexip-cached   FlexIP with P, S and every layer's branch K/V computed at the first step (the pipeline's case)
  flexip-first    the first step: the adapters make P and S, the layers fill the K/V cache (counted only)
  flexip-uncached the adapters and the K/V projections every step (training's case)
  ip-adapter-plus diffusers' IP-Adapter Plus (its resampler runs inside every step, as diffusers does it)

Counts (ops, FLOPs, peak bytes of the tensors a step allocates) are exact; times are interleaved rounds,
and each ratio to `bare` is the median of per-round ratios with a bootstrap 95% interval (bench/measure.py).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0
from diffusers.models.embeddings import IPAdapterPlusImageProjection, MultiIPAdapterImageProjection

from bench.measure import counts, interleaved_times, paired_ratio, verdict
from flexip import FlexIPAdapter

# stable-diffusion-v1-5/stable-diffusion-v1-5, unet/config.json
SD15_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280), "cross_attention_dim": 768, "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "norm_num_groups": 32, "norm_eps": 1e-5, "act_fn": "silu", "flip_sin_to_cos": True, "freq_shift": 0,
    "downsample_padding": 1, "mid_block_scale_factor": 1, "center_input_sample": False,
}  # fmt: skip
CLIP_EMBED_DIM = 1024  # IP-Adapter's OpenCLIP ViT-H/14: projection size
CLIP_HIDDEN = (257, 1280)  # its penultimate hidden states at 224 px (IP-Adapter Plus's input)
DINO_TOKENS = (257, 1024)  # DINOv2-L at 224 px: [CLS] and 16 x 16 patches
# h94/IP-Adapter models/ip-adapter-plus_sd15.safetensors, as diffusers converts it
IP_ADAPTER_PLUS = {"embed_dims": 1280, "output_dims": 768, "hidden_dims": 768, "depth": 4, "dim_head": 64,
                   "heads": 12, "num_queries": 16, "ffn_ratio": 4}  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--size", type=int, default=512, help="image size in pixels; latents are size / 8")
    parser.add_argument(
        "--rounds", type=int, default=10, help="timed rounds, each running every setting once"
    )
    return parser.parse_args(argv)


def with_ip_adapter_plus(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """IP-Adapter Plus on `unet`, built as diffusers' `_load_ip_adapter_weights` builds it (random weights)."""
    processors = {}
    for name in unet.attn_processors:
        attn = unet.get_submodule(name.removesuffix(".processor"))
        if attn.is_cross_attention:
            processors[name] = IPAdapterAttnProcessor2_0(
                attn.to_k.out_features,
                unet.config.cross_attention_dim,
                num_tokens=(IP_ADAPTER_PLUS["num_queries"],),
            )
        else:
            processors[name] = AttnProcessor2_0()
    unet.set_attn_processor(processors)
    unet.encoder_hid_proj = MultiIPAdapterImageProjection([IPAdapterPlusImageProjection(**IP_ADAPTER_PLUS)])
    unet.config.encoder_hid_dim_type = "ip_image_proj"
    return unet


def settings(args) -> dict:
    """name -> a call running one step of that setting; `flexip-first` builds its condition inside."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET).eval().requires_grad_(False)
    ip_unet = with_ip_adapter_plus(copy.deepcopy(unet)).to(device, dtype).eval().requires_grad_(False)
    flexip_unet = copy.deepcopy(unet).to(device, dtype)
    unet = unet.to(device, dtype)
    adapter = FlexIPAdapter.for_unet(flexip_unet, CLIP_EMBED_DIM, DINO_TOKENS[1]).to(device, dtype).eval()
    adapter.requires_grad_(False).attach(flexip_unet)

    def randn(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    batch, latent = 2, args.size // 8
    latents, text = randn(batch, 4, latent, latent), randn(batch, 77, 768)
    clip, dino = randn(batch, CLIP_EMBED_DIM), randn(batch, *DINO_TOKENS)
    ip_embeds = [randn(batch, 1, *CLIP_HIDDEN)]
    t = torch.tensor(500, device=device)
    cached = adapter(clip, dino, text, 0.5, cache=True)
    flexip_unet(latents, t, encoder_hidden_states=(text, cached))  # fills the cache

    @torch.no_grad()
    def bare():
        return unet(latents, t, encoder_hidden_states=text)

    @torch.no_grad()
    def flexip_cached():
        return flexip_unet(latents, t, encoder_hidden_states=(text, cached))

    @torch.no_grad()
    def flexip_first():
        condition = adapter(clip, dino, text, 0.5, cache=True)
        return flexip_unet(latents, t, encoder_hidden_states=(text, condition))

    @torch.no_grad()
    def flexip_uncached():
        return flexip_unet(latents, t, encoder_hidden_states=(text, adapter(clip, dino, text, 0.5)))

    @torch.no_grad()
    def ip_adapter_plus():
        return ip_unet(latents, t, encoder_hidden_states=text, added_cond_kwargs={"image_embeds": ip_embeds})

    return {"bare": bare, "flexip-cached": flexip_cached, "flexip-first": flexip_first,
            "flexip-uncached": flexip_uncached, "ip-adapter-plus": ip_adapter_plus}  # fmt: skip


def main(argv=None) -> dict:
    args = parse_args(argv)
    calls = settings(args)
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
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
    print(f"# SD1.5 UNet step, {args.size} px ({args.size // 8}x{args.size // 8} latents), batch 2, "
          f"{args.device} {args.dtype}, {args.rounds} rounds, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"{datetime.date.today()}")  # fmt: skip
    print("| setting | ops | +ops | GFLOPs | +FLOPs | peak MiB | median s | time / bare [95% CI] | verdict |")
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
            line += f" {median:.3f} | {ratio:.3f} [{low:.3f}, {high:.3f}] | {verdict(low, high)} |"
        elif name == "bare":
            line += f" {sorted(times[name])[len(times[name]) // 2]:.3f} | 1 | |"
        else:
            line += " | (counted only) | |"
        print(line)
        results[name] = row
    if cuda:
        print("CUDA peak allocated (weights included), MiB: "
              + ", ".join(f"{n} {c['cuda_peak_bytes'] / 2**20:.0f}" for n, c in counted.items()))  # fmt: skip
    return results


if __name__ == "__main__":
    main()
