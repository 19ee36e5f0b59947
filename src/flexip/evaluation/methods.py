"""The methods `flexip eval generate` compares, one object each: FlexIP, IP-Adapter, plain Stable Diffusion
(the floor) and images made elsewhere.

A method tells `generate`
- `name`, `dial_name` and `dials`: its --method value, the name of its dial (None without one) and its values;
- `settings()`: what generation.json records about it, checked again on every resume;
- `samples(case)`: the file names of one case's images in each dial value's folder (`<seed>.png`, or the
  imported files' names);
- `load(device)`: load its models once and return the function that makes one `Unit`'s images, one per dial
  value in the order of `dials`.

Every generating method shares `Sampling` (base, scheduler, steps, guidance, seeds, safety checker off), so
methods differ only in themselves (docs/method.md §4). Importing this module imports neither torch nor
diffusers (each `load` does), so that the command line can offer the choices quickly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..defaults import BASE_MODEL
from ..denoisers.blocks import BLOCK_NAMES
from ..errors import FlexIPError
from ..families.names import DENOISER_OF_FAMILY
from ..settings.calibration import call_gates
from ..settings.dial import SCALE
from .benchmarks import IMAGE_SUFFIXES, Case
from .generate_config import Sampling
from .results import PlannedImage, readable_image

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from ..models.adapter import FlexIPAdapter


@dataclass(frozen=True)
class Unit:
    """The images of one case and sample, one per dial value, from one noise (or one imported image)."""

    case: Case
    file: str  # the images' file name in every dial value's folder: `<seed>.png`, or an imported image's name
    images: tuple[PlannedImage, ...]

    @property
    def seed(self) -> int:
        return int(Path(self.file).stem)


class Method(ABC):
    """One way of making a benchmark's images (see the module's docstring)."""

    name: ClassVar[str]  # the --method value; also the image folder of a method without a dial
    dial_name: ClassVar[str | None] = None  # "preservation", "scale", or None without a dial

    @property
    def dials(self) -> tuple[float | None, ...]:
        """The dial values, one image each per sample; (None,) without a dial."""
        return (None,)

    @abstractmethod
    def settings(self) -> dict:
        """What generation.json records: the method, its own options, and the derived dial_name."""

    @abstractmethod
    def samples(self, case: Case) -> list[str]:
        """The file names of `case`'s images in each dial value's folder."""

    @abstractmethod
    def load(self, device: torch.device) -> Callable[[Unit], list[Image.Image | bytes]]:
        """Load the method's models once; returns the function that makes one unit's images."""

    def _options(self) -> dict:
        """The method's own options (every dataclass field but the shared sampling), as JSON values."""
        options = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "sampling"}
        return {key: list(value) if isinstance(value, tuple) else value for key, value in options.items()}

    def _needs(self, option: str) -> None:
        if getattr(self, option) is None:
            raise FlexIPError(f"--method {self.name} needs --{option.replace('_', '-')}")


@dataclass(frozen=True)
class _Sampled(Method):
    """A method that samples its images with Stable Diffusion and DDIM under the shared `Sampling`."""

    sampling: Sampling = field(default_factory=Sampling)

    @property
    def base(self) -> str:
        """The base model the images are made with: --base, else Stable Diffusion v1.5."""
        return self.sampling.base or BASE_MODEL

    def settings(self) -> dict:
        shared = self.sampling.settings()
        return {
            "method": self.name,
            "base": self.base,
            **self._options(),
            **shared,
            "dial_name": self.dial_name,
        }

    def samples(self, case: Case) -> list[str]:
        return [f"{seed}.png" for seed in range(self.sampling.seeds)]

    def load(self, device: torch.device) -> Callable[[Unit], list[Image.Image]]:
        import torch
        from diffusers import DDIMScheduler
        from PIL import Image

        from ..settings.numbers import check_steps

        pipe = self._pipeline(getattr(torch, self.sampling.dtype))
        check_steps(self.sampling.steps, "--steps", most=pipe.scheduler.config.num_train_timesteps)
        pipe.safety_checker = None
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        common = {"num_inference_steps": self.sampling.steps, "guidance_scale": self.sampling.guidance}
        references: dict[str, Any] = {}  # the current subject's reference, loaded (and encoded) once

        def reference(path: str) -> Any:
            if path not in references:
                references.clear()
                with Image.open(path) as image:
                    image = image.convert("RGB")
                references[path] = self._encode(pipe, image)
            return references[path]

        def make(unit: Unit) -> list[Image.Image]:
            # Every image of a unit starts from the same noise: a CPU generator seeded with the unit's seed.
            def noise() -> torch.Generator:
                return torch.Generator("cpu").manual_seed(unit.seed)

            return self._images(pipe, unit.case.prompt, lambda: reference(unit.case.reference), noise, common)

        return make

    @abstractmethod
    def _pipeline(self, dtype: torch.dtype):
        """The method's pipeline, loaded on the CPU."""

    def _encode(self, pipe, image: Image.Image) -> Any:
        """The reference as the pipeline takes it."""
        return image

    @abstractmethod
    def _images(self, pipe, prompt: str, reference: Callable[[], Any], noise: Callable, common: dict) -> list:
        """One unit's images, one per dial value; `noise()` gives a fresh generator at the unit's seed."""


def _stable_diffusion(base: str, dtype: torch.dtype):
    """The base's own text-to-image pipeline: Stable Diffusion 1.5's or SDXL's, as its model_index.json says."""
    from ..families.registry import SD15, family_of_base, load_base
    from ..pipeline.pipeline import cast_components

    family = family_of_base(base) or SD15
    try:
        pipe = load_base(family, base)
        cast_components(pipe, dtype)  # as FlexIPPipeline.from_pretrained casts, on any diffusers version
        return pipe
    except FlexIPError:
        raise
    except (OSError, ValueError, TypeError) as e:
        raise FlexIPError(
            f"cannot load a {family.title} base model from {base!r}: {str(e).splitlines()[0]}"
        ) from e


def _check_scales(scale: tuple[float, ...]) -> None:
    """The bounds the pipelines hold the adapters' strength to, so that no value is taken here that a pipeline
    would refuse (or, in diffusers' IP-Adapter, silently turn into a blank image)."""
    for value in scale:
        SCALE.number(value, "--scale")


@dataclass(frozen=True)
class FlexIPMethod(_Sampled):
    """FlexIP: one batch per unit over the preservation values, from one starting noise."""

    name = "flexip"
    dial_name = "preservation"
    adapter: str | None = None  # the adapter directory
    preservation: tuple[float, ...] = (0.5,)  # the dial values
    scale: tuple[float, ...] = (1.0,)  # the adapters' strength s: one value (as --scale gives it)

    def __post_init__(self):
        self._needs("adapter")
        if len(self.scale) != 1:
            raise FlexIPError(
                f"--method flexip takes one --scale (the adapters' strength), got {list(self.scale)}; "
                "its dial is --preservation"
            )
        if any(not 0 <= value <= 1 for value in self.preservation):
            raise FlexIPError(f"--preservation values must lie in [0, 1], got {list(self.preservation)}")
        _check_scales(self.scale)

    @property
    def dials(self) -> tuple[float, ...]:
        return self.preservation

    def settings(self) -> dict:
        """The shared record, and "gate": the raw g each preservation value stands for on this adapter (the
        values themselves on an adapter without a calibration)."""
        config = self._adapter.config
        names = BLOCK_NAMES[DENOISER_OF_FAMILY[config.base_family]]
        gates = call_gates(list(self.preservation), None, config.calibration, list(config.layers), names)
        return {**super().settings(), "gate": [gate.record() for gate in gates]}

    @cached_property
    def _adapter(self) -> FlexIPAdapter:
        """The adapter, read once: its config names the default base, and `load` uses it."""
        from ..models.adapter import FlexIPAdapter

        return FlexIPAdapter.from_pretrained(self.adapter)

    @property
    def base(self) -> str:
        """--base, else the base model the adapter records (as `flexip generate --adapter` does)."""
        if self.sampling.base:
            return self.sampling.base
        base = self._adapter.resolve_model(self._adapter.config.base_model)
        if not base:
            raise FlexIPError(
                f"the adapter {self.adapter} does not record its base model; give the Stable Diffusion base "
                "it was trained on with --base"
            )
        return base

    def _pipeline(self, dtype: torch.dtype):
        from ..pipeline.pipeline import FlexIPPipeline

        return FlexIPPipeline.from_pretrained(self.base, adapter=self._adapter, torch_dtype=dtype)

    def _encode(self, pipe, image: Image.Image) -> Any:
        return pipe.flexip.encode_reference(image)

    def _images(self, pipe, prompt, reference, noise, common) -> list:
        preservation, scale = list(self.preservation), self.scale[0]
        return pipe(
            prompt, reference=reference(), preservation=preservation, scale=scale, generator=noise(), **common
        ).images


# Base family -> (subfolder, weight file) of the plain IP-Adapter in h94/IP-Adapter, which --ip-adapter-subfolder
# and --ip-adapter-weight default to (IP-Adapter Plus: ip-adapter-plus_sd15 / ip-adapter-plus_sdxl_vit-h).
IP_ADAPTER_FILES = {"sd15": ("models", "ip-adapter_sd15.safetensors"),
                    "sdxl": ("sdxl_models", "ip-adapter_sdxl.safetensors")}  # fmt: skip


@dataclass(frozen=True)
class IPAdapterMethod(_Sampled):
    """IP-Adapter through diffusers' own `load_ip_adapter`; its scale is pipeline-wide: one call per scale."""

    name = "ip-adapter"
    dial_name = "scale"
    scale: tuple[float, ...] = (1.0,)  # the dial values
    ip_adapter: str | None = None  # hub id or directory, as `load_ip_adapter` takes it
    ip_adapter_subfolder: str | None = None  # None: the base family's (IP_ADAPTER_FILES)
    ip_adapter_weight: str | None = None  # None: the base family's

    def __post_init__(self):
        self._needs("ip_adapter")
        _check_scales(self.scale)
        from ..families.registry import SD15, family_of_base

        # h94/IP-Adapter's layout: the SD1.5 files under models/, the SDXL ones under sdxl_models/.
        subfolder, weight = IP_ADAPTER_FILES[(family_of_base(self.base) or SD15).name]
        object.__setattr__(self, "ip_adapter_subfolder", self.ip_adapter_subfolder or subfolder)
        object.__setattr__(self, "ip_adapter_weight", self.ip_adapter_weight or weight)

    @property
    def dials(self) -> tuple[float, ...]:
        return self.scale

    def _pipeline(self, dtype: torch.dtype):
        from ..model_paths import check_hub_model

        weight = f"{self.ip_adapter_subfolder}/{self.ip_adapter_weight}"
        check_hub_model(self.ip_adapter, "--ip-adapter", weight)  # before the base loads: fail at once
        pipe = _stable_diffusion(self.base, dtype)
        try:
            pipe.load_ip_adapter(
                self.ip_adapter, subfolder=self.ip_adapter_subfolder, weight_name=self.ip_adapter_weight
            )
        except (OSError, ValueError) as e:
            raise FlexIPError(
                f"cannot load the IP-Adapter {self.ip_adapter!r} (subfolder {self.ip_adapter_subfolder!r}, "
                f"weight {self.ip_adapter_weight!r}): {str(e).splitlines()[0]}"
            ) from e
        return pipe

    def _images(self, pipe, prompt, reference, noise, common) -> list:
        images = []
        for scale in self.scale:
            pipe.set_ip_adapter_scale(scale)
            images += pipe(prompt, ip_adapter_image=reference(), generator=noise(), **common).images
        return images


@dataclass(frozen=True)
class PlainSDMethod(_Sampled):
    """Stable Diffusion without a reference: the floor every method should clear on identity."""

    name = "sd"

    def _pipeline(self, dtype: torch.dtype):
        return _stable_diffusion(self.base, dtype)

    def _images(self, pipe, prompt, reference, noise, common) -> list:
        return pipe(prompt, generator=noise(), **common).images


@dataclass(frozen=True)
class FolderMethod(Method):
    """Images made elsewhere, `<images>/<subject>/<NN>/<name>.png`, taken in as they are."""

    name = "folder"
    images: str | None = None

    def __post_init__(self):
        self._needs("images")

    def settings(self) -> dict:
        return {"method": self.name, **self._options(), "dial_name": self.dial_name}

    def _directory(self, case: Case) -> Path:
        return Path(self.images) / case.subject / f"{case.prompt_index:02d}"

    def samples(self, case: Case) -> list[str]:
        directory = self._directory(case)
        found = sorted(path.name for path in directory.glob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise FlexIPError(
                f"--images {self.images}: no images for subject {case.subject}, prompt {case.prompt_index} "
                f"({case.prompt!r}); expected {directory}/<name>.png"
            )
        for name in found:  # before anything is written, as generating methods check their models
            if not readable_image(directory / name):
                raise FlexIPError(f"{directory / name} is not a whole image file; replace it or move it away")
        return found

    def load(self, device: torch.device) -> Callable[[Unit], list[bytes]]:
        def copy(unit: Unit) -> list[bytes]:
            return [(self._directory(unit.case) / unit.file).read_bytes()]

        return copy


METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (FlexIPMethod, IPAdapterMethod, PlainSDMethod, FolderMethod)
}


def build_method(name: str, sampling: Sampling, **options: Any) -> Method:
    """The method `name` (a --method value) with the options it takes, named as its fields (`adapter`,
    `preservation`, `scale`, `ip_adapter`, ...); others are ignored, as on the command line."""
    if name not in METHODS:
        raise FlexIPError(f"unknown --method {name!r}; choose one of {', '.join(METHODS)}")
    cls = METHODS[name]
    given = {**options, "sampling": sampling}
    return cls(**{f.name: given[f.name] for f in fields(cls) if f.name in given})
