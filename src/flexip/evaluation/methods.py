"""The methods `flexip eval generate` compares, one object each: FlexIP, IP-Adapter, the base model alone (the
floor; `sd` is another name of it) and images made elsewhere, on Stable Diffusion 1.5, SDXL and FLUX.1 bases.

A method tells `generate`
- `name`, `dial_name` and `dials`: its --method value, the name of its dial (None without one) and its values;
- `settings()`: what generation.json records about it, checked again on every resume;
- `samples(case)`: the file names of one case's images in each dial value's folder (`<seed>.png`, or the
  imported files' names);
- `load(device)`: load its models once and return the function that makes one `Unit`'s images, one per dial
  value in the order of `dials`.

Every generating method shares `Sampling` (base, scheduler, steps, guidance, seeds, safety checker off; the
scheduler and the default guidance the base family's, as in `flexip generate`), so
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
from ..model_paths import check_hub_model, split_model_reference
from ..settings.calibration import call_gates
from ..settings.dial import SCALE
from .benchmarks import IMAGE_SUFFIXES, Case
from .generate_config import Sampling
from .results import PlannedImage, readable_image

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from ..families.family import Family
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
    """A method that samples its images with a base model and DDIM under the shared `Sampling`."""

    sampling: Sampling = field(default_factory=Sampling)

    @property
    def base(self) -> str:
        """The base model the images are made with: --base, else Stable Diffusion v1.5."""
        return self.sampling.base or BASE_MODEL

    @property
    def family(self) -> str:
        """The name of the base's family ("sd15", "sdxl" or "flux"), which sets the sampler and the guidance."""
        return self._family.name

    @cached_property
    def _family(self) -> Family:
        return _family_of(self.base)

    def settings(self) -> dict:
        shared = self.sampling.settings(self.family)
        return {
            "method": self.name,
            "base": self.base,
            "family": self.family,
            **self._options(),
            **shared,
            "dial_name": self.dial_name,
        }

    def samples(self, case: Case) -> list[str]:
        return [f"{seed}.png" for seed in range(self.sampling.seeds)]

    def load(self, device: torch.device) -> Callable[[Unit], list[Image.Image]]:
        import torch
        from PIL import Image

        from ..schedulers import make_scheduler
        from ..settings.numbers import check_steps

        pipe = self._pipeline(getattr(torch, self.sampling.dtype))
        check_steps(self.sampling.steps, "--steps", most=pipe.scheduler.config.num_train_timesteps)
        if "safety_checker" in pipe.components:  # the Stable Diffusion families' (FLUX.1 has none)
            pipe.safety_checker = None
        pipe.scheduler = make_scheduler("ddim", pipe.scheduler)  # `flexip generate`'s default sampler
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        guidance = self.sampling.guidance_on(self.family)
        common = {"num_inference_steps": self.sampling.steps, "guidance_scale": guidance}
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


def _family_of(base: str) -> Family:
    """The family of the base at `base`, as its model_index.json (or a checkpoint file's keys) says; a hub id not
    in the local cache has that small file fetched first, as the loader would. Stable Diffusion 1.5 where it
    cannot be told (the hub unreachable: the loader then says what is wrong)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    from ..families.registry import SD15, family_of_base

    family = family_of_base(base)
    repo, subfolder = split_model_reference(base)
    if family is None and subfolder is None and repo.count("/") == 1 and not Path(repo).exists():
        try:
            hf_hub_download(repo, "model_index.json")
        except (HfHubHTTPError, OSError, ValueError):
            return SD15
        family = family_of_base(base)
    return family or SD15


def _base_pipeline(family: Family, base: str, dtype: torch.dtype):
    """The base's own text-to-image pipeline (`StableDiffusionPipeline`, `StableDiffusionXLPipeline` or
    `FluxPipeline`, as `family` says), in `dtype`."""
    from ..families.registry import load_base
    from ..pipeline.pipeline import cast_components

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

    @cached_property
    def _family(self) -> Family:
        """The family the adapter was trained on (a base of another is refused when the pipeline loads)."""
        from ..families.registry import family_named

        return family_named(self._adapter.config.base_family)

    @property
    def base(self) -> str:
        """--base, else the base model the adapter records (as `flexip generate --adapter` does)."""
        if self.sampling.base:
            return self.sampling.base
        base = self._adapter.resolve_model(self._adapter.config.base_model)
        if not base:
            raise FlexIPError(
                f"the adapter {self.adapter} does not record its base model; give the {self._family.title} base "
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


# Base family -> (subfolder, weight file) of the plain IP-Adapter that --ip-adapter-subfolder and
# --ip-adapter-weight default to: h94/IP-Adapter's on the Stable Diffusion families (IP-Adapter Plus:
# ip-adapter-plus_sd15 / ip-adapter-plus_sdxl_vit-h), XLabs-AI/flux-ip-adapter's on FLUX.1.
IP_ADAPTER_FILES = {"sd15": ("models", "ip-adapter_sd15.safetensors"),
                    "sdxl": ("sdxl_models", "ip-adapter_sdxl.safetensors"),
                    "flux": ("", "ip_adapter.safetensors")}  # fmt: skip
# The CLIP image encoder XLabs' FLUX.1 IP-Adapter was trained with (h94's sit in their image_encoder/ folders).
FLUX_IP_ADAPTER_ENCODER = "openai/clip-vit-large-patch14"
# Base family -> where its IP-Adapters are found, for messages.
IP_ADAPTER_REPOSITORIES = {
    "sd15": "h94/IP-Adapter",
    "sdxl": "h94/IP-Adapter",
    "flux": "XLabs-AI/flux-ip-adapter",
}


@dataclass(frozen=True)
class IPAdapterMethod(_Sampled):
    """IP-Adapter through diffusers' own `load_ip_adapter` (`IPAdapterMixin` on the Stable Diffusion families,
    `FluxIPAdapterMixin`, with XLabs' layout, on FLUX.1); its scale is pipeline-wide: one call per scale."""

    name = "ip-adapter"
    dial_name = "scale"
    scale: tuple[float, ...] = (1.0,)  # the dial values
    ip_adapter: str | None = None  # hub id or directory, as `load_ip_adapter` takes it
    ip_adapter_subfolder: str | None = None  # None: the base family's (IP_ADAPTER_FILES)
    ip_adapter_weight: str | None = None  # None: the base family's
    ip_adapter_image_encoder: str | None = None  # FLUX.1's CLIP image encoder; None: FLUX_IP_ADAPTER_ENCODER

    def __post_init__(self):
        self._needs("ip_adapter")
        _check_scales(self.scale)
        flux = self.family == "flux"
        if self.ip_adapter_image_encoder is not None and not flux:
            raise FlexIPError(
                f"--ip-adapter-image-encoder is for a FLUX.1 base, and {self.base} is {self._family.title}: "
                "h94's IP-Adapters bring their own image_encoder/; drop the option"
            )
        subfolder, weight = IP_ADAPTER_FILES[self.family]
        defaults = {"ip_adapter_subfolder": subfolder, "ip_adapter_weight": weight,
                    "ip_adapter_image_encoder": FLUX_IP_ADAPTER_ENCODER if flux else None}  # fmt: skip
        for option, default in defaults.items():
            if getattr(self, option) is None:
                object.__setattr__(self, option, default)

    @property
    def dials(self) -> tuple[float, ...]:
        return self.scale

    def settings(self) -> dict:
        """The shared record; the image encoder only on FLUX.1 (on Stable Diffusion the IP-Adapter's own)."""
        settings = super().settings()
        if self.ip_adapter_image_encoder is None:
            del settings["ip_adapter_image_encoder"]
        return settings

    def _weight_file(self) -> Path:
        """The IP-Adapter's weight file, local or fetched into the Hugging Face cache (as the loader would)."""
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError

        relative = "/".join(part for part in (self.ip_adapter_subfolder, self.ip_adapter_weight) if part)
        check_hub_model(self.ip_adapter, "--ip-adapter", relative)
        cannot = f"cannot load the IP-Adapter {self.ip_adapter!r}"
        if Path(self.ip_adapter).exists() or self.ip_adapter.startswith((".", "/", "~")):  # a local path
            path = Path(self.ip_adapter, relative)
            if not path.is_file():
                raise FlexIPError(
                    f"{cannot}: it has no {relative}; give the directory that has, or the file's place in it with "
                    "--ip-adapter-subfolder and --ip-adapter-weight"
                )
            return path
        subfolder = self.ip_adapter_subfolder or None
        try:
            return Path(hf_hub_download(self.ip_adapter, self.ip_adapter_weight, subfolder=subfolder))
        except (HfHubHTTPError, OSError, ValueError) as e:
            raise FlexIPError(f"{cannot}: cannot fetch {relative} ({str(e).splitlines()[0]})") from e

    def _check_kind(self, path: Path) -> None:
        """Refuse an IP-Adapter made for the other kind of denoiser, from its weight file's keys alone: FLUX.1's
        project the image tokens with biases (XLabs' `double_blocks.N.processor.ip_adapter_double_stream_k_proj`,
        `ip_adapter.N.to_k_ip.bias` once converted), a UNet's without (h94's `ip_adapter.N.to_k_ip.weight`)."""
        from safetensors import SafetensorError, safe_open

        if path.suffix != ".safetensors":
            return  # diffusers reads it; its own errors name what is wrong
        try:
            with safe_open(path, framework="pt") as file:
                keys = list(file.keys())
        except (OSError, SafetensorError) as e:
            raise FlexIPError(
                f"--ip-adapter: {path} is not a whole safetensors file ({e}); fetch it again"
            ) from e
        for_flux = any(key.startswith("double_blocks.") or key.endswith("to_k_ip.bias") for key in keys)
        base_is_flux = self.family == "flux"
        if for_flux != base_is_flux:
            made_for = "FLUX.1" if for_flux else "a Stable Diffusion UNet"
            raise FlexIPError(
                f"--ip-adapter {self.ip_adapter}: {path.name} is an IP-Adapter for {made_for}, but the base "
                f"{self.base} is {self._family.title}; give one made for {self._family.title} (such as "
                f"{IP_ADAPTER_REPOSITORIES[self.family]})"
            )

    def _pipeline(self, dtype: torch.dtype):
        self._check_kind(self._weight_file())  # before the base loads: fail at once
        encoder = {}
        if self.ip_adapter_image_encoder is not None:  # FLUX.1: the CLIP image encoder is a model of its own
            check_hub_model(self.ip_adapter_image_encoder, "--ip-adapter-image-encoder")
            path, subfolder = split_model_reference(self.ip_adapter_image_encoder)
            encoder = {
                "image_encoder_pretrained_model_name_or_path": path,
                "image_encoder_subfolder": subfolder or "",
                "image_encoder_dtype": dtype,
            }
        pipe = _base_pipeline(self._family, self.base, dtype)
        files = {"subfolder": self.ip_adapter_subfolder, "weight_name": self.ip_adapter_weight}
        try:
            pipe.load_ip_adapter(self.ip_adapter, **files, **encoder)
        # diffusers refuses a file with OSError or ValueError, a missing key with KeyError, a shape with RuntimeError
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise FlexIPError(
                f"cannot load the IP-Adapter {self.ip_adapter!r} (subfolder {self.ip_adapter_subfolder!r}, "
                f"weight {self.ip_adapter_weight!r}) into {self.base}: {str(e).splitlines()[0]}"
            ) from e
        return pipe

    def _images(self, pipe, prompt, reference, noise, common) -> list:
        images = []
        for scale in self.scale:
            pipe.set_ip_adapter_scale(scale)
            images += pipe(prompt, ip_adapter_image=reference(), generator=noise(), **common).images
        return images


@dataclass(frozen=True)
class PlainBaseMethod(_Sampled):
    """The base model alone (Stable Diffusion 1.5, SDXL or FLUX.1), without a reference: the floor every method
    should clear on identity."""

    name = "base"

    def _pipeline(self, dtype: torch.dtype):
        return _base_pipeline(self._family, self.base, dtype)

    def _images(self, pipe, prompt, reference, noise, common) -> list:
        return pipe(prompt, generator=noise(), **common).images


@dataclass(frozen=True)
class PlainSDMethod(PlainBaseMethod):
    """`--method sd`, another name of `base`: the same images, recorded under its own name (method "sd", the
    folder images/sd/), so that a results directory made under either name is continued under it."""

    name = "sd"


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
    cls.name: cls for cls in (FlexIPMethod, IPAdapterMethod, PlainBaseMethod, PlainSDMethod, FolderMethod)
}


def build_method(name: str, sampling: Sampling, **options: Any) -> Method:
    """The method `name` (a --method value) with the options it takes, named as its fields (`adapter`,
    `preservation`, `scale`, `ip_adapter`, ...); others are ignored, as on the command line."""
    if name not in METHODS:
        raise FlexIPError(f"unknown --method {name!r}; choose one of {', '.join(METHODS)}")
    cls = METHODS[name]
    given = {**options, "sampling": sampling}
    return cls(**{f.name: given[f.name] for f in fields(cls) if f.name in given})
