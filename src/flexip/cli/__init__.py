"""The `flexip` command line: `flexip <command> --help` explains each command.

Every command is a module here with `register(subparsers)`; it keeps heavy imports inside its run function so
that `flexip --help` stays fast. `main(argv)` is what tests call in-process.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..errors import FlexIPError

# Modules of flexip.cli, in the order `flexip --help` lists their commands.
COMMAND_MODULES = ["demo", "generate", "sweep", "serve", "tiny_models", "eval", "train", "prep"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flexip",
        description="FlexIP: subject-driven image generation with a preservation dial "
        "(1 = keep the subject's identity, 0 = follow the prompt's edits freely).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user mistake prints one line and returns 2, without a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # transformers warns on every image processor that torchvision is absent (its PIL fallback is what we
    # use); on the command line that is noise. Users can still ask for it with TRANSFORMERS_VERBOSITY.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        return args.run(args) or 0
    except FlexIPError as e:
        print(f"flexip {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"flexip {args.command}: interrupted", file=sys.stderr)
        return 130
