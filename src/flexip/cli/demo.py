"""`flexip demo`: a preservation sweep of a built-in subject and prompt on the embedded default model."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..demo_subject import DEMO_PROMPT, DEMO_REFERENCE, demo_reference  # noqa: F401 (tests import them here)
from .generate import add_model_options, add_overwrite_option
from .sweep import DEFAULT_VALUES

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
    from ..pipeline.checks import check_preservation
    from ..pipeline.output import save_image
    from .generate import Subjects, load_models, model_settings, sampling_settings
    from .sweep import check_output_directory, output_names, sweep

    values = check_preservation(DEFAULT_VALUES.split(","))
    models, sampling = model_settings(args), sampling_settings(args)
    out = check_output_directory(args.out, [*output_names(values), "reference.png"], args.overwrite)
    reference = demo_reference()
    loaded = load_models(models, sampling)
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
