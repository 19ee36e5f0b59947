"""Generating a method's images for a benchmark: resumable, every setting recorded, shared across processes.

One unit of work is (case, seed): the images of every dial value for one prompt and starting noise, made in
one go so that they differ only in the dial. Units are split across processes with accelerate; each image is
written atomically and its content depends only on its unit, so any number of processes, and any number of
interruptions and restarts, give the same files.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import PartialState
from PIL import Image
from tqdm import tqdm

from .. import __version__
from ..atomic import atomic_write_bytes
from ..errors import FlexIPError
from .benchmarks import IMAGE_SUFFIXES, Benchmark, Case
from .generate_config import GenerationConfig
from .results import GENERATION_FILE, PlannedImage, read_generation, write_json, write_manifest


def _variant(config: GenerationConfig, dial: float | None) -> str:
    return config.method if dial is None else f"{config.dial_name}-{dial:g}"


@dataclass(frozen=True)
class Unit:
    """The images of one case and seed, one per dial value (or one imported image)."""

    case: Case
    seed: int | None
    images: tuple[PlannedImage, ...]
    source: Path | None = None  # folder: the image to copy


def plan(config: GenerationConfig, benchmark: Benchmark) -> list[Unit]:
    """The units of work in a fixed order: for each case and seed, one image per dial value."""
    units = []
    for case in benchmark.cases:
        if config.method == "folder":
            for source in _folder_images(config.images, case):
                image = f"images/folder/{case.subject}/{case.prompt_index:02d}/{source.name}"
                units.append(Unit(case, None, (_planned(case, image, source.stem, None),), source))
            continue
        for seed in range(config.seeds):
            images = tuple(
                _planned(
                    case,
                    f"images/{_variant(config, dial)}/{case.subject}/{case.prompt_index:02d}/{seed}.png",
                    str(seed),
                    dial,
                )
                for dial in config.dials
            )
            units.append(Unit(case, seed, images))
    return units


def _planned(case: Case, image: str, sample: str, dial: float | None) -> PlannedImage:
    return PlannedImage(image=image, sample=sample, dial=dial, **asdict(case))


def _folder_images(root: str, case: Case) -> list[Path]:
    directory = Path(root) / case.subject / f"{case.prompt_index:02d}"
    found = sorted(path for path in directory.glob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise FlexIPError(
            f"--images {root}: no images for subject {case.subject}, prompt {case.prompt_index} "
            f"({case.prompt!r}); expected {directory}/<name>.png"
        )
    return found


def _check_resume(out: Path, settings: dict) -> None:
    """Refuse to mix settings in one results directory: its images would not be comparable."""
    if not (out / GENERATION_FILE).is_file():
        return
    previous, _ = read_generation(out)
    changed = sorted(
        key for key in settings.keys() | previous.keys() if settings.get(key) != previous.get(key)
    )
    if changed:
        details = "; ".join(
            f"{key}: {previous.get(key)!r} before, {settings.get(key)!r} now" for key in changed
        )
        raise FlexIPError(
            f"{out} holds results made with other settings ({details}); give a new --out, or the "
            "same settings to resume"
        )


def generate(config: GenerationConfig, benchmark: Benchmark, out: str | os.PathLike) -> int:
    """Make (or finish making) every image of `config` on `benchmark` under `out`; returns how many this
    process made. Run it in every process of an accelerate launch: the work is shared between them."""
    out = Path(out)
    # accelerate spreads processes without a GPU (over gloo) only when told they are CPU processes.
    state = PartialState(cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1)
    settings = {
        "format_version": 1,
        "label": out.resolve().name,
        **config.settings(),
        "benchmark": {"name": benchmark.name, **benchmark.protocol},
        "flexip_version": __version__,
    }
    units = plan(config, benchmark)
    _check_resume(out, settings)  # every process checks, so that none waits for a main process that failed
    if state.is_main_process:
        write_json(out / GENERATION_FILE, settings)
        write_manifest(out, [image for unit in units for image in unit.images])
    todo = [unit for unit in units if not all((out / image.image).is_file() for image in unit.images)]
    state.wait_for_everyone()  # every process must list the work left before any adds to it
    made = 0
    with state.split_between_processes(todo) as mine:
        if mine:
            make = _copy if config.method == "folder" else _image_maker(config, state.device)
            for unit in tqdm(
                mine, desc=f"generating {out.name}", unit="prompt", disable=not state.is_local_main_process
            ):
                for image, picture in zip(unit.images, make(unit)):
                    if not (out / image.image).is_file():  # images already there are kept as they are
                        _save(picture, out / image.image)
                        made += 1
    state.wait_for_everyone()
    return made


def _copy(unit: Unit) -> list[bytes]:
    return [unit.source.read_bytes()]


def _save(picture: Image.Image | bytes, path: Path) -> None:
    if isinstance(picture, Image.Image):
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        picture = buffer.getvalue()
    atomic_write_bytes(path, picture)


def _image_maker(config: GenerationConfig, device: torch.device) -> Callable[[Unit], list[Image.Image]]:
    """Load the method's pipeline once; returns the function that makes one unit's images."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    dtype = getattr(torch, config.dtype)
    if config.method == "flexip":
        from ..pipeline import FlexIPPipeline

        pipe = FlexIPPipeline.from_pretrained(base=config.base, adapter=config.adapter, torch_dtype=dtype)
    else:
        try:
            pipe = StableDiffusionPipeline.from_pretrained(config.base, torch_dtype=dtype)
        except (OSError, ValueError) as e:
            raise FlexIPError(
                f"cannot load a Stable Diffusion base model from {config.base!r}: {str(e).splitlines()[0]}"
            ) from e
        if config.method == "ip-adapter":
            try:
                pipe.load_ip_adapter(
                    config.ip_adapter,
                    subfolder=config.ip_adapter_subfolder,
                    weight_name=config.ip_adapter_weight,
                )
            except (OSError, ValueError) as e:
                raise FlexIPError(
                    f"cannot load the IP-Adapter {config.ip_adapter!r} (subfolder "
                    f"{config.ip_adapter_subfolder!r}, weight {config.ip_adapter_weight!r}): "
                    f"{str(e).splitlines()[0]}"
                ) from e
    pipe.safety_checker = None
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    common = {"num_inference_steps": config.steps, "guidance_scale": config.guidance}
    references: dict[str, object] = {}  # the current subject's reference, loaded (and encoded) once

    def reference(path: str):
        if path not in references:
            references.clear()
            with Image.open(path) as image:
                image = image.convert("RGB")
            references[path] = pipe.flexip.encode_reference(image) if config.method == "flexip" else image
        return references[path]

    def make(unit: Unit) -> list[Image.Image]:
        # Every image of a unit starts from the same noise: a CPU generator seeded with the unit's seed.
        def noise() -> torch.Generator:
            return torch.Generator("cpu").manual_seed(unit.seed)

        prompt = unit.case.prompt
        if config.method == "flexip":
            return pipe(
                prompt,
                reference=reference(unit.case.reference),
                preservation=list(config.preservation),
                scale=config.scale[0],
                generator=noise(),
                **common,
            ).images
        if config.method == "sd":
            return pipe(prompt, generator=noise(), **common).images
        images = []
        for scale in config.scale:  # diffusers' IP-Adapter scale is one value per call
            pipe.set_ip_adapter_scale(scale)
            images += pipe(
                prompt, ip_adapter_image=reference(unit.case.reference), generator=noise(), **common
            ).images
        return images

    return make
