"""A clip side by side: plain AnimateDiff, AnimateDiff with diffusers' IP-Adapter, and FlexIP (one value, and
a dial over the frames), with latency and peak memory, on the tiny kit.

    python -m bench.video_cost                                  # 16 frames, 32 px, 4 steps, 7 rounds, CPU
    python -m bench.video_cost --frames 4 --steps 2 --rounds 2  # a smoke run

The tiny kit's SD1.5 base and motion adapter (`flexip tiny-models`), random weights, each setting with its
own `UNetMotionModel` made from them by `AnimateDiffPipeline.from_pipe`. Settings, each one call making one
clip of `--frames` frames from one reference, with guidance:

  animatediff     diffusers' AnimateDiffPipeline, no reference
  ip-adapter-plus diffusers' IP-Adapter Plus in the same pipeline, as `_load_ip_adapter_weights` builds it
                  (`bench/step_cost.py`, at the tiny image encoder's width): one image embedding, repeated for
                  every frame by the UNet; its image encoder runs in the call
  flexip          FlexIP (`load_flexip`), preservation 0.5; the reference encoded in the call (no cache)
  flexip-frames   FlexIP with `DialSchedule(0.9, 0.1, over="frames")`: every frame its own value

Times are interleaved rounds; each ratio to `animatediff` is the median of per-round ratios with a bootstrap
95% interval (the smallest and largest ratio below 5 rounds: bench/measure.py). Peak memory is the CUDA
allocator's peak during one call on a GPU, weights included; on a CPU, the peak of the tensors the call
allocates, weights not included. The tiny kit's widths make every part of a call cost about the same, so the
ratios say what FlexIP's per-clip work (encoders, P and S, branch K/V) and per-frame work (two more attentions
per joined layer) weigh at this scale, not at SD1.5's.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import tempfile

import numpy as np
import torch
from diffusers import AnimateDiffPipeline, MotionAdapter, StableDiffusionPipeline
from diffusers.models.embeddings import IPAdapterPlusImageProjection, MultiIPAdapterImageProjection
from PIL import Image
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from bench.measure import interleaved_times, interval_name, paired_ratio, verdict
from bench.pipeline_cost import peak_bytes
from bench.step_cost import IP_ADAPTER_PLUS, ip_adapter_plus
from flexip import DialSchedule, load_flexip
from flexip.references.cache import ReferenceCache
from flexip.tiny import save_tiny_model_set


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip (default: 16)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per clip (default: 4)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds, each running every setting once")
    return parser.parse_args(argv)


def pipelines(root: str, device: torch.device) -> dict:
    """name -> an AnimateDiffPipeline on the tiny kit written under `root`, each with its own motion UNet."""
    models = save_tiny_model_set(root)
    base = StableDiffusionPipeline.from_pretrained(models.base)
    motion = MotionAdapter.from_pretrained(models.motion_adapter)

    def animatediff(**parts):
        pipe = AnimateDiffPipeline.from_pipe(base, motion_adapter=motion, **parts)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    plain = animatediff()
    clip = CLIPVisionModelWithProjection.from_pretrained(models.image_encoder)
    ip = animatediff(image_encoder=clip, feature_extractor=CLIPImageProcessor.from_pretrained(models.image_encoder))
    processors, _ = ip_adapter_plus(ip.unet, "sd15")
    config = {**IP_ADAPTER_PLUS["sd15"], "embed_dims": clip.config.hidden_size,
              "output_dims": ip.unet.config.cross_attention_dim, "hidden_dims": 64, "heads": 2}  # fmt: skip
    ip.unet.set_attn_processor(processors)
    ip.unet.encoder_hid_proj = MultiIPAdapterImageProjection([IPAdapterPlusImageProjection(**config)])
    ip.unet.register_to_config(encoder_hid_dim_type="ip_image_proj")
    flexip = load_flexip(animatediff(), models.adapter)
    built = {"animatediff": plain, "ip-adapter-plus": ip, "flexip": flexip}
    for pipe in built.values():
        pipe.to(device)
    return built


def settings(pipes: dict, args, reference: Image.Image) -> dict:
    """name -> a call making that setting's clip."""
    common = {"num_frames": args.frames, "num_inference_steps": args.steps, "output_type": "pil"}
    prompt = "a dog running on the beach"

    def seed():
        return torch.Generator().manual_seed(0)

    def flexip(preservation):
        injection = pipes["flexip"].flexip
        injection.reference_cache = ReferenceCache(injection.reference_encoder)  # encode in every call
        return pipes["flexip"](prompt, reference=reference, preservation=preservation, generator=seed(),
                               **common).frames  # fmt: skip

    return {
        "animatediff": lambda: pipes["animatediff"](prompt, generator=seed(), **common).frames,
        "ip-adapter-plus": lambda: pipes["ip-adapter-plus"](
            prompt, ip_adapter_image=reference, generator=seed(), **common
        ).frames,
        "flexip": lambda: flexip(0.5),
        "flexip-frames": lambda: flexip(DialSchedule(0.9, 0.1, over="frames")),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    device, cuda = torch.device(args.device), args.device.startswith("cuda")
    reference = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8))
    with tempfile.TemporaryDirectory() as root:
        pipes = pipelines(root, device)
        calls = settings(pipes, args, reference)
        peaks = {setting: peak_bytes(call, cuda) for setting, call in calls.items()}  # also the warm-up
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        times = interleaved_times(calls, args.rounds, sync)

    name = torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine())
    print(f"# tiny kit AnimateDiff, {args.frames} frames, 32 px, {args.steps} steps, guidance on, {args.device} "
          f"({name}), {torch.get_num_threads()} threads, {args.rounds} rounds, torch {torch.__version__}, "
          f"{datetime.date.today()}")  # fmt: skip
    memory = "peak MiB (allocator, weights included)" if cuda else "peak MiB (tensors allocated)"
    print(f"| setting | median s | time / animatediff [{interval_name(args.rounds)}] | verdict | {memory} |")
    print("|---|---|---|---|---|")
    results = {}
    for setting, seconds in times.items():
        median = statistics.median(seconds)
        row = {"seconds": seconds, "median_s": median, "peak_bytes": peaks[setting][1]}
        cells = "1 | |"
        if setting != "animatediff":
            ratio, low, high = paired_ratio(seconds, times["animatediff"])
            row.update(ratio=ratio, low=low, high=high)
            cells = f"{ratio:.3f} [{low:.3f}, {high:.3f}] | {verdict(low, high, args.rounds)} |"
        print(f"| {setting} | {median:.3f} | {cells} {row['peak_bytes'] / 2**20:.1f} |")
        results[setting] = row
    return results


if __name__ == "__main__":
    main()
