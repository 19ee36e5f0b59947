"""Whole generations side by side: plain Stable Diffusion, IP-Adapter Plus and FlexIP (one and five dial values),
with latency, images per second and peak memory, then FlexIP under model and sequential CPU offload.

    python -m bench.pipeline_cost --device cuda                   # the GPU script: SD1.5, 512 px, fp16
    python -m bench.pipeline_cost --device cuda --compile         # also FlexIP with torch.compile'd UNet
    python -m bench.pipeline_cost --tiny --device cpu --dtype float32 --size 32 --steps 2 --rounds 2   # smoke

Every model is the real architecture with random weights, built from its config in code (nothing downloaded):
the SD1.5 UNet, VAE and CLIP ViT-L/14 text encoder, OpenCLIP ViT-H/14 (both adapters' image encoder) and
DINOv2-L. `--tiny` takes the tiny kit's shapes instead, so the script itself is tested on a CPU. Settings,
each one call generating from one reference with guidance:

  sd              the base pipeline, no reference
  ip-adapter-plus diffusers' IP-Adapter Plus, one scale (its image encoder runs in the call)
  ip-adapter-x5   five scales: five calls, since its scale is pipeline-wide
  flexip-1        FlexIP, one preservation value (the reference encoded in the call: no reference cache)
  flexip-5        FlexIP, five values in one call (one batch from one noise)

Times are interleaved rounds and each ratio to `sd` is the median of per-round ratios with a bootstrap 95%
interval (the smallest and largest ratio below 5 rounds: bench/measure.py). Peak memory is the CUDA allocator's
peak during one call with only that setting's weights on the GPU (every other pipeline's on the CPU), weights
included; on a CPU, the peak of the tensors the call allocates, weights not included. Then FlexIP's image under
`enable_model_cpu_offload()` and `enable_sequential_cpu_offload()` is compared with the plain path's, with its
latency and peak, nothing else left on the GPU (offload needs an accelerator: skipped on a CPU).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import platform
import statistics
import time

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image
from transformers import (
    BitImageProcessor,
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    Dinov2Config,
    Dinov2Model,
)

from bench.measure import PeakTensorBytes, interleaved_times, interval_name, paired_ratio, verdict
from bench.step_cost import IP_ADAPTER_PLUS, SD15_UNET, ip_adapter_plus
from flexip import FlexIPAdapter, FlexIPPipeline
from flexip.pipeline.injection import FlexIPInjection
from flexip.references.cache import ReferenceCache
from flexip.references.encoder import ReferenceEncoder
from flexip.tiny import build_tiny_base, build_tiny_image_encoders, byte_level_tokenizer

VALUES = [0.0, 0.25, 0.5, 0.75, 1.0]
# stable-diffusion-v1-5's vae/config.json and text_encoder/config.json (its tokenizer's vocabulary is not
# needed: the byte-level one tokenizes any prompt, and a step's cost does not depend on the vocabulary size)
SD15_VAE = {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "latent_channels": 4,
            "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
            "sample_size": 512}  # fmt: skip
CLIP_L_TEXT = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
               "max_position_embeddings": 77, "hidden_act": "quick_gelu"}  # fmt: skip
# h94/IP-Adapter models/image_encoder (OpenCLIP ViT-H/14) and facebook/dinov2-large
VIT_H = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16,
         "image_size": 224, "patch_size": 14, "projection_dim": 1024, "hidden_act": "gelu"}  # fmt: skip
DINOV2_L = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "mlp_ratio": 4,
            "image_size": 518, "patch_size": 14}  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float16", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--size", type=int, default=512, help="image size in pixels (default: 512)")
    parser.add_argument("--steps", type=int, default=30, help="denoising steps per generation (default: 30)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds, each running every setting once")
    parser.add_argument("--tiny", action="store_true", help="the tiny kit's shapes (a smoke test on a CPU)")
    parser.add_argument("--compile", action="store_true", help="also time FlexIP with torch.compile(unet)")
    return parser.parse_args(argv)


def build_models(tiny: bool) -> dict:
    """Random-weight parts: base components, the two image encoders with their processors."""
    torch.manual_seed(0)
    if tiny:
        base = build_tiny_base()
        clip, clip_processor, dino, dino_processor = build_tiny_image_encoders()
        parts = {name: base.components[name] for name in ("unet", "vae", "text_encoder", "tokenizer")}
        return {
            **parts,
            "clip": clip,
            "clip_processor": clip_processor,
            "dino": dino,
            "dino_processor": dino_processor,
        }
    tokenizer = byte_level_tokenizer()
    text = CLIPTextConfig(**CLIP_L_TEXT, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    crop = {"height": 224, "width": 224}
    return {
        "unet": UNet2DConditionModel(**SD15_UNET),
        "vae": AutoencoderKL(**SD15_VAE),
        "text_encoder": CLIPTextModel(text),
        "tokenizer": tokenizer,
        "clip": CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_H)),
        "clip_processor": CLIPImageProcessor(size={"shortest_edge": 224}, crop_size=crop),
        "dino": Dinov2Model(Dinov2Config(**DINOV2_L)),
        "dino_processor": BitImageProcessor(size={"shortest_edge": 256}, crop_size=crop,
                                            image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]),
    }  # fmt: skip


def pipelines(models: dict, device: torch.device, dtype: torch.dtype, tiny: bool) -> dict:
    """name -> a pipeline on `device`: `sd`, `ip-adapter-plus` and `flexip`, each with its own UNet copy."""
    parts = {
        "vae": models["vae"], "text_encoder": models["text_encoder"], "tokenizer": models["tokenizer"],
        "scheduler": DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False,
    }  # fmt: skip
    sd = StableDiffusionPipeline(unet=models["unet"], image_encoder=None, **parts)

    ip_unet = copy.deepcopy(models["unet"])
    processors, projection = ip_adapter_plus(ip_unet, "sd15")
    if tiny:  # the tiny image encoder's hidden states are narrower than ViT-H's
        config = {**IP_ADAPTER_PLUS["sd15"], "embed_dims": models["clip"].config.hidden_size,
                  "output_dims": ip_unet.config.cross_attention_dim, "hidden_dims": 64, "heads": 2}  # fmt: skip
        from diffusers.models.embeddings import IPAdapterPlusImageProjection, MultiIPAdapterImageProjection

        projection = MultiIPAdapterImageProjection([IPAdapterPlusImageProjection(**config)])
    ip_unet.set_attn_processor(processors)
    ip_unet.encoder_hid_proj = projection
    ip_unet.register_to_config(encoder_hid_dim_type="ip_image_proj")
    ip = StableDiffusionPipeline(
        unet=ip_unet, **{**parts, "feature_extractor": models["clip_processor"]}, image_encoder=models["clip"]
    )

    flexip_unet = copy.deepcopy(models["unet"])
    clip, dino = models["clip"], models["dino"]
    adapter = FlexIPAdapter.for_unet(flexip_unet, clip.config.projection_dim, dino.config.hidden_size)
    with torch.no_grad():  # a fresh adapter adds exact zeros: give the branches values, as a trained one has
        for layer in adapter.layers.values():
            for to_v in (layer.to_v_preservation, layer.to_v_personalization):
                to_v.weight.normal_(std=to_v.in_features**-0.5)
    flexip = FlexIPPipeline(unet=flexip_unet, image_encoder=None, **parts)
    encoder = ReferenceEncoder(clip, models["clip_processor"], dino, models["dino_processor"])
    adapter.eval().requires_grad_(False).attach(flexip_unet)
    flexip.flexip = FlexIPInjection(flexip_unet, adapter, encoder)
    built = {"sd": sd, "ip-adapter-plus": ip, "flexip": flexip}
    for pipe in built.values():
        pipe.to(device, dtype)
        pipe.set_progress_bar_config(disable=True)
    for module in (adapter, encoder, projection):
        module.to(device, dtype)
    return built


def settings(pipes: dict, args, reference: Image.Image) -> dict:
    """name -> a call making that setting's images."""
    common = {
        "height": args.size,
        "width": args.size,
        "num_inference_steps": args.steps,
        "output_type": "pil",
    }
    prompt = "a photo of a dog on the beach"
    flexip = pipes["flexip"]

    def seed():
        return torch.Generator().manual_seed(0)

    def sd():
        return pipes["sd"](prompt, generator=seed(), **common).images

    def ip_adapter(scales):
        images = []
        for scale in scales:
            pipes["ip-adapter-plus"].set_ip_adapter_scale(scale)
            images += pipes["ip-adapter-plus"](
                prompt, ip_adapter_image=reference, generator=seed(), **common
            ).images
        return images

    def flexip_call(values):
        flexip.flexip.reference_cache = ReferenceCache(
            flexip.flexip.reference_encoder
        )  # encode in every call
        return flexip(prompt, reference=reference, preservation=values, generator=seed(), **common).images

    return {
        "sd": sd,
        "ip-adapter-plus": lambda: ip_adapter([1.0]),
        "ip-adapter-x5": lambda: ip_adapter(VALUES),
        "flexip-1": lambda: flexip_call(0.5),
        "flexip-5": lambda: flexip_call(VALUES),
    }


def images_made(name: str) -> int:
    return 5 if name.endswith("5") else 1


def modules_of(pipe) -> list[torch.nn.Module]:
    """Every module whose weights a pipeline's call uses: its components, and FlexIP's adapter and encoders."""
    modules = [part for part in pipe.components.values() if isinstance(part, torch.nn.Module)]
    if isinstance(pipe, FlexIPPipeline):
        modules += [pipe.flexip.adapter, pipe.flexip.reference_encoder]
    return modules


def resident(pipe, every_pipe, device: torch.device) -> None:
    """Only `pipe`'s weights on `device` (none with `pipe` None), every other pipeline's on the CPU: the parts
    pipelines share (VAE, text encoder, image encoders) are moved with whichever pipeline holds the device."""
    for other in every_pipe:
        for module in modules_of(other):
            module.to("cpu")
    if pipe is not None:
        for module in modules_of(pipe):
            module.to(device)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def peak_bytes(call, cuda: bool) -> tuple[int, int]:
    """(bytes allocated before the call, peak bytes during it): on a GPU the CUDA allocator's, weights
    included; on a CPU (0, the peak bytes held by the tensors the call allocates: bench/measure.py)."""
    if not cuda:
        with PeakTensorBytes() as memory:
            call()
        return 0, memory.peak
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    call()
    torch.cuda.synchronize()
    return before, torch.cuda.max_memory_allocated()


def offload_checks(models: dict, args, reference: Image.Image, expected: np.ndarray) -> list[str]:
    """FlexIP under model and sequential CPU offload: the image against the plain path's, latency, peak."""
    lines = []
    for kind in (
        "model",
        "sequential",
    ):  # each on copies: offload hooks must not reach another pipeline's parts
        pipe = pipelines(copy.deepcopy(models), torch.device("cpu"), getattr(torch, args.dtype), args.tiny)[
            "flexip"
        ]
        getattr(pipe, f"enable_{kind}_cpu_offload")(device=args.device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()  # what the offload hooks placed: no other pipeline's weights
        start = time.perf_counter()
        image = pipe("a photo of a dog on the beach", reference=reference, preservation=0.5,
                     generator=torch.Generator().manual_seed(0), height=args.size, width=args.size,
                     num_inference_steps=args.steps, output_type="np").images  # fmt: skip
        torch.cuda.synchronize()
        seconds, peak = time.perf_counter() - start, torch.cuda.max_memory_allocated()
        difference = float(np.abs(image - expected).max())
        lines.append(
            f"| {kind} offload | {seconds:.2f} | {before / 2**20:.0f} | {peak / 2**20:.0f} | {difference:.2e} |"
        )
        del pipe
        torch.cuda.empty_cache()
    return lines


def main(argv=None) -> dict:
    args = parse_args(argv)
    device, dtype, cuda = (
        torch.device(args.device),
        getattr(torch, args.dtype),
        args.device.startswith("cuda"),
    )
    models = build_models(args.tiny)
    pipes = pipelines(models, device, dtype, args.tiny)
    reference = Image.fromarray(np.random.default_rng(0).integers(0, 256, (384, 320, 3), dtype=np.uint8))
    calls = settings(pipes, args, reference)
    if args.compile:  # a FlexIP pipeline of its own whose UNet compiles in place (module.compile: hooks stay)
        compiled = pipelines(models, device, dtype, args.tiny)["flexip"]
        compiled.unet.compile()
        start = time.perf_counter()
        compiled("a dog", reference=reference, preservation=0.5, height=args.size, width=args.size,
                 num_inference_steps=2, output_type="latent")  # fmt: skip
        print(f"torch.compile warm-up (FlexIP UNet, first call): {time.perf_counter() - start:.1f} s")
        calls["flexip-1-compiled"] = lambda: compiled(
            "a photo of a dog on the beach", reference=reference, preservation=0.5,
            generator=torch.Generator().manual_seed(0), height=args.size, width=args.size,
            num_inference_steps=args.steps,
        ).images  # fmt: skip
    owner = {"sd": pipes["sd"], "ip-adapter-plus": pipes["ip-adapter-plus"], "ip-adapter-x5": pipes["ip-adapter-plus"],
             "flexip-1": pipes["flexip"], "flexip-5": pipes["flexip"]}  # fmt: skip
    if args.compile:
        owner["flexip-1-compiled"] = compiled
    every_pipe = list({id(pipe): pipe for pipe in owner.values()}.values())
    peaks = {}
    for setting, call in calls.items():  # also the warm-up
        if cuda:
            resident(owner[setting], every_pipe, device)
        peaks[setting] = peak_bytes(call, cuda)
    for pipe in every_pipe:  # timed together: a load change slows every setting alike
        for module in modules_of(pipe):
            module.to(device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times = interleaved_times(calls, args.rounds, sync)

    name = torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine())
    print(f"# {'tiny kit' if args.tiny else 'SD1.5'} pipelines, {args.size} px, {args.steps} steps, guidance on, "
          f"{args.device} ({name}) {args.dtype}, {args.rounds} rounds, torch {torch.__version__}, "
          f"{datetime.date.today()}")  # fmt: skip
    memory = (
        "weights MiB | peak MiB (allocator, this setting's weights alone)"
        if cuda
        else "peak MiB (tensors allocated)"
    )
    print(
        f"| setting | images | median s | images/s | time / sd [{interval_name(args.rounds)}] | verdict | {memory} |"
    )
    print("|---|---|---|---|---|---|---|" + ("---|" if cuda else ""))
    results = {}
    for setting, seconds in times.items():
        median = statistics.median(seconds)
        weights, peak = peaks[setting]
        row = {"seconds": seconds, "median_s": median, "images_per_s": images_made(setting) / median,
               "resident_bytes": weights, "peak_bytes": peak}  # fmt: skip
        cells = "1 | |"
        if setting != "sd":
            ratio, low, high = paired_ratio(seconds, times["sd"])
            row.update(ratio=ratio, low=low, high=high)
            cells = f"{ratio:.3f} [{low:.3f}, {high:.3f}] | {verdict(low, high, args.rounds)} |"
        mib = (f"{weights / 2**20:.0f} | " if cuda else "") + f"{peak / 2**20:.0f}"
        print(
            f"| {setting} | {images_made(setting)} | {median:.3f} | {row['images_per_s']:.2f} | {cells} {mib} |"
        )
        results[setting] = row
    if cuda:
        expected = pipes["flexip"]("a photo of a dog on the beach", reference=reference, preservation=0.5,
                                   generator=torch.Generator().manual_seed(0), height=args.size, width=args.size,
                                   num_inference_steps=args.steps, output_type="np").images  # fmt: skip
        resident(None, every_pipe, device)  # the offload checks start from an empty GPU
        print(
            "| FlexIP, one value | s | MiB on the GPU before | peak MiB | max abs difference to the plain path |"
        )
        print("|---|---|---|---|---|")
        for line in offload_checks(models, args, reference, expected):
            print(line)
    else:
        print("offload: needs an accelerator (enable_model_cpu_offload moves models to it); skipped on a CPU")
    return results


if __name__ == "__main__":
    main()
