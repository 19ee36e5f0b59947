"""The sampling settings every generating method shares, validated up front and recorded in generation.json.

Methods differ only in themselves (docs/method.md §4): the same base, scheduler, steps, guidance and seeds. The
guidance and the sampler are the base family's, as in `flexip generate`: guidance 7.5 on Stable Diffusion and
3.5 on FLUX.1 (its guidance embedding; true CFG stays off), DDIM, which on FLUX.1, a flow-matching base, is its
flow-matching Euler. Kept free of torch, like `methods`, so that the command line can offer the choices without
importing it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ..errors import FlexIPError
from ..families.names import DEFAULT_GUIDANCE
from ..schedulers import FLOW_MATCHING, SCHEDULERS
from ..settings.numbers import DTYPES

MAX_SEEDS = 1000


@dataclass(frozen=True)
class Sampling:
    """How a generating method samples its images; `flexip eval generate`'s shared flags."""

    base: str | None = None  # hub id or diffusers directory; None: the method's default (`Method.base`)
    seeds: int = 4  # images per prompt (and dial value): seeds 0..seeds-1
    steps: int = 50
    guidance: float | None = None  # None: the base family's (DEFAULT_GUIDANCE)
    dtype: str = "float32"
    # Fixed for every method, so that methods differ only in themselves. The safety checker is off: its false
    # positives black out images and would count as failures of the method.
    safety_checker: bool = field(default=False, init=False)

    def __post_init__(self):
        if self.seeds < 1 or self.steps < 1:
            raise FlexIPError(f"--seeds and --steps must be at least 1, got {self.seeds} and {self.steps}")
        if self.seeds > MAX_SEEDS:  # the plan lists every image before the first is made
            raise FlexIPError(f"--seeds {self.seeds}: give at most {MAX_SEEDS} images per prompt (papers use 4 to 10)")
        if self.guidance is not None and not math.isfinite(self.guidance):
            raise FlexIPError(
                f"--guidance={self.guidance} must be finite (7.5 is usual; <= 1 turns guidance off)"
            )
        if self.dtype not in DTYPES:
            raise FlexIPError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    def guidance_on(self, family: str) -> float:
        """The guidance scale on a base of `family` (a family's name): --guidance, else the family's."""
        return DEFAULT_GUIDANCE[family] if self.guidance is None else self.guidance

    def settings(self, family: str) -> dict:
        """What generation.json records of these on a base of `family`, beside the base the method resolves."""
        # `flexip generate`'s "ddim": DDIM, on FLUX.1 (a flow-matching base) its flow-matching Euler
        sampler = FLOW_MATCHING["ddim"] if family == "flux" else SCHEDULERS["ddim"]
        shared = {key: value for key, value in asdict(self).items() if key not in ("base", "safety_checker")}
        return {**shared, "guidance": self.guidance_on(family), "scheduler": sampler,
                "safety_checker": self.safety_checker}  # fmt: skip
