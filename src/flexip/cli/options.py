"""The model and sampling options every generating command takes, added to a parser and read into the
library's typed settings (`flexip.settings.generation`), each value checked under its flag's name, before
torch is imported."""

from __future__ import annotations

import argparse

from ..errors import FlexIPError
from ..families.names import DEFAULT_GUIDANCE
from ..schedulers import SCHEDULERS
from ..settings.dial import SCALE
from ..settings.dial_text import parse_dials
from ..settings.generation import ModelSettings, SamplingSettings
from ..settings.numbers import DTYPES
from .dial import adapter_config


def add_overwrite_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--overwrite", action="store_true", help=f"replace {what} (without it, existing files are refused)"
    )


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The sampling and model options every generating command takes."""
    parser.add_argument("--negative-prompt", default=None, help="what to steer away from (default: none)")
    parser.add_argument(
        "--scale", default="1.0",
        help="adapter strength s >= 0, or per block (down=0,mid=0,up=1); 0 is the base model (default: 1)",
    )  # fmt: skip
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed; the same seed gives the same image (default: 0)"
    )
    parser.add_argument("--steps", type=int, default=50, help="denoising steps (default: 50)")
    parser.add_argument(
        "--guidance", default=None,
        help="classifier-free guidance scale; <= 1 turns it off (default: 7.5; on FLUX.1 3.5, its guidance "
        "embedding's, as FluxPipeline's)",
    )  # fmt: skip
    parser.add_argument(
        "--scheduler", default="ddim", choices=sorted(SCHEDULERS), help="sampler (default: ddim)"
    )
    add_loading_options(parser)


def add_loading_options(parser: argparse.ArgumentParser) -> None:
    """Which model to load and where: what `flexip serve` takes too (its page sets the rest per request)."""
    parser.add_argument(
        "--base", default=None,
        help="Stable Diffusion 1.5, SDXL or FLUX.1 base: hub id, diffusers directory, or one .safetensors "
        "checkpoint file of a fine-tune (default: the base the adapter records)",
    )  # fmt: skip
    parser.add_argument(
        "--base-config", default=None,
        help="for a checkpoint-file --base: a diffusers directory (or hub id) of its family to take the components' "
        "configs from, e.g. a local copy of stable-diffusion-v1-5 (needed offline unless they are in the cache)",
    )  # fmt: skip
    parser.add_argument(
        "--adapter", default=None, help="FlexIP adapter directory (default: the embedded model)"
    )
    parser.add_argument(
        "--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)"
    )
    parser.add_argument(
        "--dtype", default=None, choices=DTYPES,
        help="weights' precision (default: float16 on CUDA, bfloat16 for FLUX.1; float32 otherwise)",
    )  # fmt: skip


def model_settings(args: argparse.Namespace) -> ModelSettings:
    """The loading options as `ModelSettings` (the device is checked once torch is imported)."""
    return ModelSettings(adapter=args.adapter, base=args.base, base_config=args.base_config, device=args.device,
                         dtype=args.dtype, scheduler=getattr(args, "scheduler", "ddim"),
                         motion_adapter=getattr(args, "motion_adapter", None), prefix="--")  # fmt: skip


def sampling_settings(args: argparse.Namespace, frames: int | None = None) -> SamplingSettings:
    """The sampling options as `SamplingSettings`, each value checked under its flag's name; `frames` for a
    clip (`clips.read_clip`)."""
    scales = parse_dials(args.scale, "--scale", SCALE)
    if len(scales) != 1:
        raise FlexIPError(f"--scale {args.scale}: give one number, or per block (down=1,mid=1,up=0.5)")
    guidance = args.guidance
    if guidance is None:
        config = adapter_config(args.adapter)
        guidance = DEFAULT_GUIDANCE["sd15" if config is None else config.base_family]
    return SamplingSettings(steps=args.steps, guidance=guidance, scale=scales[0], seed=args.seed,
                            negative_prompt=args.negative_prompt, frames=frames, prefix="--")  # fmt: skip
