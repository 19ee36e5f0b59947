"""The dial's forms: g as one value, per UNet block, or over the denoising steps; s per block too.

A call's `preservation` is one of these forms, or a list of them (a sweep, one batch):

    0.6                                      every layer, every step
    {"down": 0.9, "mid": 0.6, "up": 0.3}     per block, in the form of diffusers' `set_ip_adapter_scale`:
    {"up": {"block_0": [0.0, 1.0, 0.0]}}     finer keys name a block, and a list gives each of its attentions
    DialSchedule(start=0.9, end=0.3)         over the steps: progress 0 at the first executed step, 1 at the last
    lambda progress: ...                     any callable of the progress with values in [0, 1]

Blocks a dictionary does not name keep the call's default (g 0.5, s 1). `check_dials` checks a form against
the adapter's layers and resolves it into a `LayerDial` per value; the command line's text forms
(`parse_dial`: `0.3,0.5` a list, `down=0.9,mid=0.6,up=0.3` per block, `0.9:0.3` a schedule) and the settings
recorded beside an image (`dial_record`) are here too, so that every front end reads and writes the same.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..denoisers import DENOISERS, Denoiser
from ..errors import FlexIPError
from .checks import MAX_SCALE, as_number

DEFAULT_PRESERVATION = 0.5  # the call's default g, and that of the blocks a dictionary does not name
DEFAULT_SCALE = 1.0
SHAPES = ("linear", "cosine")
# Where a schedule given as any callable is tried at the boundary, before the first step.
PROBES = (0.0, 0.5, 1.0)



@dataclass(frozen=True)
class DialSchedule:
    """g over the denoising steps: `start` at the first executed step, `end` at the last, in between `shape`
    ("linear", or "cosine": slow at both ends) of the progress."""

    start: float
    end: float
    shape: str = "linear"

    def __post_init__(self):
        for name in ("start", "end"):
            value = as_number(getattr(self, name), f"DialSchedule {name}")
            if not 0.0 <= value <= 1.0:
                raise FlexIPError(f"DialSchedule {name}={getattr(self, name)!r} is outside [0, 1]; give g from 0 to 1")
            object.__setattr__(self, name, value)
        if self.shape not in SHAPES:
            raise FlexIPError(f"DialSchedule shape={self.shape!r} is not one of {', '.join(SHAPES)}")

    def __call__(self, progress: float) -> float:
        if self.shape == "cosine":
            progress = (1 - math.cos(math.pi * progress)) / 2
        return self.start + (self.end - self.start) * progress  # exactly `start` when start == end


@dataclass(frozen=True)
class LayerDial:
    """One sample's value in every cross-attention layer: constant per layer, or a schedule for all of them."""

    values: tuple[float, ...] | None  # one per layer, in the adapter's layer order; None: `schedule`
    schedule: Callable[[float], float] | None = None
    name: str = "preservation"

    def at(self, progress: float, layers: int) -> tuple[float, ...]:
        """The value of each of `layers` layers at `progress` (0 at the first executed step, 1 at the last)."""
        if self.schedule is None:
            return self.values
        return (_scheduled(self.schedule, progress, self.name),) * layers

    def reaches(self, end: float) -> bool:
        """Whether the value may differ from `end` somewhere (a branch whose weight is 1 - g or g may act)."""
        if self.schedule is None:
            return any(value != end for value in self.values)
        if isinstance(self.schedule, DialSchedule):
            return self.schedule.start != end or self.schedule.end != end
        return True  # any callable: known only step by step


def _scheduled(schedule: Callable[[float], float], progress: float, name: str) -> float:
    try:
        value = schedule(progress)
    except Exception as e:  # a user's callable: say which and where, whatever it raised
        raise FlexIPError(f"{name} schedule {schedule!r} failed at progress {progress:g}: {e}") from e
    number = as_number(value, f"{name} schedule at progress {progress:g}")
    if not 0.0 <= number <= 1.0:
        raise FlexIPError(
            f"{name} schedule {schedule!r} gave {value!r} at progress {progress:g}: its values must lie in [0, 1]"
        )
    return number


def check_dials(preservation, layers: Sequence[str], denoiser: Denoiser, name: str = "preservation") -> list[LayerDial]:
    """A `preservation` of any form, or a list of them (a sweep) -> one checked `LayerDial` per value; `layers`
    are the adapter's, which `denoiser` places in its blocks."""
    values = list(preservation) if isinstance(preservation, (list, tuple)) else [preservation]
    if not values:
        raise FlexIPError(f"{name} is empty: give one value in [0, 1], a per-block dict, a schedule, or a list of them")
    return [_check_one(value, layers, denoiser, f"{name}[{index}]" if len(values) > 1 else name)
            for index, value in enumerate(values)]  # fmt: skip


def check_form(value, name: str, most: float = 1.0) -> None:
    """What can be checked of one form before the model is known: its numbers' range, a dict's block names,
    a callable's values (`check_dials` checks block indices and list lengths against the adapter's layers)."""
    if isinstance(value, dict):
        blocks = sorted({block for denoiser in DENOISERS.values() for block in denoiser.blocks})
        unknown = sorted(str(key) for key in value if key not in blocks)
        if unknown:
            raise FlexIPError(f"{name}: unknown block {unknown[0]!r}; the keys are {', '.join(blocks)}")
        for part, spec in value.items():
            entries = spec.values() if isinstance(spec, dict) else [spec]
            for entry in entries:
                for number in entry if isinstance(entry, (list, tuple)) else [entry]:
                    _in_range(number, f"{name}[{part!r}]", most)
    elif callable(value) and most == 1.0:
        for progress in PROBES:
            _scheduled(value, progress, name)
    else:
        _in_range(value, name, most)


def _check_one(value, layers: Sequence[str], denoiser: Denoiser, name: str) -> LayerDial:
    if isinstance(value, (list, tuple)):
        raise FlexIPError(f"{name}={value!r}: a sweep cannot hold a list; give numbers, dicts or schedules")
    if isinstance(value, dict):
        return LayerDial(block_values(value, layers, denoiser, name, DEFAULT_PRESERVATION, 1.0), name=name)
    if callable(value):
        for progress in PROBES:
            _scheduled(value, progress, name)
        return LayerDial(None, value, name=name)
    return LayerDial((_in_range(value, name, 1.0),) * len(layers), name=name)


def check_layer_scale(scale, layers: Sequence[str], denoiser: Denoiser, name: str = "scale") -> tuple[float, ...]:
    """The adapters' strength s, one number or a per-block dict -> one value per layer."""
    if isinstance(scale, dict):
        return block_values(scale, layers, denoiser, name, DEFAULT_SCALE, MAX_SCALE)
    if isinstance(scale, (list, tuple)) or callable(scale):
        raise FlexIPError(f"{name}={scale!r}: give one number from 0 to {MAX_SCALE:g}, or a per-block dict")
    return (_in_range(scale, name, MAX_SCALE),) * len(layers)


def _in_range(value, name: str, most: float) -> float:
    number = as_number(value, name)
    if not 0.0 <= number <= most:  # also NaN
        meaning = (
            "1 keeps the subject's identity, 0 follows the prompt's edits freely"
            if most == 1.0 else "1 is the trained strength, 0 the base model"
        )  # fmt: skip
        raise FlexIPError(f"{name}={value!r} is outside [0, {most:g}]: {meaning}")
    return number


def block_values(
    value: dict, layers: Sequence[str], denoiser: Denoiser, name: str, default: float, most: float
) -> tuple[float, ...]:
    """A per-block dict (diffusers' `set_ip_adapter_scale` form) -> one value per layer; unnamed blocks get
    `default`. Every key must name a block with joined layers (`denoiser.block_of`), every list one value per
    attention."""
    unknown = sorted(str(key) for key in value if key not in denoiser.blocks)
    if unknown:
        raise FlexIPError(f"{name}: unknown block {unknown[0]!r}; the keys are {', '.join(denoiser.blocks)}")
    positions = [denoiser.block_of(layer) for layer in layers]
    if None in positions:
        raise FlexIPError(f"{name}: layer {layers[positions.index(None)]} is in no {'/'.join(denoiser.blocks)} "
                          "block of this model; give one number instead of a dict")  # fmt: skip
    attentions: dict[tuple[str, int], int] = {}  # (part, block) -> attentions with cross-attention
    for part, block, attention in positions:
        attentions[part, block] = max(attentions.get((part, block), 0), attention + 1)
    per_block = {}  # (part, block) -> a number or one per attention
    for part, spec in value.items():
        blocks = sorted(block for known, block in attentions if known == part)
        if part == "mid" and isinstance(spec, (list, tuple)) and len(spec) == 1:
            spec = spec[0]
        if isinstance(spec, dict):
            if part == "mid":
                raise FlexIPError(f"{name}['mid']={spec!r}: the mid block is one block; give one number")
            for key, entry in spec.items():
                index = int(key[6:]) if isinstance(key, str) and re.fullmatch(r"block_\d+", key) else None
                if index not in blocks:
                    raise FlexIPError(
                        f"{name}[{part!r}]: {key!r} is not a block with cross-attention; this UNet's are "
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
        if isinstance(entry, (list, tuple)):
            count = attentions[part, block]
            if len(entry) != count:
                raise FlexIPError(f"{where} has {len(entry)} values; this block has {count} attentions: give {count}")
            entry, where = entry[attention], f"{where}[{attention}]"
        values.append(_in_range(entry, where, most))
    return tuple(values)


# The command line's forms and the settings recorded beside an image.


def parse_dial(text: str, name: str = "--preservation"):
    """A flag's text -> the Python form: `0.3,0.5` a list, `down=0.9,mid=0.6,up=0.3` (or `up.block_0=0.5`)
    per block, `0.9:0.3` (or `0.9:0.3:cosine`) a schedule, `;` between the values of a sweep of any forms."""
    parts = text.split(";")
    if len(parts) > 1:
        forms = [_parse_one(part.strip(), name) for part in parts]
        if any(isinstance(form, list) for form in forms):
            raise FlexIPError(f"{name} {text}: a value between ';' cannot be a list; use ';' or ',' to separate values")
        return forms
    return _parse_one(text.strip(), name)


def _parse_one(text: str, name: str):
    if "=" in text:
        blocks: dict = {}
        for item in text.split(","):
            key, _, value = item.partition("=")
            part, _, block = key.strip().partition(".")
            number = _parse_number(value, name, text)
            if block:
                entry = blocks.setdefault(part, {})
                if not isinstance(entry, dict):
                    raise FlexIPError(f"{name} {text}: {part} is given both whole and per block; give one of them")
                entry[block] = number
            elif part in blocks:
                raise FlexIPError(f"{name} {text}: {part} is given twice; give each block once")
            else:
                blocks[part] = number
        return blocks
    if "," in text:
        return [_parse_one(item.strip(), name) for item in text.split(",")]
    if ":" in text:
        pieces = text.split(":")
        if len(pieces) not in (2, 3):
            raise FlexIPError(f"{name} {text}: a schedule is START:END or START:END:SHAPE, e.g. 0.9:0.3")
        shape = pieces[2] if len(pieces) == 3 else "linear"
        return DialSchedule(_parse_number(pieces[0], name, text), _parse_number(pieces[1], name, text), shape)
    return _parse_number(text, name, text)


def _parse_number(text: str, name: str, whole: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise FlexIPError(
            f"{name} {whole}: {text.strip()!r} is not a number; give e.g. 0.5, 0.3,0.5, down=0.9,up=0.3 or 0.9:0.3"
        ) from None


def dial_record(value):
    """A dial form as JSON for the settings beside an image (a number stays a number); `dial_from_record` reads it."""
    if isinstance(value, DialSchedule):
        return {"start": value.start, "end": value.end, "shape": value.shape}
    if isinstance(value, dict):
        return {key: dial_record(entry) for key, entry in value.items()}
    if isinstance(value, (list, tuple)):
        return [dial_record(entry) for entry in value]
    if callable(value):
        raise FlexIPError(f"{value!r}: only a number, a per-block dict or a DialSchedule can be recorded")
    return float(value)


def dial_from_record(record):
    """The dial form `dial_record` wrote."""
    if isinstance(record, dict) and set(record) == {"start", "end", "shape"}:
        return DialSchedule(record["start"], record["end"], record["shape"])
    if isinstance(record, list):
        return [dial_from_record(entry) for entry in record]
    return record


def dial_text(value) -> str:
    """A dial form as the command line writes it (a label, or a flag's value)."""
    if isinstance(value, DialSchedule):
        shape = "" if value.shape == "linear" else f":{value.shape}"
        return f"{value.start:g}:{value.end:g}{shape}"
    if isinstance(value, dict):
        items = []
        for part, spec in value.items():
            if isinstance(spec, dict):
                items += [f"{part}.{block}={_entry_text(entry)}" for block, entry in spec.items()]
            else:
                items.append(f"{part}={_entry_text(spec)}")
        return ",".join(items)
    if isinstance(value, (list, tuple)):
        return ("," if all(not isinstance(v, dict) for v in value) else ";").join(dial_text(v) for v in value)
    return f"{float(value):g}"


def _entry_text(entry) -> str:
    if isinstance(entry, (list, tuple)):  # per attention: a Python form, shown but not a flag's value
        return "[" + ",".join(f"{float(v):g}" for v in entry) + "]"
    return f"{float(entry):g}"
