"""`flexip sweep`: the same subject, prompt and noise at several preservation values, plus a contact sheet."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..atomic import atomic_write_bytes
from ..contact_sheet import contact_sheet
from ..pipeline.output import image_name, save_image
from ..settings.dial import Dial
from .dial import add_dial_options, check_blocks, read_dials
from .options import add_model_options, add_overwrite_option, model_settings, sampling_settings
from .outputs import check_output_directory
from .subjects import Subjects, add_subject_options, read_subjects

DEFAULT_VALUES = "0,0.25,0.5,0.75,1"
SHEET_NAME = "contact_sheet.png"
SETTINGS_NAME = "settings.json"

EXAMPLES = f"""\
examples:
  flexip sweep --reference dog.jpg --prompt "a dog on the beach" --out sweep/
  flexip sweep --reference dog.jpg --prompt "a dog on the beach" --preservation 0,0.5,1 --seed 3 --out sweep/
  flexip sweep --reference dog.jpg --prompt "a dog" --preservation "0.9:0.3,0.6" --out schedule/
  flexip sweep --reference dog.jpg --prompt "a dog" --preservation "down=0.9,up=0.3;0.6" --out blocks/
  flexip sweep --reference dog.jpg --prompt "a dog" --gate 0,0.25,0.5,0.75,1 --out raw/

writes into --out: one image per value (00_preservation-0.00.png, ..., or 00_gate-0.00.png, ... for --gate),
{SHEET_NAME} (the references, then the dial from left to right) and {SETTINGS_NAME} (everything needed to
reproduce them). All images share their starting noise, so they differ only by the dial. Values are separated
by ',' (numbers and schedules) or by ';' (any forms, per-block ones included). On an adapter calibrated by
`flexip calibrate` the contact sheet shows the raw g each preservation value stands for."""


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
    forms = "comma-separated dial values in [0, 1] or schedules (0.9:0.3); ';' between per-block values"
    add_dial_options(parser, DEFAULT_VALUES, forms)
    parser.add_argument("--out", required=True, help="directory to write into (created if missing)")
    add_overwrite_option(parser, "images, contact sheet and settings of an earlier sweep in --out")
    add_model_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    values, dial = read_dials(args)
    models, sampling = model_settings(args), sampling_settings(args)
    check_blocks(args.adapter, values, sampling.scale)
    references = [*args.reference, *(args.mask or [])]
    out = check_output_directory(args.out, output_names(values, dial), args.overwrite, references)
    subjects = read_subjects(args)

    from ..pipeline.front_end import load_pipeline, note_demo_model  # torch: once the command is known good

    loaded = load_pipeline(models)
    note_demo_model(loaded, subjects.images, "flexip sweep")
    sheet = sweep(loaded, args.prompt, subjects, values, models, sampling, out, dial)
    print(f"wrote {len(values)} images and the contact sheet {sheet}")
    return 0


def output_names(values: list[Dial], dial: str = "preservation") -> list[str]:
    """The files a sweep of `values` of `dial` ("preservation" or "gate") writes into its folder."""
    images = [image_name(index, value, dial) for index, value in enumerate(values)]
    return [*images, SHEET_NAME, SETTINGS_NAME]


def sweep(loaded, prompt: str, subjects: Subjects, values: list[Dial], models, sampling, out: Path,
          dial: str = "preservation") -> Path:  # fmt: skip
    """Generate, then write the images, the contact sheet and the settings; returns the contact sheet's path."""
    from ..pipeline.front_end import dial_labels, dial_records, generate, record, sweep_dial_record

    images = generate(loaded, prompt, values=values, sampling=sampling, dial=dial,
                      **subjects.call_arguments())  # fmt: skip
    settings = {**record(prompt, models=models, sampling=sampling, loaded=loaded, **subjects.record()),
                **sweep_dial_record(loaded, values, dial)}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    for index, (value, image, recorded) in enumerate(zip(values, images, dial_records(loaded, values, dial))):
        save_image(image, out / image_name(index, value, dial), {**settings, **recorded})
    references = subjects.images + (subjects.masks or [])
    labels = [f"reference {index + 1}" if len(subjects.images) > 1 else "reference" for index in range(len(subjects.images))]
    labels += [f"mask {index + 1}" for index in range(len(subjects.masks or []))]
    labels += [f"{dial} {label}" for label in dial_labels(loaded, values, dial)]
    sheet = contact_sheet([[*references, *images]], labels, title=f'"{prompt}"  (seed {sampling.seed})')
    save_image(sheet, out / SHEET_NAME, settings)
    atomic_write_bytes(out / SETTINGS_NAME, (json.dumps(settings, indent=2) + "\n").encode())
    return out / SHEET_NAME
