"""A calibrated adapter's map from the user's dial u to the raw gate g, and a schedule seen through it.

The map is piecewise linear between knots (u, g) that start at (0, 0), end at (1, 1) and strictly increase
in both, so u = 0 and u = 1 are the raw ends exactly, and a value that never leaves an end maps to one that
never leaves it either (a branch whose weight stays zero is still skipped). `flexip.calibration` fits the
knots; `calibration.py` stores them in an adapter. Nothing here imports torch.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from itertools import pairwise

from ..errors import FlexIPError
from .numbers import as_number


@dataclass(frozen=True)
class DialMap:
    """g = map(u): piecewise linear through the knots (`dial[i]`, `gate[i]`)."""

    dial: tuple[float, ...]
    gate: tuple[float, ...]

    def __post_init__(self):
        object.__setattr__(self, "dial", tuple(as_number(u, "calibration dial knot") for u in self.dial))
        object.__setattr__(self, "gate", tuple(as_number(g, "calibration gate knot") for g in self.gate))

    def check(self, source: str) -> None:
        """Refuse knots that are not a strictly increasing path from (0, 0) to (1, 1), naming `source`."""
        for name, knots in (("dial", self.dial), ("gate", self.gate)):
            if len(knots) < 2 or len(knots) != len(self.dial) or knots[0] != 0.0 or knots[-1] != 1.0:
                raise FlexIPError(
                    f"{source}: calibration.{name} must start at 0, end at 1 and have one knot per "
                    f"calibration.dial knot (got {list(knots)}); calibrate the adapter again"
                )
            if any(b <= a for a, b in pairwise(knots)):
                raise FlexIPError(
                    f"{source}: calibration.{name} must strictly increase (got {list(knots)}); calibrate the "
                    "adapter again"
                )

    def __call__(self, u: float) -> float:
        """The raw gate of dial value `u` in [0, 1]; exactly a knot's g at that knot's u."""
        index = bisect.bisect_left(self.dial, u)
        if index < len(self.dial) and self.dial[index] == u:
            return self.gate[index]
        index = min(max(index, 1), len(self.dial) - 1)
        (u0, u1), (g0, g1) = self.dial[index - 1 : index + 1], self.gate[index - 1 : index + 1]
        return g0 + (g1 - g0) * (u - u0) / (u1 - u0)

    def record(self) -> dict:
        return {"dial": list(self.dial), "gate": list(self.gate)}

    @classmethod
    def from_record(cls, record: dict, source: str) -> DialMap:
        knots = cls(tuple(record["dial"]), tuple(record["gate"]))
        knots.check(source)
        return knots


@dataclass(frozen=True)
class MappedSchedule:
    """A schedule of u (over the steps or the frames), as the raw gate: g = dial_map(schedule(progress)).

    What a calibrated adapter runs for a `DialSchedule` of `preservation` (over the steps or the frames, as it
    runs), and what the settings beside its
    image record as the gate (`record`; `Dial.from_record` reads it back), so the raw gate reproduces it.
    """

    schedule: object  # a DialSchedule (start, end, shape, over)
    dial_map: DialMap

    def __call__(self, progress: float) -> float:
        return self.dial_map(self.schedule(progress))

    @property
    def ends(self) -> tuple[float, float]:
        return self.dial_map(self.schedule.start), self.dial_map(self.schedule.end)

    @property
    def over(self) -> str:
        """What the schedule's progress runs over ("steps" or "frames")."""
        return self.schedule.over

    def record(self) -> dict:
        return {**self.schedule.record(), "map": self.dial_map.record()}

