"""The dial: one value of g (or of the adapters' strength s) in any of the forms users give it, checked once.

A call's `preservation` is one of these forms, or a list of them (a sweep, one batch):

    0.6                                      every layer, every step
    {"down": 0.9, "mid": 0.6, "up": 0.3}     per block, in the form of diffusers' `set_ip_adapter_scale`:
    {"up": {"block_0": [0.0, 1.0, 0.0]}}     finer keys name a block, and a list gives each of its attentions
    DialSchedule(start=0.9, end=0.3)         over the steps: progress 0 at the first executed step, 1 at the last
    lambda progress: ...                     any callable of the progress with values in [0, 1]
    DialSchedule(0.9, 0.3, over="frames")    over a clip's frames: progress f / (F - 1) at frame f of F
    FrameSchedule(lambda progress: ...)      any callable of the frame's progress

`scale` takes a number or a per-block dict, from 0 to `SCALE_MAX`. Every front end turns what its user gave
into `Dial`s: `dials` for Python values, `dial_text.parse_dials` for the text of the command line and the web
page, and `Dial.from_record` for the settings recorded beside an image (`Dial.record` writes them, `Dial.text`
writes the command line's form). A `Dial` checks its numbers when it is made; `Dial.resolve` checks its block
names against an adapter's layers (`dial_blocks.py`) and gives one `LayerDial`: the call does that once, and
the command line does it on the adapter's file before any model loads. Blocks a dict does not name keep the
default (g 0.5, s 1). Nothing here imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..denoisers.blocks import BlockNames
from ..errors import FlexIPError
from .dial_blocks import block_values
from .dial_map import DialMap, MappedSchedule
from .numbers import SCALE_MAX, as_number

SHAPES = ("linear", "cosine")
# What a schedule's progress runs over: the denoising steps, or the frames of a clip.
AXES = ("steps", "frames")
# Where a schedule given as any callable is tried at the boundary, before the first step.
PROBES = (0.0, 0.5, 1.0)


@dataclass(frozen=True)
class Quantity:
    """What a dial sets: its name, its range [0, most], its default, what its ends mean, and whether it may
    change over the steps."""

    name: str
    most: float
    default: float
    meaning: str
    schedules: bool

    def number(self, value, name: str | None = None) -> float:
        """`value` as a float in [0, most]; a one-line error naming `name` otherwise."""
        name = name or self.name
        number = as_number(value, name)
        if not 0.0 <= number <= self.most:  # also NaN
            raise FlexIPError(f"{name}={value!r} is outside [0, {self.most:g}]: {self.meaning}")
        return number


PRESERVATION = Quantity(
    "preservation", 1.0, 0.5, "1 keeps the subject's identity, 0 follows the prompt's edits freely", True
)
SCALE = Quantity("scale", SCALE_MAX, 1.0, "1 is the trained strength, 0 the base model", False)


@dataclass(frozen=True)
class DialSchedule:
    """g over the denoising steps (`over="steps"`): `start` at the first executed step, `end` at the last, in
    between `shape` ("linear", or "cosine": slow at both ends) of the progress; or over a clip's frames
    (`over="frames"`): `start` at the first frame, `end` at the last."""

    start: float
    end: float
    shape: str = "linear"
    over: str = "steps"

    def __post_init__(self):
        for name in ("start", "end"):
            value = as_number(getattr(self, name), f"DialSchedule {name}")
            if not 0.0 <= value <= 1.0:
                raise FlexIPError(f"DialSchedule {name}={getattr(self, name)!r} is outside [0, 1]; give g from 0 to 1")
            object.__setattr__(self, name, value)
        if self.shape not in SHAPES:
            raise FlexIPError(f"DialSchedule shape={self.shape!r} is not one of {', '.join(SHAPES)}")
        if self.over not in AXES:
            raise FlexIPError(f"DialSchedule over={self.over!r} is not one of {', '.join(AXES)}")

    def record(self) -> dict:
        """As JSON; `over` only for a schedule over the frames, so one over the steps records its numbers alone."""
        record = {"start": self.start, "end": self.end, "shape": self.shape}
        if self.over != "steps":
            record["over"] = self.over
        return record

    def __call__(self, progress: float) -> float:
        if self.shape == "cosine":
            progress = (1 - math.cos(math.pi * progress)) / 2
        return self.start + (self.end - self.start) * progress  # exactly `start` when start == end


@dataclass(frozen=True)
class FrameSchedule:
    """Any callable of a frame's progress (f / (F - 1) at frame f of F), with values in [0, 1], as g over a
    clip's frames; a bare callable runs over the steps."""

    function: Callable[[float], float]
    over = "frames"

    def __call__(self, progress: float) -> float:
        return self.function(progress)


def axis_of(schedule: Callable[[float], float]) -> str:
    """What `schedule`'s progress runs over: "frames" for a schedule made so, else "steps"."""
    return getattr(schedule, "over", "steps")


def frame_progress(frame: int, frames: int) -> float:
    """The progress of frame `frame` (from 0) of a clip of `frames`: 0 at the first, 1 at the last."""
    return frame / (frames - 1) if frames > 1 else 0.0


@dataclass(frozen=True)
class LayerDial:
    """One sample's value in every joined layer: constant per layer, or a schedule (over the steps or over the
    frames) for all of them."""

    values: tuple[float, ...] | None  # one per layer, in the adapter's layer order; None: `schedule`
    schedule: Callable[[float], float] | None = None
    name: str = "preservation"

    @property
    def over_steps(self) -> bool:
        """Whether the value moves over the denoising steps (the weights are renewed at every step)."""
        return self.schedule is not None and axis_of(self.schedule) == "steps"

    @property
    def over_frames(self) -> bool:
        """Whether the value moves over a clip's frames (each frame's rows get their own weights)."""
        return self.schedule is not None and axis_of(self.schedule) == "frames"

    def at(self, progress: float, layers: int, frame: float = 0.0) -> tuple[float, ...]:
        """The value of each of `layers` layers at step `progress` (0 at the first executed step, 1 at the last)
        in the frame whose progress is `frame` (`frame_progress`)."""
        if self.schedule is None:
            return self.values
        return (scheduled(self.schedule, frame if self.over_frames else progress, self.name),) * layers

    def reaches(self, end: float) -> bool:
        """Whether the value may differ from `end` somewhere (a branch whose weight is 1 - g or g may act)."""
        if self.schedule is None:
            return any(value != end for value in self.values)
        if isinstance(self.schedule, DialSchedule):
            return self.schedule.start != end or self.schedule.end != end
        if isinstance(self.schedule, MappedSchedule):  # the map keeps 0 and 1 and moves every other value
            return any(value != end for value in self.schedule.ends)
        return True  # any callable: known only step by step


class Dial:
    """One value of a dial in one of its forms, its numbers checked; `name` is how its user called it."""

    def __init__(self, form, name: str | None = None, quantity: Quantity = PRESERVATION):
        self.quantity = quantity
        self.name = name or quantity.name
        self.form = self._checked(form)
        self._resolved: dict[tuple, LayerDial] = {}  # (layers, block names) -> the resolved value

    def _checked(self, form):
        if isinstance(form, dict):
            return {part: self._checked_entry(spec, f"{self.name}[{part!r}]") for part, spec in form.items()}
        if not self.quantity.schedules and (isinstance(form, (list, tuple)) or callable(form)):
            raise FlexIPError(
                f"{self.name}={form!r}: give one number from 0 to {self.quantity.most:g}, or a per-block dict"
            )
        if isinstance(form, (list, tuple)):
            raise FlexIPError(f"{self.name}={form!r}: a sweep cannot hold a list; give numbers, dicts or schedules")
        if callable(form):
            for progress in PROBES:
                scheduled(form, progress, self.name)
            return form
        return self.quantity.number(form, self.name)

    def _checked_entry(self, spec, where: str):
        """A dict's entry: a number, one number per attention, or (finer) block names to those."""
        if isinstance(spec, dict):
            return {key: self._checked_entry(entry, f"{where}[{key!r}]") for key, entry in spec.items()}
        if isinstance(spec, (list, tuple)):
            return [self.quantity.number(value, f"{where}[{index}]") for index, value in enumerate(spec)]
        return self.quantity.number(spec, where)

    def __repr__(self) -> str:
        return f"Dial({self.form!r}, name={self.name!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Dial) and (self.form, self.quantity) == (other.form, other.quantity)

    def resolve(self, layers: Sequence[str], names: BlockNames) -> LayerDial:
        """The value in each of `layers` (an adapter's, which `names` places in blocks), or its schedule; worked
        out once per adapter (the command line resolves it before torch loads, the call finds it done)."""
        key = (tuple(layers), names)
        if key not in self._resolved:
            if isinstance(self.form, dict):
                values = block_values(self.form, layers, names, self.name, self.quantity.default)
                self._resolved[key] = LayerDial(values, name=self.name)
            elif callable(self.form):
                self._resolved[key] = LayerDial(None, self.form, name=self.name)
            else:
                self._resolved[key] = LayerDial((self.form,) * len(layers), name=self.name)
        return self._resolved[key]

    def over(self, axis: str) -> Dial:
        """The same dial with its schedule running over `axis` ("steps" or "frames"); a dial that holds no
        `DialSchedule` is refused in one line."""
        if axis not in AXES:
            raise FlexIPError(f"{self.name}: over={axis!r} is not one of {', '.join(AXES)}")
        if not isinstance(self.form, DialSchedule):
            raise FlexIPError(
                f"{self.name} {self._shown()} is not a schedule: only a schedule START:END (e.g. 0.9:0.3) runs over "
                f"the {axis}"
            )
        form = self.form
        return Dial(DialSchedule(form.start, form.end, form.shape, axis), self.name, self.quantity)

    def _shown(self) -> str:
        return self.text() if not callable(self.form) or isinstance(self.form, DialSchedule) else repr(self.form)

    def record(self):
        """As JSON for the settings beside an image (a number stays a number; a schedule over the frames says
        so with `"over": "frames"`); `from_record` reads it."""
        if isinstance(self.form, DialSchedule):
            return self.form.record()
        if isinstance(self.form, MappedSchedule):
            return self.form.record()
        if callable(self.form):
            raise FlexIPError(f"{self.form!r}: only a number, a per-block dict or a DialSchedule can be recorded")
        return self.form

    @classmethod
    def from_record(cls, record, quantity: Quantity = PRESERVATION) -> Dial:
        if isinstance(record, dict) and {"start", "end", "shape"} <= set(record) <= SCHEDULE_KEYS:
            schedule = DialSchedule(record["start"], record["end"], record["shape"], record.get("over", "steps"))
            record = schedule if "map" not in record else MappedSchedule(schedule, _map(record["map"]))
        return cls(record, quantity=quantity)

    def text(self) -> str:
        """As the command line writes it (a label, or a flag's value)."""
        if isinstance(self.form, DialSchedule):
            shape = "" if self.form.shape == "linear" else f":{self.form.shape}"
            return f"{self.form.start:g}:{self.form.end:g}{shape}"
        if isinstance(self.form, dict):
            items = []
            for part, spec in self.form.items():
                if isinstance(spec, dict):
                    items += [f"{part}.{block}={_entry_text(entry)}" for block, entry in spec.items()]
                else:
                    items.append(f"{part}={_entry_text(spec)}")
            return ",".join(items)
        return f"{self.form:g}"


# The keys of a recorded schedule: its numbers, its axis when it runs over the frames, a calibrated map.
SCHEDULE_KEYS = {"start", "end", "shape", "over", "map"}


def dials(value, name: str | None = None, quantity: Quantity = PRESERVATION) -> list[Dial]:
    """A Python value of any form, or a list of them (a sweep) -> one `Dial` per value (a `Dial` stays itself)."""
    name = name or quantity.name
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values:
        forms = "a per-block dict, a schedule" if quantity.schedules else "a per-block dict"
        raise FlexIPError(f"{name} is empty: give one value in [0, {quantity.most:g}], {forms}, or a list of them")
    return [
        item if isinstance(item, Dial) else Dial(item, f"{name}[{index}]" if len(values) > 1 else name, quantity)
        for index, item in enumerate(values)
    ]


def sweep_record(values: Sequence[Dial]):
    """A sweep's values as JSON, one record each."""
    return [value.record() for value in values]


def sweep_text(values: Sequence[Dial]) -> str:
    """A sweep as one flag's value: `,` between numbers, `;` when a value holds commas itself."""
    return ("," if all(not isinstance(value.form, dict) for value in values) else ";").join(
        value.text() for value in values
    )


def scheduled(schedule: Callable[[float], float], progress: float, name: str) -> float:
    """`schedule` at `progress`, checked: a value in [0, 1], or a one-line error naming `name`."""
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


def _map(record) -> DialMap:
    if not isinstance(record, dict) or set(record) != {"dial", "gate"}:
        raise FlexIPError(f"a recorded schedule's map must hold 'dial' and 'gate' knots, got {record!r}")
    return DialMap.from_record(record, "a recorded schedule")


def _entry_text(entry) -> str:
    if isinstance(entry, list):  # per attention: a Python form, shown but not a flag's value
        return "[" + ",".join(f"{value:g}" for value in entry) + "]"
    return f"{entry:g}"
