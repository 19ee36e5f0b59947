"""Ship a trained demo adapter inside the package: fp16 weights, model paths relative to the model set.

`flexip train` records its base model and encoders as absolute paths of the machine it ran on; the shipped
adapter must find them wherever the package is installed, so they become `../base`, `../image_encoder` and
`../dinov2` (FlexIPAdapter.resolve_model reads them relative to the adapter). The copy is then loaded into a
FlexIPPipeline once, so a shipped adapter always fits the shipped base model. Beside the adapter it writes
`reference.png`, the built-in subject of `flexip demo` (`flexip.cli.demo.demo_reference` loads it).

    python -m recipes.demo.ship --adapter runs/demo/adapter --out src/flexip/assets/demo/adapter
    python -m recipes.demo.ship --out src/flexip/assets/demo/adapter    # only the reference image
"""

from __future__ import annotations

import argparse
import dataclasses
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from flexip.atomic import atomic_write_bytes
from flexip.models.adapter import FlexIPAdapter
from recipes.demo.world import Identity, Scene, render

# Beside the adapter in a model set (docs/formats.md, "Model set").
MODEL_SET_PATHS = {"base_model": "../base", "image_encoder": "../image_encoder", "dino_encoder": "../dinov2"}

# `flexip demo`'s subject: one of the demo world's, which the shipped demo model was trained on. Its identity (a
# green square with white stripes) is only in the reference; the demo's prompt (flexip.cli.demo.DEMO_PROMPT,
# "a small square on the right with grass background") moves it, shrinks it and changes the background. Chosen
# from the dial measurement's pairs (docs/demo-model.md, Part 2) as one where the dial shows clearly.
DEMO_SUBJECT = {"color": "green", "pattern": "stripes", "pattern_color": "white"}
DEMO_SCENE = {"subject": "square", "background": "sky", "position": "center", "size": "large"}
DEMO_REFERENCE_SIZE = 32  # pixels: the size of the demo model's training references
REFERENCE_NAME = "reference.png"  # in the model set's folder, beside adapter/


def demo_reference() -> Image.Image:
    """`flexip demo`'s reference, drawn procedurally (the same pixels every time)."""
    image, _ = render(
        Identity(**DEMO_SUBJECT), Scene(**DEMO_SCENE), np.random.default_rng(0), DEMO_REFERENCE_SIZE
    )
    return image


def write_reference(path: str | Path) -> Path:
    """Write `demo_reference()` to `path` (atomically) as a PNG: lossless, so loading it gives the same pixels."""
    buffer = io.BytesIO()
    demo_reference().save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    Path(path).chmod(0o644)  # a package data file: readable by everyone, unlike the temporary file it was
    return Path(path)


def _check_model_set(out: Path) -> None:
    from flexip.errors import FlexIPError

    for name in ("base", "image_encoder", "dinov2"):
        if not (out.parent / name).is_dir():
            raise FlexIPError(
                f"{out.parent / name} does not exist: --out must be the adapter folder of a model set "
                "holding base/, image_encoder/ and dinov2/ (e.g. src/flexip/assets/demo/adapter)"
            )


def ship(adapter_dir: str | Path, out: str | Path) -> FlexIPAdapter:
    """Write the adapter at `adapter_dir` to `out` (atomically) in fp16 with model-set-relative paths, and the
    demo's reference image beside it (`<out>/../reference.png`)."""
    from flexip.pipeline.pipeline import FlexIPPipeline

    out = Path(out)
    _check_model_set(out)
    write_reference(out.parent / REFERENCE_NAME)
    adapter = FlexIPAdapter.from_pretrained(adapter_dir)
    adapter.config = dataclasses.replace(adapter.config, **MODEL_SET_PATHS)
    # fp16 halves the files; the weights are small numbers, far from fp16's range limits.
    adapter.to(torch.float16).save_pretrained(out)
    FlexIPPipeline.from_pretrained(adapter=out)  # fails here, not in a user's hands, if the set does not fit
    return adapter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipes.demo.ship", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--adapter", help="trained adapter folder (a run's adapter/); without it only the reference is written"
    )
    parser.add_argument("--out", required=True, help="the model set's adapter folder to write")
    args = parser.parse_args(argv)
    from flexip.errors import FlexIPError

    out = Path(args.out)
    try:
        if args.adapter is None:
            _check_model_set(out)
            write_reference(out.parent / REFERENCE_NAME)
        else:
            ship(args.adapter, out)
    except FlexIPError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    print(f"wrote {out.parent / REFERENCE_NAME}")
    if args.adapter is not None:
        size = sum(p.stat().st_size for p in out.iterdir())
        print(f"wrote {out} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
