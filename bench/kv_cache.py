"""Time one generation with the per-generation branch K/V cache and without it, side by side.

    python bench/kv_cache.py                                  # the tiny random model set, on CPU
    python bench/kv_cache.py --base stable-diffusion-v1-5/stable-diffusion-v1-5 --adapter path/to/flexip --device cuda

With the cache, each cross-attention layer projects P and S to keys/values once per generation instead of once
per denoising step (docs/design.md, "Pipeline"). The two settings alternate, repeat after repeat, so that a
machine whose load changes during the run slows both alike; the median of each is reported.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from PIL import Image

from flexip import FlexIPPipeline
from flexip.tiny import save_tiny_model_set


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", help="Stable Diffusion base (default: the tiny model set)")
    parser.add_argument("--adapter", help="FlexIP adapter directory (default: the tiny model set's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                        help="default: float16 on CUDA, float32 otherwise")  # fmt: skip
    parser.add_argument("--steps", type=int, default=30, help="denoising steps per generation (default: 30)")
    parser.add_argument("--values", type=int, default=5, help="preservation values in the batch (default: 5)")
    parser.add_argument("--repeats", type=int, default=5, help="timed generations per setting (default: 5)")
    parser.add_argument(
        "--size", type=int, default=None, help="image size in pixels (default: the base model's)"
    )
    return parser.parse_args(argv)


def timed_generation(pipe, reference, args, cache_kv: bool) -> float:
    pipe.flexip.cache_kv = cache_kv
    values = [index / max(1, args.values - 1) for index in range(args.values)]
    if pipe.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    pipe("a photo of a dog", reference=reference, preservation=values, num_inference_steps=args.steps,
         height=args.size, width=args.size, generator=torch.Generator().manual_seed(0), output_type="latent")  # fmt: skip
    if pipe.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None) -> dict:
    args = parse_args(argv)
    dtype = getattr(torch, args.dtype or ("float16" if args.device.startswith("cuda") else "float32"))
    with tempfile.TemporaryDirectory() as tmp:
        if args.base is None or args.adapter is None:
            tiny = save_tiny_model_set(tmp)
            args.base, args.adapter = args.base or str(tiny.base), args.adapter or str(tiny.adapter)
        pipe = FlexIPPipeline.from_pretrained(base=args.base, adapter=args.adapter, torch_dtype=dtype).to(
            args.device
        )
    pipe.set_progress_bar_config(disable=True)
    reference = pipe.flexip.encode_reference(Image.new("RGB", (64, 64), (200, 60, 40)))

    times = {True: [], False: []}
    for cache_kv in (True, False):  # warm-up: first calls pay for kernel selection and allocation
        timed_generation(pipe, reference, args, cache_kv)
    for _ in range(args.repeats):
        for cache_kv in (True, False):
            times[cache_kv].append(timed_generation(pipe, reference, args, cache_kv))
    cached, uncached = statistics.median(times[True]), statistics.median(times[False])
    print(f"base {args.base}, {args.device} {dtype}, {args.values} preservation values x {args.steps} steps, "
          f"median of {args.repeats}")  # fmt: skip
    print(f"  K/V cache on : {cached:8.3f} s per generation")
    print(f"  K/V cache off: {uncached:8.3f} s per generation")
    print(f"  off / on     : {uncached / cached:8.3f}x")
    return {"cached_s": cached, "uncached_s": uncached, "ratio": uncached / cached}


if __name__ == "__main__":
    main()
