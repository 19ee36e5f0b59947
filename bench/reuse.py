"""What FlexIP's reuse saves in a whole generation: the branch K/V cache, a sweep as one batch, the reference cache.

    python -m bench.reuse                         # the tiny random model set, on CPU
    python -m bench.reuse --base stable-diffusion-v1-5/stable-diffusion-v1-5 --adapter path/to/flexip --device cuda

Three pairs, each timed interleaved with the others (bench/measure.py), each ratio with its 95% interval
(the smallest and largest ratio below 5 rounds):

  kv-off / kv-on          one sweep of 5 values, branch K/V projected every step / once per generation
  5-calls / sweep-of-5    five calls of one value each / one call with the five values (one batch sharing
                          the prompt's and the reference's encodings)
  first / second          a call with a reference never seen / the same picture again (`ReferenceCache`)

Beside the times, what each setting runs, counted with forward hooks: encoder passes, text encoder passes
and UNet calls.
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch
from PIL import Image

from bench.measure import interleaved_times, interval_name, paired_ratio, verdict
from flexip import FlexIPPipeline
from flexip.references.cache import ReferenceCache
from flexip.tiny import save_tiny_model_set

VALUES = [0.0, 0.25, 0.5, 0.75, 1.0]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", help="Stable Diffusion base (default: the tiny model set)")
    parser.add_argument("--adapter", help="FlexIP adapter directory (default: the tiny model set's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--steps", type=int, default=20, help="denoising steps per generation (default: 20)")
    parser.add_argument(
        "--rounds", type=int, default=10, help="timed rounds, each running every setting once"
    )
    return parser.parse_args(argv)


def settings(pipe, steps: int) -> dict:
    """name -> a call; `first` sees a reference new to the pipeline's reference cache, `second` a cached one."""
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8))
    injection = pipe.flexip

    def generate(preservation, kv_cache=True):
        injection._cache_kv = kv_cache
        pipe("a photo of a dog", reference=picture, preservation=preservation, num_inference_steps=steps,
             generator=torch.Generator().manual_seed(0), output_type="latent")  # fmt: skip
        injection._cache_kv = True

    def first():
        injection.reference_cache = ReferenceCache(injection.reference_encoder)
        generate(0.5)

    return {
        "kv-on": lambda: generate(VALUES),
        "kv-off": lambda: generate(VALUES, kv_cache=False),
        "sweep-of-5": lambda: generate(VALUES),
        "5-calls": lambda: [generate(value) for value in VALUES],
        "first": first,
        "second": lambda: generate(0.5),
    }


def runs(pipe, call) -> dict[str, int]:
    """Forward passes of the encoders, the text encoder and the UNet during `call()`."""
    modules = {"encoders": pipe.flexip.reference_encoder.clip_model, "text encoder": pipe.text_encoder,
               "UNet": pipe.unet}  # fmt: skip
    seen = {name: 0 for name in modules}
    hooks = [
        module.register_forward_hook(lambda *_, name=name: seen.__setitem__(name, seen[name] + 1))
        for name, module in modules.items()
    ]
    try:
        call()
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def main(argv=None) -> dict:
    args = parse_args(argv)
    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        if args.base is None or args.adapter is None:
            tiny = save_tiny_model_set(tmp)
            args.base, args.adapter = args.base or str(tiny.base), args.adapter or str(tiny.adapter)
        pipe = FlexIPPipeline.from_pretrained(base=args.base, adapter=args.adapter, torch_dtype=dtype)
    pipe = pipe.to(args.device)
    pipe.set_progress_bar_config(disable=True)
    calls = settings(pipe, args.steps)
    for call in calls.values():  # warm-up; the reference is in the cache from here on
        call()
    counted = {name: runs(pipe, call) for name, call in calls.items()}
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    times = interleaved_times(calls, args.rounds, sync)

    print(f"# {args.base}, {args.device} {args.dtype}, {args.steps} steps, guidance on, {args.rounds} rounds, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    print(
        f"| pair | median s | ratio [{interval_name(args.rounds)}] | verdict | encoder passes | text encoder passes "
        "| UNet calls |"
    )
    print("|---|---|---|---|---|---|---|")
    results = {}
    for slow, fast in (("kv-off", "kv-on"), ("5-calls", "sweep-of-5"), ("first", "second")):
        ratio, low, high = paired_ratio(times[slow], times[fast])
        medians = [float(np.median(times[name])) for name in (slow, fast)]
        cells = [f"{counted[slow][k]} / {counted[fast][k]}" for k in ("encoders", "text encoder", "UNet")]
        print(f"| {slow} / {fast} | {medians[0]:.3f} / {medians[1]:.3f} | {ratio:.3f} [{low:.3f}, {high:.3f}] | "
              f"{verdict(low, high, args.rounds)} | " + " | ".join(cells) + " |")  # fmt: skip
        results[f"{slow}/{fast}"] = (ratio, low, high)
    return results


if __name__ == "__main__":
    main()
