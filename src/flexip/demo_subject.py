"""The built-in subject: the reference and prompt of `flexip demo`, also the web page's example (`flexip serve`).

A 32 px picture of the demo world that the shipped demo model was trained on: its identity (a green square
with white stripes) is only in the reference; the prompt moves it, shrinks it and changes the background. The
demo recipe drew it (recipes/demo/ship.py, which also describes the subject) and the package ships the PNG,
so the demo needs nothing else. Located on its own, not through `embedded.DEMO_MODEL_DIR`: the reference is
part of the demo, whichever model the demo runs on. Outside `pipeline/`, whose import
loads torch: the command line reads the prompt when it builds its parser.
"""

from __future__ import annotations

from pathlib import Path

from .errors import FlexIPError

DEMO_REFERENCE = Path(__file__).resolve().parent / "assets" / "demo" / "reference.png"
DEMO_PROMPT = "a small square on the right with grass background"


def demo_reference():
    """The built-in reference image (an RGB PIL image, the same pixels every time), read from the package."""
    from PIL import Image  # here: `flexip --help` imports this module for the prompt

    if not DEMO_REFERENCE.is_file():
        raise FlexIPError(
            f"{DEMO_REFERENCE} is missing: this copy of flexip lacks its data files (reinstall it, or write the "
            "file with `python -m recipes.demo.ship --out src/flexip/assets/demo/adapter` in a clone)"
        )
    with Image.open(DEMO_REFERENCE) as image:
        return image.convert("RGB")
