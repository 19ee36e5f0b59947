"""The `flexip` command line: `flexip <command> --help` explains each command.

Every command is a module here with `register(subparsers)`; it keeps heavy imports inside its run function so
that `flexip --help` stays fast. `main(argv)` is what tests call in-process.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..errors import FlexIPError
from .threads import apply_thread_policy

# Modules of flexip.cli, in the order `flexip --help` lists their commands.
COMMAND_MODULES = ["demo", "generate", "sweep", "serve", "tiny_models", "eval", "train", "calibrate", "prep"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flexip",
        description="FlexIP: subject-driven image generation with a preservation dial "
        "(1 = keep the subject's identity, 0 = follow the prompt's edits freely).",
    )
    parser.add_argument(
        "--threads", type=int, default=None, metavar="N",
        help="torch threads for CPU work (default: OMP_NUM_THREADS or MKL_NUM_THREADS if set, otherwise the "
        "cores other work leaves idle: all of them on an idle machine, 1 where every core is busy)",
    )  # fmt: skip
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def _not_torchvision_notice(record: logging.LogRecord) -> bool:
    """transformers says, once for each image-processor class that diffusers and flexip import, that
    torchvision is absent and its PIL processor stands in: flexip does not need torchvision, so the notice
    asks nothing of a user. Only that notice is dropped; transformers' other warnings reach the console."""
    return "requires torchvision (not installed)" not in record.getMessage()


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user mistake prints one line and returns 2, without a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    notices = logging.getLogger("transformers.utils.import_utils")  # where transformers says it
    notices.addFilter(_not_torchvision_notice)
    try:
        apply_thread_policy(args.threads)  # before any command imports torch
        return args.run(args) or 0
    except FlexIPError as e:
        print(f"flexip {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"flexip {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        notices.removeFilter(_not_torchvision_notice)
