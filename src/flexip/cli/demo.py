"""`flexip demo`: a preservation sweep of a built-in subject and prompt on the embedded default model."""

from __future__ import annotations

import argparse
from pathlib import Path

from .generate import add_model_options
from .sweep import DEFAULT_VALUES

# A subject of the demo world (flexip.demo.world), which the shipped demo model was trained on: its identity (a
# green square with white stripes) is only in the reference; the prompt moves it, shrinks it and changes the
# background. Chosen from the dial measurement's pairs (docs/demo-model.md, Part 2) as one where the dial shows
# clearly.
DEMO_SUBJECT = {"color": "green", "pattern": "stripes", "pattern_color": "white"}
DEMO_SCENE = {"subject": "square", "background": "sky", "position": "center", "size": "large"}
DEMO_PROMPT = "a small square on the right with grass background"
DEMO_REFERENCE_SIZE = 32  # pixels: the size of the demo model's training references

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
    add_model_options(parser)
    parser.set_defaults(run=run)


def demo_reference():
    """The built-in reference image, drawn procedurally (the same pixels every time)."""
    import numpy as np

    from ..demo.world import Identity, Scene, render

    image, _ = render(
        Identity(**DEMO_SUBJECT), Scene(**DEMO_SCENE), np.random.default_rng(0), DEMO_REFERENCE_SIZE
    )
    return image


def run(args: argparse.Namespace) -> int:
    from ..pipeline.checks import check_preservation
    from .generate import check_settings, load_pipeline, save_image
    from .sweep import check_output_directory, sweep

    values = check_preservation(DEFAULT_VALUES.split(","))
    settings = check_settings(args)
    out = check_output_directory(args.out)
    args.prompt, args.reference = DEMO_PROMPT, "built-in (flexip demo)"
    reference = demo_reference()
    loaded = load_pipeline(args)
    if loaded.embedded is not None and not loaded.embedded.trained:
        print(
            "flexip demo: note: this copy of flexip lacks its trained demo model (flexip/assets/demo), so the "
            "embedded default is the tiny random model; these pictures are noise and mean nothing. They show "
            "that everything runs."
        )
    sheet = sweep(args, loaded, reference, values, settings, out)
    save_image(reference, Path(out) / "reference.png", {"prompt": DEMO_PROMPT})
    print(
        f"flexip demo: the subject {out / 'reference.png'} for the prompt {DEMO_PROMPT!r}, preservation {DEFAULT_VALUES}"
    )
    print(f"flexip demo: wrote {len(values)} images and the contact sheet {sheet}")
    return 0
