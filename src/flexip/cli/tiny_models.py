"""`flexip tiny-models DIR`: write the offline tiny model set (random weights, real formats)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..atomic import check_writable
from ..errors import FlexIPError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "tiny-models",
        help="write a tiny random model set (base, encoders, adapter, metric backbones, small data sets) for "
        "tests and plumbing checks",
        description="Write a complete tiny model set with random weights in the real diffusers/transformers "
        "formats: DIR/base (a Stable Diffusion 1.5 pipeline, SDXL's with --family sdxl, FLUX.1's with --family flux), "
        "DIR/image_encoder (CLIP vision), DIR/dinov2, DIR/adapter (FlexIP), DIR/motion_adapter (an AnimateDiff "
        "motion adapter for an sd15 or sdxl base), DIR/data (a small training set: "
        "manifest.jsonl and its pictures of coloured shapes), DIR/benchmark (benchmark.jsonl, for `flexip eval "
        "generate --benchmark jsonl`) and DIR/metrics (clip/, dino/ and aesthetic.safetensors, the backbones "
        "`flexip eval score` loads). It exists so that everything, training and evaluation included, runs "
        "without downloading weights; the pictures its random models make, and their scores, mean nothing.",
    )
    parser.add_argument(
        "directory", help="where to write the model set (created; parts already there are kept as they are)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed of the weights, from 0 to 2**32 - 1 (default: 0)"
    )
    parser.add_argument(
        "--family", choices=("sd15", "sdxl", "flux"), default="sd15",
        help="the base model's family: sd15 (Stable Diffusion 1.5's shape, the default), sdxl (two text "
        "encoders, pooled text and size conditioning) or flux (FLUX.1-dev's transformer, CLIP and T5 text "
        "encoders, flow matching); the adapter is sized for it",
    )  # fmt: skip
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace the parts that already exist: deletes everything in them, a trained adapter in DIR/adapter too",
    )  # fmt: skip
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.tiny_backbones import save_tiny_backbones
    from ..families.registry import family_named
    from ..tiny import existing_parts, save_tiny_model_set

    if not 0 <= args.seed < 2**32:
        raise FlexIPError(f"--seed {args.seed} must be an integer from 0 to 2**32 - 1")
    if Path(args.directory).exists() and not Path(args.directory).is_dir():
        raise FlexIPError(f"DIR {args.directory} is a file; give a folder to write the model set into")
    kept = [] if args.overwrite else existing_parts(check_writable(args.directory, "DIR"))
    family = family_named(args.family)
    models = save_tiny_model_set(args.directory, seed=args.seed, overwrite=args.overwrite, family=family)
    save_tiny_backbones(models.root, seed=args.seed, overwrite=args.overwrite)
    motion = "motion_adapter/, " if models.motion_adapter.is_dir() else ""
    parts = f"base/, image_encoder/, dinov2/, adapter/, {motion}data/, benchmark/, metrics/"
    print(f"wrote the tiny {family.title} model set to {models.root}: {parts}")
    if kept:
        print(f"kept what was already there: {', '.join(kept)} (pass --overwrite to replace them)")
    return 0
