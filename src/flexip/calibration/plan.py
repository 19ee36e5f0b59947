"""What a calibration measures: the seeds every pair is generated with, how many gate values, and how each image
is sampled; checked without torch, so the command line and the training config refuse a bad number at once.

Measurement starts at the five gates `START_GATES` and refines in rounds (`measure.py`) until `points` gates are
measured: each image costs a full generation, so a calibration costs pairs x seeds x points of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import FlexIPError
from ..settings.generation import SamplingSettings
from ..settings.numbers import check_guidance, check_seed, check_steps
from .curve import NARROWEST

START_GATES = (0.0, 0.25, 0.5, 0.75, 1.0)
# Refinement never splits a stretch of the gate narrower than 2 * NARROWEST, so no more gates can be placed.
MOST_POINTS = round(1 / NARROWEST) + 1


@dataclass(frozen=True)
class CalibrationPlan:
    seeds: tuple[int, ...] = (0, 1)  # every pair is generated with each seed, at every gate
    # The five evenly spaced gates show the curve's shape; the rest go where identity or prompt move fastest,
    # which is where the map's knots must be dense.
    points: int = 9
    steps: int = SamplingSettings.steps  # denoising steps of every image (`flexip generate`'s default)
    guidance: float = SamplingSettings.guidance  # classifier-free guidance (`flexip generate`'s default)
    # How the front end's user names these settings, before each name in a message: "--" on the command line.
    prefix: str = field(default="", compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "seeds", tuple(self.seeds))
        if not self.seeds:
            raise FlexIPError(f"{self.prefix}seeds is empty; give at least one seed, e.g. 0")
        for seed in self.seeds:
            check_seed(seed, f"{self.prefix}seeds")
        if len(set(self.seeds)) != len(self.seeds):
            raise FlexIPError(
                f"{self.prefix}seeds={list(self.seeds)} names a seed twice; give each seed once"
            )
        points = self.points
        if (
            isinstance(points, bool)
            or not isinstance(points, int)
            or not len(START_GATES) <= points <= MOST_POINTS
        ):
            raise FlexIPError(
                f"{self.prefix}points={points!r} must be an integer from {len(START_GATES)} (the gates "
                f"{', '.join(f'{g:g}' for g in START_GATES)}) to {MOST_POINTS}; 9 is usual"
            )
        check_steps(self.steps, f"{self.prefix}steps")
        object.__setattr__(self, "guidance", check_guidance(self.guidance, f"{self.prefix}guidance"))

    def images(self, pairs: int) -> int:
        """How many images a calibration on `pairs` pairs generates (at most: refinement stops early on a curve
        that does not move)."""
        return pairs * len(self.seeds) * self.points
