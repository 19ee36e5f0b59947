"""`flexip demo`: a preservation sweep of a built-in subject and prompt on the embedded default model."""

from __future__ import annotations

import argparse
from pathlib import Path

from .generate import add_model_options
from .sweep import DEFAULT_VALUES

# The built-in subject, a 32 px picture of the demo world that the shipped demo model was trained on: its
# identity (a green square with white stripes) is only in the reference; the prompt moves it, shrinks it and
# changes the background. The demo recipe drew it (recipes/demo/ship.py, which also describes the subject) and
# the package ships the PNG, so `flexip demo` needs nothing else. Located on its own, not through
# pipeline.embedded.DEMO_MODEL_DIR: the reference is part of the demo, whichever model the demo runs on.
DEMO_REFERENCE = Path(__file__).resolve().parent.parent / "assets" / "demo" / "reference.png"
DEMO_PROMPT = "a small square on the right with grass background"

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
    """The built-in reference image (an RGB PIL image, the same pixels every time), read from the package."""
    from PIL import Image

    from ..errors import FlexIPError

    if not DEMO_REFERENCE.is_file():
        raise FlexIPError(
            f"{DEMO_REFERENCE} is missing: this copy of flexip lacks its data files (reinstall it, or write the "
            "file with `python -m recipes.demo.ship --out src/flexip/assets/demo/adapter` in a clone)"
        )
    with Image.open(DEMO_REFERENCE) as image:
        return image.convert("RGB")


def run(args: argparse.Namespace) -> int:
    from ..pipeline.checks import check_preservation
    from ..pipeline.output import save_image
    from ..pipeline.settings import load_pipeline
    from .generate import model_settings, sampling_settings
    from .sweep import check_output_directory, sweep

    values = check_preservation(DEFAULT_VALUES.split(","))
    models, sampling = model_settings(args), sampling_settings(args)
    out = check_output_directory(args.out)
    reference = demo_reference()
    loaded = load_pipeline(models)
    if loaded.embedded is not None and not loaded.embedded.trained:
        print(
            "flexip demo: note: this copy of flexip lacks its trained demo model (flexip/assets/demo), so the "
            "embedded default is the tiny random model; these pictures are noise and mean nothing. They show "
            "that everything runs."
        )
    sheet = sweep(loaded, DEMO_PROMPT, reference, "built-in (flexip demo)", values, models, sampling, out)
    save_image(reference, Path(out) / "reference.png", {"prompt": DEMO_PROMPT})
    print(
        f"flexip demo: the subject {out / 'reference.png'} for the prompt {DEMO_PROMPT!r}, preservation {DEFAULT_VALUES}"
    )
    print(f"flexip demo: wrote {len(values)} images and the contact sheet {sheet}")
    return 0
