"""`flexip generate`: one image of a reference's subject following a prompt, at one preservation value.

Also the options that `flexip sweep` and `flexip demo` share, and their translation into the typed settings
of `flexip.pipeline.settings` (nothing below `flexip.cli` sees argparse).
"""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """\
examples:
  flexip generate --reference dog.jpg --prompt "a dog on the beach" --preservation 0.7 --out dog_beach.png
  flexip generate --reference dog.jpg --prompt "a dog, oil painting" --preservation 0.3 --out dog_oil.png \\
      --base stable-diffusion-v1-5/stable-diffusion-v1-5 --adapter path/to/flexip --scheduler dpm++ --steps 25

preservation: 1 keeps the subject's identity and fine detail, 0 lets the prompt restyle it freely.
Without --adapter the embedded default model is used. For several values, use `flexip sweep`."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate one image of the reference's subject following a prompt",
        description="Generate an image of the subject in --reference, following --prompt, with the "
        "preservation dial set to one value.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_subject_options(parser)
    parser.add_argument("--preservation", default="0.5", help="the dial g in [0, 1] (default: 0.5)")
    parser.add_argument("--out", required=True, help="image file to write (.png, .jpg or .webp)")
    add_overwrite_option(parser, "an existing --out file")
    add_model_options(parser)
    parser.set_defaults(run=run)


def add_subject_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference", required=True, help="image of the subject (PNG, JPEG, WebP, ...)")
    parser.add_argument("--prompt", required=True, help='what to generate, e.g. "a dog on the beach"')


def add_overwrite_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--overwrite", action="store_true", help=f"replace {what} (without it, existing files are refused)"
    )


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The sampling and model options every generating command takes."""
    from ..schedulers import SCHEDULERS

    parser.add_argument("--negative-prompt", default=None, help="what to steer away from (default: none)")
    parser.add_argument(
        "--scale", default="1.0", help="adapter strength s >= 0; 0 is the base model (default: 1)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed; the same seed gives the same image (default: 0)"
    )
    parser.add_argument("--steps", type=int, default=50, help="denoising steps (default: 50)")
    parser.add_argument(
        "--guidance", default="7.5", help="classifier-free guidance scale; <= 1 turns it off (default: 7.5)"
    )
    parser.add_argument(
        "--scheduler", default="ddim", choices=sorted(SCHEDULERS), help="sampler (default: ddim)"
    )
    add_loading_options(parser)


def add_loading_options(parser: argparse.ArgumentParser) -> None:
    """Which model to load and where: what `flexip serve` takes too (its page sets the rest per request)."""
    parser.add_argument(
        "--base", default=None,
        help="Stable Diffusion 1.5 or SDXL base: hub id, diffusers directory, or one .safetensors checkpoint file "
        "of a fine-tune (default: the base the adapter records)",
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
        "--dtype", default=None, choices=["float32", "float16", "bfloat16"],
        help="weights' precision (default: float16 on CUDA, float32 otherwise)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from ..errors import FlexIPError
    from ..pipeline.checks import check_preservation
    from ..pipeline.images import load_reference_image
    from ..pipeline.output import save_image
    from ..pipeline.settings import generate, record

    values = check_preservation(args.preservation.split(","), name="--preservation")
    if len(values) != 1:
        raise FlexIPError(
            f"--preservation {args.preservation}: generate makes one image at one value; for several values "
            f"use `flexip sweep --preservation {args.preservation} --out DIR`"
        )
    models, sampling = model_settings(args), sampling_settings(args)
    out = check_output(args.out, args.reference, args.overwrite)
    reference = load_reference_image(args.reference)
    loaded = load_models(models, sampling)
    image = generate(loaded, args.prompt, reference, values, sampling)[0]
    save_image(image, out, {**record(args.prompt, str(args.reference), models, sampling, loaded), "preservation": values[0]})
    print(f"wrote {out}")
    return 0


def model_settings(args: argparse.Namespace):
    """The model options as `ModelSettings`, checked (the device too) before anything loads."""
    from ..pipeline.settings import ModelSettings, resolve_device

    resolve_device(args.device, name="--device")
    return ModelSettings(adapter=args.adapter, base=args.base, base_config=args.base_config, device=args.device,
                         dtype=args.dtype, scheduler=args.scheduler)  # fmt: skip


def load_models(models, sampling):
    """The pipeline the model options name, once `--steps` is known to fit its scheduler."""
    from ..pipeline.checks import check_steps
    from ..pipeline.settings import load_pipeline

    loaded = load_pipeline(models)
    check_steps(sampling.steps, name="--steps", most=loaded.pipe.scheduler.config.num_train_timesteps)
    return loaded


def sampling_settings(args: argparse.Namespace):
    """The sampling options as `SamplingSettings`, each value checked under its flag's name."""
    from ..pipeline.checks import check_guidance, check_scale, check_seed, check_steps
    from ..pipeline.settings import SamplingSettings

    return SamplingSettings(
        steps=check_steps(args.steps, name="--steps"), guidance=check_guidance(args.guidance, name="--guidance"),
        scale=check_scale(args.scale, name="--scale"), seed=check_seed(args.seed, name="--seed"),
        negative_prompt=args.negative_prompt,
    )  # fmt: skip


def check_output(path: str, reference: str, overwrite: bool) -> Path:
    """`--out` as a path that can be written, checked before any model loads."""
    from ..atomic import check_writable
    from ..errors import FlexIPError
    from ..pipeline.output import SAVE_FORMATS

    out = Path(path)
    if out.suffix.lower() not in SAVE_FORMATS:
        raise FlexIPError(
            f"--out {path}: unknown image type {out.suffix!r}; end the name in .png, .jpg or .webp"
        )
    if out.is_dir():
        raise FlexIPError(f"--out {path} is a directory; give a file name such as {out / 'image.png'}")
    check_not_reference(out, reference)
    if out.exists() and not overwrite:
        raise FlexIPError(f"--out {path} already exists; pass --overwrite to replace it, or choose another name")
    return check_writable(out, "--out")


def check_not_reference(out: Path, reference: str) -> None:
    """Refuse to write over the reference image, whatever path (a link, another spelling) names it."""
    import os

    from ..errors import FlexIPError

    same = out.resolve() == Path(reference).resolve() or (
        out.exists() and Path(reference).exists() and os.path.samefile(out, reference)
    )
    if same:
        raise FlexIPError(f"--out {out} is the --reference image {reference}; write the result to another file")
