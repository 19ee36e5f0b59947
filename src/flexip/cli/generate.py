"""`flexip generate`: one image of a reference's subject following a prompt, at one preservation value.

Also the options and model loading that `flexip sweep` and `flexip demo` share.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

EXAMPLES = """\
examples:
  flexip generate --reference dog.jpg --prompt "a dog on the beach" --preservation 0.7 --out dog_beach.png
  flexip generate --reference dog.jpg --prompt "a dog, oil painting" --preservation 0.3 --out dog_oil.png \\
      --base stable-diffusion-v1-5/stable-diffusion-v1-5 --adapter path/to/flexip --scheduler dpm++ --steps 25

preservation: 1 keeps the subject's identity and fine detail, 0 lets the prompt restyle it freely.
Without --adapter the embedded default model is used."""

SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


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
    add_model_options(parser)
    parser.set_defaults(run=run)


def add_subject_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference", required=True, help="image of the subject (PNG, JPEG, WebP, ...)")
    parser.add_argument("--prompt", required=True, help='what to generate, e.g. "a dog on the beach"')


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
    parser.add_argument(
        "--base", default=None,
        help="Stable Diffusion base: hub id or directory (default: the base the adapter records)",
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
    from ..pipeline.checks import check_preservation
    from ..pipeline.images import load_reference_image

    (preservation,) = check_preservation(args.preservation.split(","), name="--preservation")
    settings = check_settings(args)
    out = check_output(args.out)
    reference = load_reference_image(args.reference)
    loaded = load_pipeline(args)
    image = generate(loaded.pipe, args, reference, [preservation], settings)[0]
    save_image(image, out, {**describe(args, settings, loaded), "preservation": preservation})
    print(f"wrote {out}")
    return 0


def check_settings(args: argparse.Namespace) -> dict:
    """Validated sampling settings, named by their flags in any error."""
    from ..pipeline.checks import check_guidance, check_scale, check_steps

    return {
        "scale": check_scale(args.scale, name="--scale"),
        "guidance": check_guidance(args.guidance, name="--guidance"),
        "steps": check_steps(args.steps, name="--steps"),
    }


def check_output(path: str) -> Path:
    from ..errors import FlexIPError

    out = Path(path)
    if out.suffix.lower() not in SAVE_FORMATS:
        raise FlexIPError(
            f"--out {path}: unknown image type {out.suffix!r}; end the name in .png, .jpg or .webp"
        )
    if out.is_dir():
        raise FlexIPError(f"--out {path} is a directory; give a file name such as {out / 'image.png'}")
    return out


@dataclass
class LoadedModel:
    pipe: object  # FlexIPPipeline, on the chosen device
    embedded: object | None  # the EmbeddedModel when --adapter was not given
    record: dict  # base, adapter, device and dtype as resolved, for the files written


def load_pipeline(args: argparse.Namespace) -> LoadedModel:
    """The pipeline the model options name (the embedded default without --adapter)."""
    import torch

    from ..errors import FlexIPError
    from ..pipeline import FlexIPPipeline
    from ..pipeline.embedded import embedded_model
    from ..schedulers import make_scheduler

    if args.device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(args.device)
        except RuntimeError as e:
            raise FlexIPError(
                f"--device {args.device!r} is not a torch device ({e}); use cpu, cuda or cuda:N"
            ) from e
        if device.type == "cuda" and not torch.cuda.is_available():
            raise FlexIPError(
                f"--device {args.device}: CUDA is not available on this machine; use --device cpu"
            )
    dtype_name = args.dtype or ("float16" if device.type == "cuda" else "float32")

    embedded = None
    if args.adapter is None:
        embedded = embedded_model()
        adapter, base = embedded.models.adapter, args.base or embedded.models.base
    else:
        adapter, base = args.adapter, args.base
    pipe = FlexIPPipeline.from_pretrained(base=base, adapter=adapter, torch_dtype=getattr(torch, dtype_name))
    pipe.scheduler = make_scheduler(args.scheduler, pipe.scheduler)
    pipe.to(device)
    record = {
        "base": pipe.config._name_or_path,
        "adapter": str(adapter),
        "device": str(device),
        "dtype": dtype_name,
    }
    return LoadedModel(pipe, embedded, record)


def generate(pipe, args: argparse.Namespace, reference, values: list[float], settings: dict) -> list:
    """One image per preservation value, in one batch from the same starting noise."""
    import torch

    generator = torch.Generator("cpu").manual_seed(
        args.seed
    )  # CPU noise: the same seed gives the same image anywhere
    return pipe(
        args.prompt, reference=reference, preservation=values, scale=settings["scale"],
        num_inference_steps=settings["steps"], guidance_scale=settings["guidance"],
        negative_prompt=args.negative_prompt, generator=generator,
    ).images  # fmt: skip


def describe(args: argparse.Namespace, settings: dict, loaded: LoadedModel) -> dict:
    """Everything needed to reproduce an image, recorded beside it."""
    from .. import __version__

    return {
        "flexip_version": __version__,
        "prompt": args.prompt,
        "negative_prompt": args.negative_prompt,
        "reference": str(args.reference),
        "seed": args.seed,
        "scheduler": args.scheduler,
        **settings,
        **loaded.record,
    }


def save_image(image, path: Path, settings: dict) -> None:
    """Write atomically; a PNG carries `settings` as JSON in its `flexip` text chunk."""
    import io

    from PIL.PngImagePlugin import PngInfo

    from ..atomic import atomic_write_bytes

    buffer = io.BytesIO()
    image_format = SAVE_FORMATS[path.suffix.lower()]
    if image_format == "PNG":
        info = PngInfo()
        info.add_text("flexip", json.dumps(settings, sort_keys=True))
        image.save(buffer, format="PNG", pnginfo=info)
    else:
        image.save(buffer, format=image_format, quality=95)
    atomic_write_bytes(path, buffer.getvalue())
