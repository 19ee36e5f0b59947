"""What every front end (the command line, a web page) does with its settings (`flexip.settings.generation`):
load the pipeline they name (`load_pipeline`), generate (`generate`), and record everything needed to
reproduce an image beside it (`record`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import __version__
from ..errors import FlexIPError
from ..schedulers import make_scheduler
from ..settings.generation import ModelSettings, SamplingSettings
from .embedded import EmbeddedModel, embedded_model
from .pipeline import FlexIPPipeline


@dataclass
class LoadedModel:
    pipe: FlexIPPipeline  # on the chosen device, with the chosen scheduler
    embedded: EmbeddedModel | None  # the embedded default, when no adapter was named
    record: dict  # base, adapter, device and dtype as resolved, for the files written


def resolve_device(device: str | None, name: str = "device") -> torch.device:
    """A torch device that exists on this machine; `name` is how the caller's user calls the setting."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as e:
        raise FlexIPError(f"{name} {device!r} is not a torch device ({e}); use cpu, cuda or cuda:N") from e
    if resolved.type == "cpu":
        return resolved
    backend = getattr(torch, resolved.type, None)  # torch.cuda, torch.mps, torch.xpu, ...
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        raise FlexIPError(f"{name} {device}: {resolved.type} is not available on this machine; use cpu")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if resolved.index is not None and resolved.index >= count:
        raise FlexIPError(f"{name} {device}: this machine has {count} {resolved.type} device(s), numbered from 0")
    return resolved


def load_pipeline(settings: ModelSettings) -> LoadedModel:
    """The pipeline `settings` name (the embedded default model without an adapter)."""
    device = resolve_device(settings.device, name=f"{settings.prefix}device")
    dtype_name = settings.dtype or ("float16" if device.type == "cuda" else "float32")
    embedded = None
    if settings.adapter is None:
        embedded = embedded_model()
        adapter, base = embedded.models.adapter, settings.base or embedded.models.base
    else:
        adapter, base = settings.adapter, settings.base
    pipe = FlexIPPipeline.from_pretrained(
        base, adapter=adapter, torch_dtype=getattr(torch, dtype_name), base_config=settings.base_config
    )
    pipe.scheduler = make_scheduler(settings.scheduler, pipe.scheduler)
    pipe.to(device)
    record = {"base": pipe.config._name_or_path, "adapter": str(adapter), "device": str(device), "dtype": dtype_name}
    if settings.base_config:
        record["base_config"] = settings.base_config
    return LoadedModel(pipe, embedded, record)


def generate(
    loaded: LoadedModel, prompt: str, reference, values: list, sampling: SamplingSettings,
    on_step: Callable[[int], None] | None = None, reference_weights: list[float] | None = None,
    reference_masks: list | None = None,
) -> list:  # fmt: skip
    """One image per preservation value (any of the dial's forms), in one batch from the same starting noise.

    `reference` is one image or a list (`FlexIPPipeline.__call__`: with `reference_weights`, `reference_masks`).
    `on_step(done)` runs after each denoising step (a web page's progress bar); an exception it raises stops
    the generation there (its cancel button).
    """

    def step_end(pipe, step: int, timestep, tensors: dict) -> dict:
        on_step(step + 1)
        return tensors

    generator = torch.Generator("cpu").manual_seed(sampling.seed)  # CPU noise: the same image on any device
    return loaded.pipe(
        prompt, reference=reference, preservation=values, scale=sampling.scale,
        reference_weights=reference_weights, reference_masks=reference_masks,
        num_inference_steps=sampling.steps, guidance_scale=sampling.guidance,
        negative_prompt=sampling.negative_prompt, generator=generator,
        callback_on_step_end=None if on_step is None else step_end,
    ).images  # fmt: skip


def record(
    prompt: str, reference: str | list[str], models: ModelSettings, sampling: SamplingSettings, loaded: LoadedModel,
    reference_weights: list[float] | None = None, reference_masks: list[str] | None = None,
) -> dict:  # fmt: skip
    """Everything needed to reproduce an image, recorded beside it (docs/formats.md). Several references are a
    list of names, with their weights and mask files when given; one reference stays a name."""
    references = {"reference": reference[0] if isinstance(reference, list) and len(reference) == 1 else reference}
    if reference_weights is not None:
        references["reference_weights"] = list(reference_weights)
    if reference_masks is not None:
        references["reference_masks"] = list(reference_masks)
    return {
        "flexip_version": __version__,
        "prompt": prompt,
        "negative_prompt": sampling.negative_prompt,
        **references,
        "seed": sampling.seed,
        "scheduler": models.scheduler,
        "scale": sampling.scale.record(),
        "guidance": sampling.guidance,
        "steps": sampling.steps,
        **loaded.record,
    }
