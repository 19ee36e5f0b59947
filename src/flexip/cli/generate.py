"""`flexip generate`: one image of a reference's subject following a prompt, at one preservation value.

Also the options that `flexip sweep` and `flexip demo` share, and their translation into the typed settings
of `flexip.pipeline.settings` (nothing below `flexip.cli` sees argparse).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

EXAMPLES = """\
examples:
  flexip generate --reference dog.jpg --prompt "a dog on the beach" --preservation 0.7 --out dog_beach.png
  flexip generate --reference dog.jpg --prompt "a dog, oil painting" --preservation 0.3 --out dog_oil.png \\
      --base stable-diffusion-v1-5/stable-diffusion-v1-5 --adapter path/to/flexip --scheduler dpm++ --steps 25
  flexip generate --reference front.jpg --reference side.jpg --reference-weights 0.7,0.3 --prompt "a dog" --out a.png
  flexip generate --reference dog.jpg --prompt "a dog" --preservation down=0.9,mid=0.6,up=0.3 --out blocks.png
  flexip generate --reference dog.jpg --prompt "a dog" --preservation 0.9:0.3 --out schedule.png
  flexip generate --reference dog.jpg --mask left.png --reference cat.jpg --mask right.png \\
      --prompt "a dog and a cat" --preservation 0.7 --out two.png

preservation: 1 keeps the subject's identity and fine detail, 0 lets the prompt restyle it freely; per UNet
block as down=0.9,mid=0.6,up=0.3 (finer: up.block_0=0.5; unnamed blocks keep 0.5), or over the steps as
START:END (0.9:0.3, or 0.9:0.3:cosine). Several --reference are one subject's images, mixed by
--reference-weights (equal by default); with one --mask each (white = the subject), one subject per mask.
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
    parser.add_argument(
        "--preservation", default="0.5",
        help="the dial g in [0, 1], per block (down=0.9,mid=0.6,up=0.3) or a schedule (0.9:0.3) (default: 0.5)",
    )  # fmt: skip
    parser.add_argument("--out", required=True, help="image file to write (.png, .jpg or .webp)")
    add_overwrite_option(parser, "an existing --out file")
    add_model_options(parser)
    parser.set_defaults(run=run)


def add_subject_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reference", required=True, action="append",
        help="image of the subject (PNG, JPEG, WebP, ...); repeat it for several images of the subject, or "
        "with --mask for several subjects",
    )  # fmt: skip
    parser.add_argument(
        "--reference-weights", default=None,
        help="comma-separated weights of the --reference images, e.g. 0.7,0.3 (default: equal; with masks, 1 each)",
    )  # fmt: skip
    parser.add_argument(
        "--mask", action="append", default=None,
        help="a mask (white = the subject) per --reference, in the same order: each subject acts only inside its "
        "mask; masks have the image's aspect ratio",
    )  # fmt: skip
    parser.add_argument("--prompt", required=True, help='what to generate, e.g. "a dog on the beach"')


@dataclass
class Subjects:
    """The subject options, read and checked: the reference pictures, their weights and masks."""

    images: list  # RGB PIL images
    names: list[str]  # as the user named them
    weights: list[float] | None = None
    masks: list | None = None  # PIL images
    mask_names: list[str] | None = None

    def call_arguments(self) -> dict:
        """`reference`, `reference_weights` and `reference_masks` of the library's call."""
        reference = self.images[0] if len(self.images) == 1 else self.images
        return {"reference": reference, "reference_weights": self.weights, "reference_masks": self.masks}

    def record(self) -> dict:
        """`reference`, `reference_weights` and `reference_masks` of `settings.record`."""
        return {"reference": self.names, "reference_weights": self.weights, "reference_masks": self.mask_names}


def read_subjects(args: argparse.Namespace) -> Subjects:
    """--reference, --reference-weights and --mask, read and checked before any model loads."""
    from ..errors import FlexIPError
    from ..pipeline.images import load_mask_image, load_reference_image
    from ..pipeline.subjects import check_subjects

    weights = None
    if args.reference_weights is not None:
        try:
            weights = [float(weight) for weight in args.reference_weights.split(",")]
        except ValueError:
            raise FlexIPError(
                f"--reference-weights {args.reference_weights}: give comma-separated numbers, e.g. 0.7,0.3"
            ) from None
        if len(weights) != len(args.reference):
            raise FlexIPError(
                f"--reference-weights {args.reference_weights}: {len(weights)} weights for {len(args.reference)} "
                "--reference images; give one per image"
            )
    masks = None
    if args.mask is not None:
        if len(args.mask) != len(args.reference):
            raise FlexIPError(f"{len(args.mask)} --mask for {len(args.reference)} --reference; give one mask per reference")
        masks = [load_mask_image(path, f"--mask {path}") for path in args.mask]
    check_subjects(len(args.reference), weights, masks, None)
    images = [load_reference_image(path) for path in args.reference]
    return Subjects(images, [str(path) for path in args.reference], weights, masks, args.mask)


def read_dial(text: str, name: str = "--preservation") -> list:
    """--preservation's text -> its values (one, or a sweep's), each checked as far as it can be before the
    model loads (block names and ranges; block indices are checked against the UNet at the call)."""
    from ..pipeline.checks import check_preservation
    from ..pipeline.dial import check_form, parse_dial

    if not any(mark in text for mark in "=:;"):  # numbers, as ever
        return check_preservation(text.split(","), name=name)
    form = parse_dial(text, name)
    values = form if isinstance(form, list) else [form]
    for value in values:
        check_form(value, name)
    return values


def add_overwrite_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--overwrite", action="store_true", help=f"replace {what} (without it, existing files are refused)"
    )


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The sampling and model options every generating command takes."""
    from ..schedulers import SCHEDULERS

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
    from ..pipeline.dial import dial_record
    from ..pipeline.output import save_image
    from ..pipeline.settings import generate, record

    values = read_dial(args.preservation)
    if len(values) != 1:
        raise FlexIPError(
            f"--preservation {args.preservation}: generate makes one image at one value; for several values "
            f"use `flexip sweep --preservation {args.preservation} --out DIR`"
        )
    models, sampling = model_settings(args), sampling_settings(args)
    check_blocks(args.adapter, values, sampling.scale)
    out = check_output(args.out, [*args.reference, *(args.mask or [])], args.overwrite)
    subjects = read_subjects(args)
    loaded = load_models(models, sampling)
    image = generate(loaded, args.prompt, values=values, sampling=sampling, **subjects.call_arguments())[0]
    settings = record(args.prompt, models=models, sampling=sampling, loaded=loaded, **subjects.record())
    save_image(image, out, {**settings, "preservation": dial_record(values[0])})
    print(f"wrote {out}")
    return 0


def model_settings(args: argparse.Namespace):
    """The model options as `ModelSettings`, checked (the device too) before anything loads."""
    from ..pipeline.settings import ModelSettings, resolve_device

    resolve_device(args.device, name="--device")
    return ModelSettings(adapter=args.adapter, base=args.base, base_config=args.base_config, device=args.device,
                         dtype=args.dtype, scheduler=args.scheduler)  # fmt: skip


def check_blocks(adapter: str | None, values: list, scale) -> None:
    """Per-block values against the adapter's layers (read from its config file), before any model loads; with
    the embedded model, or an adapter that cannot be read (loading it says why), the call checks them."""
    import json

    from ..families import FAMILIES, SD15
    from ..models.files import CONFIG_NAME
    from ..pipeline.dial import check_dials, check_layer_scale

    if adapter is None or not any(isinstance(value, dict) for value in [*values, scale]):
        return
    try:
        config = json.loads((Path(adapter) / CONFIG_NAME).read_text())
        layers = list(config["layers"])
        family = FAMILIES[config.get("base_family", SD15.name)]  # a file without one is SD1.5's
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return
    check_dials(values, layers, family.denoiser, name="--preservation")
    check_layer_scale(scale, layers, family.denoiser, name="--scale")


def load_models(models, sampling):
    """The pipeline the model options name, once `--steps` is known to fit its scheduler."""
    from ..pipeline.checks import check_steps
    from ..pipeline.settings import load_pipeline

    loaded = load_pipeline(models)
    check_steps(sampling.steps, name="--steps", most=loaded.pipe.scheduler.config.num_train_timesteps)
    return loaded


def sampling_settings(args: argparse.Namespace):
    """The sampling options as `SamplingSettings`, each value checked under its flag's name."""
    from ..errors import FlexIPError
    from ..pipeline.checks import MAX_SCALE, check_guidance, check_scale, check_seed, check_steps
    from ..pipeline.dial import check_form, parse_dial
    from ..pipeline.settings import SamplingSettings

    scale = parse_dial(args.scale, "--scale") if "=" in args.scale else check_scale(args.scale, name="--scale")
    if isinstance(scale, dict):
        check_form(scale, "--scale", MAX_SCALE)
    elif isinstance(scale, list):
        raise FlexIPError(f"--scale {args.scale}: give one number, or per block (down=1,mid=1,up=0.5)")
    return SamplingSettings(
        steps=check_steps(args.steps, name="--steps"), guidance=check_guidance(args.guidance, name="--guidance"),
        scale=scale, seed=check_seed(args.seed, name="--seed"), negative_prompt=args.negative_prompt,
    )  # fmt: skip


def check_output(path: str, references: list[str], overwrite: bool) -> Path:
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
    for reference in references:
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
