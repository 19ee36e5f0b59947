"""`flexip sweep`: the same subject, prompt and noise at several preservation values, plus a contact sheet."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..atomic import atomic_write_bytes
from ..contact_sheet import contact_sheet
from ..pipeline.clips import clip_name, mp4_codec, save_clip
from ..pipeline.output import image_name, save_image
from ..settings.dial import Dial
from .clips import Clip, add_clip_options, over_frames, read_clip
from .dial import add_dial_options, check_blocks, read_dials
from .options import add_model_options, add_overwrite_option, model_settings, sampling_settings
from .outputs import check_output_directory
from .subjects import Subjects, add_subject_options, read_subjects

DEFAULT_VALUES = "0,0.25,0.5,0.75,1"
SHEET_NAME = "contact_sheet.png"
SETTINGS_NAME = "settings.json"
CLIP_TILE = 128  # a clip's frames on the contact sheet, in pixels: a row holds every frame

EXAMPLES = f"""\
examples:
  flexip sweep --reference dog.jpg --prompt "a dog on the beach" --out sweep/
  flexip sweep --reference dog.jpg --prompt "a dog on the beach" --preservation 0,0.5,1 --seed 3 --out sweep/
  flexip sweep --reference dog.jpg --prompt "a dog" --preservation "0.9:0.3,0.6" --out schedule/
  flexip sweep --reference dog.jpg --prompt "a dog" --preservation "down=0.9,up=0.3;0.6" --out blocks/
  flexip sweep --reference dog.jpg --prompt "a dog" --gate 0,0.25,0.5,0.75,1 --out raw/
  flexip sweep --adapter runs/a/adapter --motion-adapter guoyww/animatediff-motion-adapter-v1-5-2 \\
      --reference dog.jpg --prompt "a dog running" --preservation 0,0.3,0.6 --frames 16 --out clips/

writes into --out: one image per value (00_preservation-0.00.png, ..., or 00_gate-0.00.png, ... for --gate),
{SHEET_NAME} (the references, then the dial from left to right) and {SETTINGS_NAME} (everything needed to
reproduce them). All images share their starting noise, so they differ only by the dial. Values are separated
by ',' (numbers and schedules) or by ';' (any forms, per-block ones included). On an adapter calibrated by
`flexip calibrate` the contact sheet shows the raw g each preservation value stands for. With
--motion-adapter: one clip per value (00_preservation-0.00.mp4, ..., in --clip-format), and on {SHEET_NAME}
one row per value, the references then the clip's frames left to right."""


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
    add_clip_options(parser).add_argument(
        "--clip-format", default=None, choices=("mp4", "gif", "png"),
        help="with --motion-adapter, each clip as an .mp4, a .gif or a folder of PNG frames (default: mp4)",
    )  # fmt: skip
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    values, dial = read_dials(args)
    clip = read_clip(args)
    values = over_frames(values, args)
    models, sampling = model_settings(args), sampling_settings(args, None if clip is None else clip.frames)
    check_blocks(args.adapter, values, sampling.scale)
    references = [*args.reference, *(args.mask or [])]
    clip_format = None if clip is None else args.clip_format or "mp4"
    if clip_format == "mp4":
        mp4_codec()
    out = check_output_directory(args.out, output_names(values, dial, clip_format), args.overwrite, references)
    subjects = read_subjects(args)
    if clip is not None:
        clip.note("sweep")

    from ..pipeline.front_end import load_pipeline, note_demo_model  # torch: once the command is known good

    loaded = load_pipeline(models)
    note_demo_model(loaded, subjects.images, "flexip sweep")
    sheet = sweep(loaded, args.prompt, subjects, values, models, sampling, out, dial, clip, clip_format)
    print(f"wrote {len(values)} {'images' if clip is None else 'clips'} and the contact sheet {sheet}")
    return 0


def output_names(values: list[Dial], dial: str = "preservation", clip_format: str | None = None) -> list[str]:
    """The files a sweep of `values` of `dial` ("preservation" or "gate") writes into its folder: images, or
    clips in `clip_format`."""
    names = [image_name(index, value, dial) for index, value in enumerate(values)]
    if clip_format is not None:
        names = [clip_name(name, clip_format) for name in names]
    return [*names, SHEET_NAME, SETTINGS_NAME]


def sweep(loaded, prompt: str, subjects: Subjects, values: list[Dial], models, sampling, out: Path,
          dial: str = "preservation", clip: Clip | None = None, clip_format: str | None = None) -> Path:  # fmt: skip
    """Generate, then write the images (or clips), the contact sheet and the settings; returns the contact
    sheet's path."""
    from ..pipeline.front_end import dial_labels, dial_records, generate, record, sweep_dial_record

    outputs = generate(loaded, prompt, values=values, sampling=sampling, dial=dial,
                       **subjects.call_arguments())  # fmt: skip
    settings = {**record(prompt, models=models, sampling=sampling, loaded=loaded, **subjects.record()),
                **sweep_dial_record(loaded, values, dial)}  # fmt: skip
    if clip is not None:
        settings.update(clip.record(), frames=clip.frames, fps=clip.fps)
    out.mkdir(parents=True, exist_ok=True)
    names = output_names(values, dial, clip_format)
    for name, output, recorded in zip(names, outputs, dial_records(loaded, values, dial)):
        if clip is None:
            save_image(output, out / name, {**settings, **recorded})
        else:
            save_clip(output, out / name, {**settings, **recorded}, clip.fps, clip_format)
    references = subjects.images + (subjects.masks or [])
    labels = [f"reference {index + 1}" if len(subjects.images) > 1 else "reference" for index in range(len(subjects.images))]
    labels += [f"mask {index + 1}" for index in range(len(subjects.masks or []))]
    dial_labelled = [f"{dial} {label}" for label in dial_labels(loaded, values, dial)]
    title = f'"{prompt}"  (seed {sampling.seed})'
    if clip is None:
        sheet = contact_sheet([[*references, *outputs]], labels + dial_labelled, title=title)
    else:  # one row per dial value: the references, then the clip's frames
        labels += [f"frame {index + 1}" for index in range(clip.frames)]
        rows = [[*references, *frames] for frames in outputs]
        sheet = contact_sheet(rows, labels, title=title, tile_size=CLIP_TILE, row_labels=dial_labelled)
    save_image(sheet, out / SHEET_NAME, settings)
    atomic_write_bytes(out / SETTINGS_NAME, (json.dumps(settings, indent=2) + "\n").encode())
    return out / SHEET_NAME
