"""`flexip train --config FILE`: train the FlexIP adapters (one process, or many through accelerate/torchrun)."""

from __future__ import annotations

import argparse
import json
import logging

from ..training.config import load_config


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train the adapters on a JSONL manifest of reference/target pairs",
        description="Train FlexIP's adapters and gate on a frozen Stable Diffusion (the FlexIP paper's recipe, arXiv 2504.07405). The run folder "
        "gets config.yaml, metrics.jsonl, TensorBoard logs (logs/), contact sheets (samples/), checkpoints/ and "
        "the exported adapter/ that `flexip generate --adapter` loads. For many GPUs: "
        "`accelerate launch --num_processes N -m flexip train ...`.",
    )
    parser.add_argument("--config", required=True, help="YAML training config, e.g. configs/train/tiny.yaml")
    parser.add_argument("--output-dir", help="run folder (overrides output_dir)")
    parser.add_argument("--max-steps", type=int, help="optimizer steps to train to (overrides max_steps)")
    parser.add_argument(
        "--resume",
        metavar="latest|PATH",
        help="continue from the run's newest whole checkpoint (`latest`; starts fresh if there is none; damaged "
        "ones are moved aside, never deleted) or a checkpoint folder",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in a run folder that holds an earlier run: DELETES its config.yaml, metrics.jsonl, logs/, "
        "samples/, checkpoints/ and adapter/ (without it such a folder is refused)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set data.manifest=data/train.jsonl --set batch_size=4 (repeatable)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.output_dir is not None:
        overrides.append(f"output_dir={json.dumps(args.output_dir)}")  # JSON strings are YAML strings
    if args.max_steps is not None:
        overrides.append(f"max_steps={args.max_steps}")
    config = load_config(args.config, overrides)

    from ..training.trainer import train  # torch: once the configuration is known good

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    result = train(config, resume=args.resume, overwrite=args.overwrite)
    if result.interrupted:
        print(f"interrupted at step {result.state.step}: saved; continue with --resume latest")
        return 130
    print(f"trained {result.state.step} steps; adapter in {result.run_dir / 'adapter'}")
    return 0
