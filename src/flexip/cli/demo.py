"""`flexip demo`: a preservation sweep of a built-in subject and prompt on the embedded default model."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..demo_subject import DEMO_PROMPT, DEMO_REFERENCE, demo_reference  # noqa: F401 (tests import them here)
from ..pipeline.output import save_image
from ..settings.dial_text import parse_dials
from .dial import check_blocks
from .options import add_model_options, add_overwrite_option, model_settings, sampling_settings
from .outputs import check_output_directory
from .subjects import Subjects
from .sweep import DEFAULT_VALUES, output_names, sweep

EXAMPLES = """\
examples:
  flexip demo
  flexip demo --out my-demo --seed 1"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run a preservation sweep of a built-in subject and prompt (no arguments needed)",
        description=f"Generate the built-in subject for the prompt {DEMO_PROMPT!r} at preservation "
        f"{DEFAULT_VALUES}, on the embedded default model, and write the images and a contact sheet.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out", default="flexip-demo", help="directory to write into (default: ./flexip-demo)"
    )
    add_overwrite_option(parser, "the files of an earlier demo in --out")
    add_model_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    values = parse_dials(DEFAULT_VALUES, "preservation")
    models, sampling = model_settings(args), sampling_settings(args)
    check_blocks(args.adapter, values, sampling.scale)
    out = check_output_directory(args.out, [*output_names(values), "reference.png"], args.overwrite)
    reference = demo_reference()

    from ..pipeline.front_end import load_pipeline  # torch: once the command is known good

    loaded = load_pipeline(models)
    if loaded.embedded is not None and not loaded.embedded.trained:
        print(
            "flexip demo: note: this copy of flexip lacks its trained demo model (flexip/assets/demo), so the "
            "embedded default is the tiny random model; these pictures are noise and mean nothing. They show "
            "that everything runs."
        )
    subjects = Subjects([reference], ["built-in (flexip demo)"])
    sheet = sweep(loaded, DEMO_PROMPT, subjects, values, models, sampling, out)
    save_image(reference, Path(out) / "reference.png", {"prompt": DEMO_PROMPT})
    print(
        f"flexip demo: the subject {out / 'reference.png'} for the prompt {DEMO_PROMPT!r}, preservation {DEFAULT_VALUES}"
    )
    print(f"flexip demo: wrote {len(values)} images and the contact sheet {sheet}")
    return 0
