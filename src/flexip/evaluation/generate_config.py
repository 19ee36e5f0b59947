"""The settings of one method's generation run, validated up front and recorded in generation.json.

Kept apart from `generate` so that the command line can offer the choices without importing torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import FlexIPError

METHODS = ("flexip", "ip-adapter", "sd", "folder")
DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class GenerationConfig:
    """How a method makes its images; written to generation.json and checked again on every resume."""

    method: str  # flexip | ip-adapter | sd | folder
    base: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # hub id or diffusers directory
    adapter: str | None = None  # flexip: the adapter directory
    preservation: tuple[float, ...] = (0.5,)  # flexip: the dial values, each one image per seed
    scale: tuple[float, ...] = (1.0,)  # flexip: the adapters' strength s (one value); ip-adapter: the dial
    ip_adapter: str | None = None  # ip-adapter: hub id or directory, as `load_ip_adapter` takes it
    ip_adapter_subfolder: str = "models"
    ip_adapter_weight: str = "ip-adapter_sd15.safetensors"
    images: str | None = None  # folder: images made elsewhere, <subject>/<NN>/<name>.png
    seeds: int = 4  # images per prompt (and dial value): seeds 0..seeds-1
    steps: int = 50
    guidance: float = 7.5
    dtype: str = "float32"
    # Fixed for every method, so that methods differ only in themselves (method.md §4). The safety checker is
    # off: its false positives black out images and would count as failures of the method.
    scheduler: str = field(default="DDIMScheduler", init=False)
    safety_checker: bool = field(default=False, init=False)

    def __post_init__(self):
        if self.method not in METHODS:
            raise FlexIPError(f"unknown --method {self.method!r}; choose one of {', '.join(METHODS)}")
        needs = {
            "flexip": ("adapter", "--adapter"),
            "ip-adapter": ("ip_adapter", "--ip-adapter"),
            "folder": ("images", "--images"),
        }
        if self.method in needs and getattr(self, needs[self.method][0]) is None:
            raise FlexIPError(f"--method {self.method} needs {needs[self.method][1]}")
        if self.method == "flexip" and len(self.scale) != 1:
            raise FlexIPError(
                f"--method flexip takes one --scale (the adapters' strength), got {list(self.scale)}; "
                "its dial is --preservation"
            )
        if any(not 0 <= value <= 1 for value in self.preservation):
            raise FlexIPError(f"--preservation values must lie in [0, 1], got {list(self.preservation)}")
        if any(value < 0 for value in self.scale):
            raise FlexIPError(f"--scale values must be >= 0, got {list(self.scale)}")
        if self.seeds < 1 or self.steps < 1:
            raise FlexIPError(f"--seeds and --steps must be at least 1, got {self.seeds} and {self.steps}")
        if self.dtype not in DTYPES:
            raise FlexIPError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    @property
    def dial_name(self) -> str | None:
        return {"flexip": "preservation", "ip-adapter": "scale"}.get(self.method)

    @property
    def dials(self) -> tuple[float | None, ...]:
        return {"flexip": self.preservation, "ip-adapter": self.scale}.get(self.method, (None,))

    def settings(self) -> dict:
        """What generation.json records: only what this method uses, plus the derived dial."""
        used = {
            "flexip": {"adapter", "preservation", "scale"},
            "ip-adapter": {"ip_adapter", "ip_adapter_subfolder", "ip_adapter_weight", "scale"},
            "sd": set(),
            "folder": {"images"},
        }[self.method]
        generated = {"base", "seeds", "steps", "guidance", "dtype", "scheduler", "safety_checker"}
        keep = used | (generated if self.method != "folder" else set())
        settings = {key: value for key, value in asdict(self).items() if key in keep}
        settings = {
            key: list(value) if isinstance(value, tuple) else value for key, value in settings.items()
        }
        return {"method": self.method, **settings, "dial_name": self.dial_name}
