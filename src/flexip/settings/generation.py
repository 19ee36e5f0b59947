"""What a front end sets for a generation, as typed values any front end builds (the command line, a web page).

`ModelSettings` says which models to load and how; `SamplingSettings` what one generation does with them
(`flexip.pipeline.front_end` loads and generates). Nothing here knows argparse or imports torch: the command
line builds these values from its flags before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import FlexIPError
from ..schedulers import SCHEDULERS
from .dial import SCALE, Dial
from .numbers import DTYPES, check_guidance, check_seed, check_steps


@dataclass(frozen=True)
class ModelSettings:
    adapter: str | None = None  # FlexIP adapter directory; None: the embedded default model
    base: str | None = None  # base model: hub id, directory or .safetensors file; None: the one the adapter records
    base_config: str | None = None  # a single-file base's configs: a diffusers directory or hub id of its family
    device: str | None = None  # torch device; None: cuda when available, else cpu
    dtype: str | None = None  # float32 | float16 | bfloat16; None: float16 on CUDA, float32 otherwise
    scheduler: str = "ddim"  # a name of flexip.schedulers.SCHEDULERS
    # An AnimateDiff motion adapter (hub id or directory) for a Stable Diffusion 1.5 base: clips, not images.
    motion_adapter: str | None = None
    # How the front end's user names these settings, before each name in a message: "--" on the command line.
    prefix: str = field(default="", compare=False, repr=False)

    def __post_init__(self):
        if self.dtype is not None and self.dtype not in DTYPES:
            raise FlexIPError(f"{self.prefix}dtype={self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.scheduler not in SCHEDULERS:
            raise FlexIPError(
                f"{self.prefix}scheduler={self.scheduler!r} is not one of {', '.join(sorted(SCHEDULERS))}"
            )


@dataclass(frozen=True)
class SamplingSettings:
    steps: int = 50  # denoising steps
    guidance: float = 7.5  # classifier-free guidance scale; <= 1 turns it off
    scale: float | dict | Dial = 1.0  # the adapters' strength s, or per block ({"up": 0.8}); 0 is the base model
    seed: int = 0  # drives a CPU generator: the same seed gives the same image on any device
    negative_prompt: str | None = None
    frames: int | None = None  # a clip's frame count (with a motion adapter); None: an image
    # How the front end's user names these settings, before each name in a message: "--" on the command line.
    prefix: str = field(default="", compare=False, repr=False)

    def __post_init__(self):
        check_steps(self.steps, name=f"{self.prefix}steps")
        object.__setattr__(self, "guidance", check_guidance(self.guidance, name=f"{self.prefix}guidance"))
        if not isinstance(self.scale, Dial):
            object.__setattr__(self, "scale", Dial(self.scale, f"{self.prefix}scale", SCALE))
        check_seed(self.seed, name=f"{self.prefix}seed")
        frames = self.frames
        if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int) or frames < 1):
            raise FlexIPError(f"{self.prefix}frames={self.frames!r}: give a whole number of frames, 1 or more")
