"""What `preservation` means on a calibrated adapter: the calibration an adapter's config carries, and the
raw gate a dial value stands for.

The raw gate g weighs the two branches evenly, but what it does to an image does not move evenly with it: on the
demo model identity arrives almost whole between g = 0 and 0.25 and the prompt gives way between 0.25 and 0.5
(docs/demo-model.md). A calibration measures identity and prompt following along g on a set of pairs and
stores a map from the user's dial u to g (`dial_map.py`) such that equal steps of u are equal steps along the
measured trade-off curve (`flexip.calibration` measures and fits it). On a calibrated adapter `preservation`
is u and `gate` is g, in every form a dial takes (`gate_dial`); without a calibration they are one and the
same. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..denoisers.blocks import BlockNames
from ..errors import FlexIPError
from .dial import PRESERVATION, Dial, DialSchedule, FrameSchedule, axis_of, dials, scheduled
from .dial_blocks import block_values
from .dial_map import DialMap, MappedSchedule


@dataclass
class CalibrationPoint:
    """The mean scores measured at one raw gate value, over the calibration's pairs and seeds."""

    gate: float
    identity: float
    prompt: float


@dataclass
class Calibration:
    """How an adapter's dial was calibrated (`flexip_config.json`, "calibration"; docs/formats.md)."""

    dial: list[float]  # the map's knots: u ...
    gate: list[float]  # ... and g at each
    points: list[CalibrationPoint] = field(default_factory=list)  # what was measured, by gate
    identity_scorer: str = ""  # what scored identity (e.g. "dino-i facebook/dinov2-base")
    prompt_scorer: str = ""  # what scored prompt following (e.g. "clip-t openai/clip-vit-large-patch14")
    pair_set: str = ""  # where the reference/prompt pairs came from
    pairs: int = 0  # how many pairs
    seeds: list[int] = field(default_factory=list)  # the seeds each pair was generated with at every gate
    images: int = 0  # images generated in all

    @property
    def dial_map(self) -> DialMap:
        return DialMap(tuple(self.dial), tuple(self.gate))

    def check(self, source: str) -> None:
        self.dial_map.check(source)
        for index, point in enumerate(self.points):
            if not 0.0 <= point.gate <= 1.0:
                raise FlexIPError(f"{source}: calibration.points[{index}].gate={point.gate} is outside [0, 1]")


def gate_dial(value: Dial, dial_map: DialMap, layers: Sequence[str], names: BlockNames) -> Dial:
    """The raw-gate dial that dial value `value` (any form) stands for on an adapter calibrated by `dial_map`,
    whose joined `layers` `names` places in blocks: a number mapped; a per-block dict as every block's mapped
    value, the blocks it leaves out at the mapped default (so the record replays as the raw gate); a schedule
    (over the steps or the frames) seen through the map."""
    form = value.form
    if isinstance(form, dict):
        form = _every_block(block_values(form, layers, names, value.name, PRESERVATION.default), dial_map, layers,
                            names)  # fmt: skip
    elif isinstance(form, DialSchedule):
        form = MappedSchedule(form, dial_map)
    elif callable(form):  # any callable of the progress: mapped value by value (not recordable, as before)
        schedule = form
        form = lambda progress: dial_map(scheduled(schedule, progress, value.name))
        if axis_of(schedule) == "frames":
            form = FrameSchedule(form)
    else:
        form = dial_map(form)
    return Dial(form, value.name)


def _every_block(values: tuple[float, ...], dial_map: DialMap, layers: Sequence[str], names: BlockNames) -> dict:
    """Per-layer dial values as an explicit per-block dict of mapped values, in the block names' order: a part
    whose layers share one value as one number, else `{"block_i": g or [g per attention]}`."""
    by_block: dict[tuple[str, int], dict[int, float]] = {}
    for layer, u in zip(layers, values):
        part, block, attention = names.block_of(layer)
        by_block.setdefault((part, block), {})[attention] = dial_map(u)
    explicit: dict = {}
    for part in names.blocks:
        blocks = {block: by_attention for (known, block), by_attention in by_block.items() if known == part}
        if not blocks:
            continue
        shared = {value for by_attention in blocks.values() for value in by_attention.values()}
        if len(shared) == 1:
            explicit[part] = shared.pop()
            continue
        entries = {}
        for block, by_attention in blocks.items():
            entry = [by_attention.get(index, dial_map(PRESERVATION.default)) for index in range(max(by_attention) + 1)]
            entries[f"block_{block}"] = entry[0] if len(set(entry)) == 1 else entry
        explicit[part] = entries["block_0"] if part == "mid" else entries  # the mid block takes no block keys
    return explicit


def call_gates(
    preservation, gate, calibration: Calibration | None, layers: Sequence[str], names: BlockNames
) -> list[Dial]:
    """A call's raw gate values on an adapter with joined `layers` (`names` places them in blocks): `gate` as
    given, or `preservation` (default 0.5) through the adapter's calibration (as given, without one); giving
    both is an error."""
    if preservation is not None and gate is not None:
        raise FlexIPError(
            "give preservation or gate, not both: preservation is the dial (calibrated when the adapter is), "
            "gate the raw g it stands for"
        )
    if gate is not None:
        return dials(gate, "gate")
    values = dials(PRESERVATION.default if preservation is None else preservation)
    if calibration is None:
        return values
    return [gate_dial(value, calibration.dial_map, layers, names) for value in values]
