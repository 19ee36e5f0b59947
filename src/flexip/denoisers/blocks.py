"""How each kind of denoiser names the blocks a per-block dial addresses, without torch: the command line
checks a dial's block names against an adapter's file before any model loads."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class BlockNames:
    """The block names a per-block dict may use (`blocks`), and where a joined layer lies among them."""

    blocks: tuple[str, ...]
    locate: Callable[[str], tuple[str, int, int] | None]

    def block_of(self, layer: str) -> tuple[str, int, int] | None:
        """(block name, block index, attention index) of the layer named `layer`; None if it is in no block."""
        return self.locate(layer)


_UNET_LAYER = re.compile(r"^(?:(down|up)_blocks\.(\d+)|(mid)_block)\.attentions\.(\d+)\.")


def _unet_block(layer: str) -> tuple[str, int, int] | None:
    match = _UNET_LAYER.match(layer)
    if match is None:
        return None
    part, block, mid, attention = match.groups()
    return (part, int(block), int(attention)) if mid is None else ("mid", 0, int(attention))


# diffusers' `set_ip_adapter_scale` names: `down_blocks.i`, `mid_block`, `up_blocks.i`.
UNET_BLOCKS = BlockNames(("down", "mid", "up"), _unet_block)

_FLUX_LAYER = re.compile(r"^transformer_blocks\.(\d+)\.attn\.")


def _flux_block(layer: str) -> tuple[str, int, int] | None:
    match = _FLUX_LAYER.match(layer)
    return None if match is None else ("double", int(match.group(1)), 0)


# FLUX.1's joined layers are its double-stream blocks' attention (`transformer_blocks.i`), one per block:
# `{"double": 0.8}`, finer `{"double": {"block_3": 0.2}}`.
FLUX_BLOCKS = BlockNames(("double",), _flux_block)

# A denoiser's name (flexip.denoisers) -> its block names.
BLOCK_NAMES = {"unet": UNET_BLOCKS, "flux": FLUX_BLOCKS, "motion_unet": UNET_BLOCKS}
