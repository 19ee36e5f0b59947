"""A per-block dial against a model's blocks: diffusers' `set_ip_adapter_scale` form (`{"down": 0.9}`, finer
`{"up": {"block_0": [0.0, 1.0, 0.0]}}`) resolved to one value per joined layer, its block names checked."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..denoisers.blocks import BlockNames
from ..errors import FlexIPError


def block_values(form: dict, layers: Sequence[str], names: BlockNames, name: str, default: float) -> tuple[float, ...]:
    """A per-block dict (a `Dial`'s form, its numbers checked) -> one value per layer; unnamed blocks get
    `default`. Every key must name a block with joined layers, every list one value per attention; `name` is
    the dial's, for messages."""
    spec_of = form
    unknown = sorted(str(key) for key in spec_of if key not in names.blocks)
    if unknown:
        raise FlexIPError(f"{name}: unknown block {unknown[0]!r}; the keys are {', '.join(names.blocks)}")
    positions = [names.block_of(layer) for layer in layers]
    if None in positions:
        raise FlexIPError(f"{name}: layer {layers[positions.index(None)]} is in no {'/'.join(names.blocks)} "
                          "block of this model; give one number instead of a dict")  # fmt: skip
    attentions: dict[tuple[str, int], int] = {}  # (part, block) -> joined attentions
    for part, block, attention in positions:
        attentions[part, block] = max(attentions.get((part, block), 0), attention + 1)
    per_block = {}  # (part, block) -> a number or one per attention
    for part, spec in spec_of.items():
        blocks = sorted(block for known, block in attentions if known == part)
        if part == "mid" and isinstance(spec, list) and len(spec) == 1:
            spec = spec[0]
        if isinstance(spec, dict):
            if part == "mid":
                raise FlexIPError(f"{name}['mid']={spec!r}: the mid block is one block; give one number")
            for key, entry in spec.items():
                index = int(key[6:]) if isinstance(key, str) and re.fullmatch(r"block_\d+", key) else None
                if index not in blocks:
                    raise FlexIPError(
                        f"{name}[{part!r}]: {key!r} is not a block with joined attention; this model's are "
                        f"{', '.join(f'block_{block}' for block in blocks)}"
                    )
                per_block[part, index] = (entry, f"{name}[{part!r}][{key!r}]")
        else:
            for block in blocks:
                per_block[part, block] = (spec, f"{name}[{part!r}]")
    values = []
    for part, block, attention in positions:
        if (part, block) not in per_block:
            values.append(default)
            continue
        entry, where = per_block[part, block]
        if isinstance(entry, list):
            count = attentions[part, block]
            if len(entry) != count:
                raise FlexIPError(f"{where} has {len(entry)} values; this block has {count} attentions: give {count}")
            entry = entry[attention]
        values.append(entry)
    return tuple(values)
