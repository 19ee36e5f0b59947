"""Ship a trained demo adapter inside the package: fp16 weights, model paths relative to the model set.

`flexip train` records its base model and encoders as absolute paths of the machine it ran on; the shipped
adapter must find them wherever the package is installed, so they become `../base`, `../image_encoder` and
`../dinov2` (FlexIPAdapter.resolve_model reads them relative to the adapter). The copy is then loaded into a
FlexIPPipeline once, so a shipped adapter always fits the shipped base model.

    python -m flexip.demo.ship --adapter runs/demo/adapter --out src/flexip/assets/demo/adapter
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from flexip.models.adapter import FlexIPAdapter

# Beside the adapter in a model set (docs/formats.md, "Model set").
MODEL_SET_PATHS = {"base_model": "../base", "image_encoder": "../image_encoder", "dino_encoder": "../dinov2"}


def ship(adapter_dir: str | Path, out: str | Path) -> FlexIPAdapter:
    """Write the adapter at `adapter_dir` to `out` (atomically) in fp16 with model-set-relative paths."""
    from flexip.errors import FlexIPError
    from flexip.pipeline import FlexIPPipeline

    out = Path(out)
    for name in ("base", "image_encoder", "dinov2"):
        if not (out.parent / name).is_dir():
            raise FlexIPError(
                f"{out.parent / name} does not exist: --out must be the adapter folder of a model set "
                "holding base/, image_encoder/ and dinov2/ (e.g. src/flexip/assets/demo/adapter)"
            )
    adapter = FlexIPAdapter.from_pretrained(adapter_dir)
    adapter.config = dataclasses.replace(adapter.config, **MODEL_SET_PATHS)
    # fp16 halves the files; the weights are small numbers, far from fp16's range limits.
    adapter.to(torch.float16).save_pretrained(out)
    FlexIPPipeline.from_pretrained(adapter=out)  # fails here, not in a user's hands, if the set does not fit
    return adapter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flexip.demo.ship", description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", required=True, help="trained adapter folder (a run's adapter/)")
    parser.add_argument("--out", required=True, help="the model set's adapter folder to write")
    args = parser.parse_args(argv)
    from flexip.errors import FlexIPError

    try:
        ship(args.adapter, args.out)
    except FlexIPError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    size = sum(p.stat().st_size for p in Path(args.out).iterdir())
    print(f"wrote {args.out} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
