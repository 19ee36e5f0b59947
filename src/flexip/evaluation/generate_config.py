"""The sampling settings every generating method shares, validated up front and recorded in generation.json.

Methods differ only in themselves (docs/method.md §4): the same base, scheduler, steps, guidance and seeds.
Kept free of torch, like `methods`, so that the command line can offer the choices without importing it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ..errors import FlexIPError
from ..settings.numbers import DTYPES

MAX_SEEDS = 1000


@dataclass(frozen=True)
class Sampling:
    """How a generating method samples its images; `flexip eval generate`'s shared flags."""

    base: str | None = None  # hub id or diffusers directory; None: the method's default (`Method.base`)
    seeds: int = 4  # images per prompt (and dial value): seeds 0..seeds-1
    steps: int = 50
    guidance: float = 7.5
    dtype: str = "float32"
    # Fixed for every method, so that methods differ only in themselves. The safety checker is off: its false
    # positives black out images and would count as failures of the method.
    scheduler: str = field(default="DDIMScheduler", init=False)
    safety_checker: bool = field(default=False, init=False)

    def __post_init__(self):
        if self.seeds < 1 or self.steps < 1:
            raise FlexIPError(f"--seeds and --steps must be at least 1, got {self.seeds} and {self.steps}")
        if self.seeds > MAX_SEEDS:  # the plan lists every image before the first is made
            raise FlexIPError(f"--seeds {self.seeds}: give at most {MAX_SEEDS} images per prompt (papers use 4 to 10)")
        if not math.isfinite(self.guidance):
            raise FlexIPError(
                f"--guidance={self.guidance} must be finite (7.5 is usual; <= 1 turns guidance off)"
            )
        if self.dtype not in DTYPES:
            raise FlexIPError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    def settings(self) -> dict:
        """What generation.json records of these beside the base, which the method resolves."""
        return {key: value for key, value in asdict(self).items() if key != "base"}
