"""FLUX.1 training at the real architecture, as far as a CPU can: the memory plan's parameter counts, the feature
cache's saving per sample, and a training step's time and activations measured on real-width blocks.

    python -m bench.flux_train_step                    # 256 px, batch 1: a few minutes on one CPU thread

FLUX.1-dev's 12B transformer does not fit a 24 GB machine, so:

  counts       every frozen model and the adapter at configs/train/flux.yaml's sizes, built on the meta device
               (no memory, nothing downloaded): parameters, and the bytes each takes in the recipe's precisions
  cache        what a feature-cache sample holds at the recipe's resolution (the shapes `flexip prep cache`
               writes, float16) and the FLOPs of the encoders it spares each step (counted on the meta device)
  step         `FlexIPTrainingModel`'s forward and backward (flow matching, the adapter attached, the loss's
               gradient reaching the adapter only) on FLUX.1's transformer at its real width with 1 or 2
               double-stream and 1 or 2 single-stream blocks, random weights, float32, at --resolution with
               512 T5 tokens. Timed (median of --repeats after a warm-up), and the bytes autograd keeps for the
               backward pass counted exactly (saved-tensor hooks). One double-stream and one single-stream
               block's share is the difference between the builds; the 19 + 38 block model is EXTRAPOLATED from
               them, linearly in the blocks.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import resource
import statistics
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from torch.utils import flop_counter
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    Dinov2Config,
    Dinov2Model,
    T5Config,
    T5EncoderModel,
)

from bench.flux_cost import FLUX1_DEV, T5_TOKENS
from bench.step_cost import CLIP_EMBED_DIM, DINO_TOKENS
from flexip import FlexIPAdapter
from flexip.models.config import MODALITIES
from flexip.training.config import load_config
from flexip.training.objective import EncodedBatch, FlexIPTrainingModel

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "train" / "flux.yaml"
GB = 1e9
CLIP_TEXT_TOKENS = 77
LATENT_CHANNELS = 16  # FLUX.1's VAE
IMAGE_PX = 224  # the reference encoders' input


def frozen_models() -> dict[str, torch.nn.Module]:
    """FLUX.1-dev's parts and the recipe's reference encoders, on the meta device (their public configs)."""
    return {
        "FLUX.1 transformer": FluxTransformer2DModel(**FLUX1_DEV),
        "T5-XXL encoder": T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                                                  num_heads=64, feed_forward_proj="gated-gelu")),
        "CLIP ViT-H/14 image": CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, patch_size=14,
            image_size=IMAGE_PX, projection_dim=CLIP_EMBED_DIM, hidden_act="gelu")),
        "DINOv2-L": Dinov2Model(Dinov2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                             patch_size=14, image_size=518)),
        "CLIP-L text": CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                    num_attention_heads=12, projection_dim=768)),
        "VAE": AutoencoderKL(latent_channels=LATENT_CHANNELS, block_out_channels=(128, 256, 512, 512),
                             down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                             layers_per_block=2, use_quant_conv=False, use_post_quant_conv=False),
    }  # fmt: skip


def recipe_adapter(transformer: torch.nn.Module) -> FlexIPAdapter:
    model = load_config(RECIPE).model
    return FlexIPAdapter.for_unet(
        transformer, CLIP_EMBED_DIM, DINO_TOKENS[1], preservation=dataclasses.asdict(model.preservation),
        personalization=dataclasses.asdict(model.personalization), gate=dataclasses.asdict(model.gate),
    )  # fmt: skip


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def flops(call) -> int:
    with flop_counter.FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops()


def counts() -> dict:
    with torch.device("meta"):
        models = frozen_models()
        adapter = recipe_adapter(models["FLUX.1 transformer"])
    frozen = {name: parameters(model) for name, model in models.items()}
    branches = sum(parameters(layer) for layer in adapter.layers.values())
    return {"frozen": frozen, "adapter": parameters(adapter), "adapter_branches": branches, "models": models}


def cache_saving(models: dict, resolution: int) -> dict:
    """A cache sample's bytes (float16; the pooled text float32, as `feature_cache` stores them) and the FLOPs
    of the encoders it spares, per sample."""
    grid = resolution // 8
    stored = {
        "moments (VAE mean, log-variance)": 2 * LATENT_CHANNELS * grid * grid * 2,
        "embeds (T5 tokens)": T5_TOKENS * 4096 * 2,
        "added.pooled_projections (CLIP text)": 768 * 4,
        "clip_embeds": CLIP_EMBED_DIM * 2,
        "dino_tokens": DINO_TOKENS[0] * DINO_TOKENS[1] * 2,
        "subject (image pairs)": grid * grid * 2,
    }
    with torch.device("meta"):
        ids = torch.zeros(1, T5_TOKENS, dtype=torch.long)
        spared = {
            "T5-XXL encoder (512 tokens)": flops(lambda: models["T5-XXL encoder"](ids)),
            "CLIP-L text (77 tokens)": flops(lambda: models["CLIP-L text"](ids[:, :CLIP_TEXT_TOKENS])),
            f"VAE encoder ({resolution} px)": flops(lambda: models["VAE"].encode(torch.zeros(1, 3, resolution, resolution))),
            "CLIP ViT-H/14 (224 px)": flops(lambda: models["CLIP ViT-H/14 image"](torch.zeros(1, 3, IMAGE_PX, IMAGE_PX))),
            "DINOv2-L (224 px)": flops(lambda: models["DINOv2-L"](torch.zeros(1, 3, IMAGE_PX, IMAGE_PX))),
        }  # fmt: skip
        tokens = (resolution // 16) ** 2
        transformer = models["FLUX.1 transformer"]
        forward = flops(lambda: transformer(
            hidden_states=torch.zeros(1, tokens, 64), encoder_hidden_states=torch.zeros(1, T5_TOKENS, 4096),
            pooled_projections=torch.zeros(1, 768), timestep=torch.zeros(1), guidance=torch.zeros(1),
            img_ids=torch.zeros(tokens, 3), txt_ids=torch.zeros(T5_TOKENS, 3),
        ))  # fmt: skip
    return {"bytes": stored, "flops": spared, "transformer_forward": forward}


def encoded_batch(batch: int, resolution: int) -> EncodedBatch:
    grid = resolution // 8
    return EncodedBatch(
        latents=torch.randn(batch, LATENT_CHANNELS, grid, grid), text_embeds=torch.randn(batch, T5_TOKENS, 4096),
        added={"pooled_projections": torch.randn(batch, 768)}, clip_embeds=torch.randn(batch, CLIP_EMBED_DIM),
        dino_tokens=torch.randn(batch, *DINO_TOKENS), modality=torch.arange(batch) % len(MODALITIES),
        drop_image=torch.zeros(batch, dtype=torch.bool),
    )  # fmt: skip


def step(double: int, single: int, resolution: int, batch: int, repeats: int) -> dict:
    """One training step's seconds (median) and the bytes autograd saves for backward, on a FLUX.1 of real
    width with `double` + `single` blocks."""
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(**{**FLUX1_DEV, "num_layers": double, "num_single_layers": single})
    transformer.requires_grad_(False)
    adapter = recipe_adapter(transformer)
    config = load_config(RECIPE)
    model = FlexIPTrainingModel(
        transformer, adapter, FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True), config
    ).train()  # fmt: skip
    encoded, generator = encoded_batch(batch, resolution), torch.Generator()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}  # frozen and trained: not activations
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    def run() -> None:
        generator.manual_seed(0)
        loss, _ = model(encoded, generator)
        loss.backward()
        adapter.zero_grad(set_to_none=True)

    run()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return {"seconds": statistics.median(times), "saved_bytes": sum(saved.values())}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=256, help="image size of the step (default 256)")
    parser.add_argument("--cache-resolution", type=int, default=512, help="the recipe's size, for the cache")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per build after a warm-up")
    parser.add_argument("--skip-step", action="store_true", help="counts and cache only")
    args = parser.parse_args(argv)
    print(f"# FLUX.1 training cost, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}\n")  # fmt: skip

    counted = counts()
    print("## parameters (meta device)\n\n| model | parameters | bf16 GB |\n|---|---|---|")
    for name, count in counted["frozen"].items():
        print(f"| {name} | {count / 1e9:.3f} B | {count * 2 / GB:.2f} |")
    print(f"| frozen, total | {sum(counted['frozen'].values()) / 1e9:.2f} B | {sum(counted['frozen'].values()) * 2 / GB:.1f} |")
    adapter = counted["adapter"]
    print(f"\nadapter (configs/train/flux.yaml): {adapter / 1e9:.3f} B parameters, {counted['adapter_branches'] / 1e9:.3f} B "
          f"of them the branch K/V; fp32 weights {adapter * 4 / GB:.1f} GB, gradients {adapter * 4 / GB:.1f} GB, "
          f"AdamW moments {adapter * 8 / GB:.1f} GB: {adapter * 16 / GB:.1f} GB whole, {adapter * 2 / GB:.1f} GB "
          "per GPU sharded 8 ways")  # fmt: skip

    saving = cache_saving(counted["models"], args.cache_resolution)
    total = sum(saving["bytes"].values())
    print(f"\n## feature cache, one sample at {args.cache_resolution} px (one variant)\n\n| tensor | KiB |\n|---|---|")
    for name, size in saving["bytes"].items():
        print(f"| {name} | {size / 1024:.1f} |")
    print(f"| total | {total / 1024:.1f} ({total / 2**20:.2f} MiB; {total * 1e6 / 1e12:.2f} TB a million samples) |")
    print("\n| encoder a cache spares | TFLOPs a sample |\n|---|---|")
    for name, count in saving["flops"].items():
        print(f"| {name} | {count / 1e12:.3f} |")
    spared = sum(saving["flops"].values())
    forward = saving["transformer_forward"]
    print(f"| total | {spared / 1e12:.2f} |\n\ntransformer forward a sample at {args.cache_resolution} px: "
          f"{forward / 1e12:.1f} TFLOPs; a checkpointed step (forward, recomputed forward, backward to the "
          f"activations) about 3x: {3 * forward / 1e12:.0f} TFLOPs, of which the encoders are "
          f"{spared / (3 * forward) * 100:.1f}%")  # fmt: skip

    results = {"counts": counted, "cache": saving}
    if args.skip_step:
        return results
    builds = {}
    for double, single in ((1, 1), (2, 1), (1, 2)):
        builds[double, single] = step(double, single, args.resolution, args.batch_size, args.repeats)
        print(f"built {double} double + {single} single: {builds[double, single]}", flush=True)
    base = builds[1, 1]
    per_double = {k: builds[2, 1][k] - base[k] for k in base}
    per_single = {k: builds[1, 2][k] - base[k] for k in base}
    full = {k: base[k] + (FLUX1_DEV["num_layers"] - 1) * per_double[k] + (FLUX1_DEV["num_single_layers"] - 1)
            * per_single[k] for k in base}  # fmt: skip
    tokens = (args.resolution // 16) ** 2 + T5_TOKENS
    print(f"\n## training step at the real width, {args.resolution} px ({tokens} tokens), batch {args.batch_size}, "
          "float32, CPU\n\n| | seconds | activations kept for backward, GB |\n|---|---|---|")  # fmt: skip
    print(f"| 1 double + 1 single block, measured | {base['seconds']:.2f} | {base['saved_bytes'] / GB:.2f} |")
    print(f"| one double-stream block (2+1 minus 1+1) | {per_double['seconds']:.2f} | {per_double['saved_bytes'] / GB:.3f} |")
    print(f"| one single-stream block (1+2 minus 1+1) | {per_single['seconds']:.2f} | {per_single['saved_bytes'] / GB:.3f} |")
    print(f"| 19 + 38 blocks, EXTRAPOLATED | {full['seconds']:.0f} | {full['saved_bytes'] / GB:.1f} |")
    width = FLUX1_DEV["num_attention_heads"] * FLUX1_DEV["attention_head_dim"]
    print(f"\nper block and token, in values of the width ({width}), float32: double {per_double['saved_bytes'] / 4 / (tokens * width * args.batch_size):.1f}, "
          f"single {per_single['saved_bytes'] / 4 / (tokens * width * args.batch_size):.1f} (the trainer's estimate, "
          f"`FluxDoubleStream.activation_values`, takes 12); peak resident memory of this process "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.1f} GB")  # fmt: skip
    results["step"] = {"builds": builds, "per_double": per_double, "per_single": per_single, "extrapolated": full}
    return results


if __name__ == "__main__":
    main()
