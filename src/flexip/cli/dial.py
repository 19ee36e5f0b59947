"""--preservation or --gate, and --scale, read and checked against the adapter they will meet: its block
names, read from its config file through the library's reader, before torch is imported."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..defaults import DEMO_MODEL_DIR
from ..denoisers.blocks import BLOCK_NAMES
from ..errors import FlexIPError
from ..families.names import DENOISER_OF_FAMILY
from ..models.config import FlexIPConfig
from ..models.config_file import CONFIG_NAME, read_config
from ..settings.dial import Dial
from ..settings.dial_text import parse_dials

GATE_HELP = (
    "the raw gate g instead of --preservation, in the same forms: on an adapter calibrated by `flexip "
    "calibrate` --preservation is the calibrated dial (equal steps, equal change) and g what it stands for; "
    "on any other adapter the two are the same"
)


def add_dial_options(parser: argparse.ArgumentParser, default: str, forms: str) -> None:
    """--preservation (`forms` says which; `default` without it or --gate) and --gate."""
    parser.add_argument("--preservation", default=None, help=f"{forms} (default: {default})")
    parser.add_argument("--gate", default=None, help=GATE_HELP)
    parser.set_defaults(dial_default=default)


def read_dials(args: argparse.Namespace) -> tuple[list[Dial], str]:
    """(the values, the call's argument they are: "preservation" or "gate") of --preservation or --gate;
    --preservation's default without either."""
    if args.preservation is not None and args.gate is not None:
        raise FlexIPError(
            f"--preservation {args.preservation} and --gate {args.gate}: give one of them (--preservation is "
            "the dial, calibrated on a calibrated adapter; --gate the raw g it stands for)"
        )
    if args.gate is not None:
        return parse_dials(args.gate, "--gate"), "gate"
    text = args.dial_default if args.preservation is None else args.preservation
    return parse_dials(text, "--preservation"), "preservation"


def adapter_config(adapter: str | None) -> FlexIPConfig | None:
    """The config of the adapter a command will meet: --adapter's, or without it the embedded model's (None for
    a copy of flexip without it, which builds its Stable Diffusion 1.5 stand-in on first use)."""
    if adapter is None:
        adapter = DEMO_MODEL_DIR / "adapter"
        if not (adapter / CONFIG_NAME).is_file():
            return None
    return read_config(Path(adapter))[1]


def check_blocks(adapter: str | None, values: list[Dial], scale: Dial) -> None:
    """Resolve the dial's values and the scale for the adapter's layers, as the call will: a per-block dict's
    names are checked here (by the call, for the embedded stand-in)."""
    config = adapter_config(adapter)
    if config is None:
        return
    names = BLOCK_NAMES[DENOISER_OF_FAMILY[config.base_family]]
    layers = list(config.layers)
    for value in [*values, scale]:
        value.resolve(layers, names)
