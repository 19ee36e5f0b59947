"""`flexip sweep`: the same subject, prompt and noise at several preservation values, plus a contact sheet."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .generate import add_model_options, add_overwrite_option, add_subject_options

DEFAULT_VALUES = "0,0.25,0.5,0.75,1"
SHEET_NAME = "contact_sheet.png"
SETTINGS_NAME = "settings.json"

EXAMPLES = f"""\
examples:
  flexip sweep --reference dog.jpg --prompt "a dog on the beach" --out sweep/
  flexip sweep --reference dog.jpg --prompt "a dog on the beach" --preservation 0,0.5,1 --seed 3 --out sweep/

writes into --out: one image per value (00_preservation-0.00.png, ...), {SHEET_NAME} (the reference, then the
dial from left to right) and {SETTINGS_NAME} (everything needed to reproduce them). All images share their
starting noise, so they differ only by the dial."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="generate one image per preservation value and a labelled contact sheet",
        description="Generate the subject in --reference following --prompt at several preservation values, "
        "in one batch from the same starting noise, and lay them out left to right on a contact sheet.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_subject_options(parser)
    parser.add_argument(
        "--preservation", default=DEFAULT_VALUES,
        help=f"comma-separated dial values in [0, 1] (default: {DEFAULT_VALUES})",
    )  # fmt: skip
    parser.add_argument("--out", required=True, help="directory to write into (created if missing)")
    add_overwrite_option(parser, "images, contact sheet and settings of an earlier sweep in --out")
    add_model_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..pipeline.checks import check_preservation
    from ..pipeline.images import load_reference_image
    from .generate import load_models, model_settings, sampling_settings

    values = check_preservation(args.preservation.split(","), name="--preservation")
    models, sampling = model_settings(args), sampling_settings(args)
    out = check_output_directory(args.out, output_names(values), args.overwrite, args.reference)
    reference = load_reference_image(args.reference)
    loaded = load_models(models, sampling)
    sheet = sweep(loaded, args.prompt, reference, str(args.reference), values, models, sampling, out)
    print(f"wrote {len(values)} images and the contact sheet {sheet}")
    return 0


def image_name(index: int, value: float) -> str:
    return f"{index:02d}_preservation-{value:.2f}.png"


def output_names(values: list[float]) -> list[str]:
    """The files a sweep of `values` writes into its folder."""
    return [image_name(index, value) for index, value in enumerate(values)] + [SHEET_NAME, SETTINGS_NAME]


def check_output_directory(path: str, names: list[str], overwrite: bool, reference: str | None = None) -> Path:
    """`--out` as a folder the files `names` can be written into, checked before any model loads."""
    from ..atomic import check_writable
    from ..errors import FlexIPError
    from .generate import check_not_reference

    out = Path(path)
    if out.exists() and not out.is_dir():
        raise FlexIPError(f"--out {path} is a file; give a directory to write the sweep into")
    check_writable(out, "--out")
    if reference is not None:
        for name in names:
            check_not_reference(out / name, reference)
    taken = [name for name in names if (out / name).exists()]
    if taken and not overwrite:
        raise FlexIPError(
            f"--out {path} already holds {taken[0]} ({len(taken)} of the files this command writes); pass "
            "--overwrite to replace them, or choose another --out"
        )
    return out


def sweep(loaded, prompt: str, reference, reference_name: str, values: list[float], models, sampling, out: Path) -> Path:
    """Generate, then write the images, the contact sheet and the settings; returns the contact sheet's path."""
    from ..atomic import atomic_write_bytes
    from ..contact_sheet import contact_sheet
    from ..pipeline.output import save_image
    from ..pipeline.settings import generate, record

    images = generate(loaded, prompt, reference, values, sampling)
    settings = {**record(prompt, reference_name, models, sampling, loaded), "preservation": values}
    out.mkdir(parents=True, exist_ok=True)
    for index, (value, image) in enumerate(zip(values, images)):
        save_image(image, out / image_name(index, value), {**settings, "preservation": value})
    labels = ["reference"] + [f"preservation {value:g}" for value in values]
    sheet = contact_sheet([[reference, *images]], labels, title=f'"{prompt}"  (seed {sampling.seed})')
    save_image(sheet, out / SHEET_NAME, settings)
    atomic_write_bytes(out / SETTINGS_NAME, (json.dumps(settings, indent=2) + "\n").encode())
    return out / SHEET_NAME
