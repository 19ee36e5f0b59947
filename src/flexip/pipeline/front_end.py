"""What every front end (the command line, a web page) does with its settings (`flexip.settings.generation`):
load the pipeline they name (`load_pipeline`: with a motion adapter, diffusers' `AnimateDiffPipeline` with
FlexIP loaded), generate images or clips (`generate`), record everything needed to reproduce an
image beside it (`record`, and `dial_records` for the dial: the value given and the raw gate it stands for),
label the dial's values (`dial_labels`), and say what the embedded demo model is when it gets a user's picture
(`note_demo_model`)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import __version__
from ..demo_subject import DEMO_REFERENCE, demo_reference
from ..errors import FlexIPError
from ..families.names import GPU_DTYPE
from ..families.registry import SD15, SDXL, family_named
from ..model_paths import load_weights
from ..models.adapter import FlexIPAdapter
from ..models.config_file import CONFIG_NAME, read_config
from ..schedulers import make_scheduler
from ..settings.calibration import call_gates
from ..settings.dial import Dial, DialSchedule, sweep_record
from ..settings.dial_map import MappedSchedule
from ..settings.generation import ModelSettings, SamplingSettings
from .embedded import EmbeddedModel, embedded_model
from .pipeline import FlexIPPipeline, _stock_pipeline, cast_components
from .stock import load_flexip


@dataclass
class LoadedModel:
    pipe: FlexIPPipeline  # on the chosen device, with the chosen scheduler; with a motion adapter, an
    # AnimateDiffPipeline with FlexIP loaded
    embedded: EmbeddedModel | None  # the embedded default, when no adapter was named
    record: dict  # base, adapter, device and dtype as resolved, for the files written
    # Set once `note_demo_model` has spoken; the copies a web page makes of this object (one per scheduler)
    # share it, so a server says it once.
    noted: threading.Event = field(default_factory=threading.Event)


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
    dtype_name = settings.dtype or (_gpu_dtype(settings.adapter) if device.type == "cuda" else "float32")
    embedded = None
    with _without_file_bars():
        if settings.adapter is None:
            embedded = embedded_model()
            adapter, base = embedded.models.adapter, settings.base or embedded.models.base
        else:
            adapter, base = settings.adapter, settings.base
        if settings.motion_adapter is None:
            pipe = FlexIPPipeline.from_pretrained(
                base, adapter=adapter, torch_dtype=getattr(torch, dtype_name), base_config=settings.base_config
            )
        else:
            pipe = _animation_pipeline(base, adapter, settings, getattr(torch, dtype_name))
    pipe.scheduler = make_scheduler(settings.scheduler, pipe.scheduler)
    # diffusers warns that a float16 pipeline moved to a CPU will fail; it runs there (slowly), so the
    # warning would be untrue.
    pipe.to(device, silence_dtype_warnings=True)
    record = {"base": pipe.config._name_or_path, "adapter": str(adapter), "device": str(device), "dtype": dtype_name}
    if settings.base_config:
        record["base_config"] = settings.base_config
    if settings.motion_adapter is not None:
        record["motion_adapter"] = settings.motion_adapter
    return LoadedModel(pipe, embedded, record)


def _animation_pipeline(base: str | None, adapter: str, settings: ModelSettings, dtype: torch.dtype):
    """diffusers' AnimateDiff pipeline (`AnimateDiffPipeline`, or `AnimateDiffSDXLPipeline` for an SDXL adapter) of
    the adapter's base (or `base`) and the motion adapter `settings` name (safetensors only), with FlexIP loaded
    (`load_flexip`)."""
    from diffusers import AnimateDiffPipeline, AnimateDiffSDXLPipeline, MotionAdapter

    adapter = FlexIPAdapter.from_pretrained(adapter)
    family = family_named(adapter.config.base_family)
    if family not in (SD15, SDXL):
        raise FlexIPError(
            f"the adapter was trained for {family.title}, but AnimateDiff's motion adapters run on Stable Diffusion "
            "1.5 and SDXL: give an adapter trained on one of those"
        )
    base = base or adapter.resolve_model(adapter.config.base_model)
    if not base:
        raise FlexIPError(f"the adapter does not record its base model; name the {family.title} base it was trained on")
    stock = _stock_pipeline(family, base, settings.base_config, {})
    motion = load_weights(MotionAdapter, settings.motion_adapter)
    motion_channels, unet_channels = (tuple(model.config.block_out_channels) for model in (motion, stock.unet))
    if motion_channels != unet_channels:
        raise FlexIPError(
            f"{settings.prefix}motion-adapter {settings.motion_adapter}: its motion modules are for UNet blocks of "
            f"{motion_channels} channels, the base's UNet has {unet_channels}; give a motion adapter made for "
            "this base"
        )
    parts = ("vae", "unet", "scheduler", *family.text_parts)
    # The pipeline builds its motion UNet from the base's UNet and casts it to the UNet's dtype, with diffusers'
    # warning of modules "that should be kept in float32" where there are none (as `cast_components` says).
    logger = logging.getLogger("diffusers.models.modeling_utils")
    logger.addFilter(_not_empty_float32_warning)
    try:
        cls = AnimateDiffSDXLPipeline if family is SDXL else AnimateDiffPipeline
        pipe = cls(**{part: getattr(stock, part) for part in parts}, motion_adapter=motion)
    finally:
        logger.removeFilter(_not_empty_float32_warning)
    if family is SDXL:
        # diffusers' `UNetMotionModel.from_unet2d` copies every part of the UNet but SDXL's added-conditioning
        # embedding (pooled text and size ids), which it leaves freshly drawn: the base's own is copied here.
        pipe.unet.add_embedding.load_state_dict(stock.unet.add_embedding.state_dict())
    pipe.register_to_config(_name_or_path=os.fspath(base))  # as diffusers' from_pretrained records it
    cast_components(pipe, dtype)
    return load_flexip(pipe, adapter)


def _not_empty_float32_warning(record: logging.LogRecord) -> bool:
    return "should be kept in float32: []" not in record.getMessage()


def _gpu_dtype(adapter: str | None) -> str:
    """The dtype the adapter's base family runs in on a GPU (float16 for an adapter given another way than
    as a folder: a hub id, whose family is known once it is downloaded)."""
    if adapter is None or not (Path(adapter) / CONFIG_NAME).is_file():
        return GPU_DTYPE["sd15"]
    return GPU_DTYPE[read_config(adapter)[1].base_family]


@contextlib.contextmanager
def _without_file_bars():
    """Without transformers' progress bars per model file ("Loading weights" for the text encoder and both
    reference encoders, "Writing model shards" when the embedded stand-in is built), each over in a blink: a
    front end loads once. diffusers' one bar over the pipeline's parts, and any download's, stay."""
    try:
        from transformers.utils.logging import set_tqdm_hook
    except ImportError:  # transformers 4, which draws no such bars
        yield
        return

    def hook(factory, args, kwargs):
        if kwargs.get("desc") in ("Loading weights", "Writing model shards"):
            kwargs = {**kwargs, "disable": True}
        return factory(*args, **kwargs) if previous is None else previous(factory, args, kwargs)

    previous = set_tqdm_hook(hook)
    try:
        yield
    finally:
        set_tqdm_hook(previous)


REAL_PICTURES = (
    'for real pictures, train an adapter on a real base model and pass it with --adapter (README, "Train")'
)
DEMO_MODEL_NOTE = (
    "the embedded model is a demo of the preservation dial, trained only on its own procedural world of "
    f"small coloured shapes, so a photograph comes out as an abstract 32 px picture; {REAL_PICTURES}"
)
STAND_IN_NOTE = (
    "this copy of flexip lacks its trained demo model, so the embedded model is the tiny random stand-in and "
    f"its pictures are noise; {REAL_PICTURES}"
)


def note_demo_model(loaded: LoadedModel, references: list, command: str) -> None:
    """Say once per loaded model, in one line on stderr, what the embedded demo model is and how to get real
    pictures, when it is given a picture of the user's (`references`: RGB PIL images) rather than the built-in
    subject it was made for."""
    if loaded.embedded is None or loaded.noted.is_set() or all(map(_is_demo_subject, references)):
        return
    loaded.noted.set()
    note = DEMO_MODEL_NOTE if loaded.embedded.trained else STAND_IN_NOTE
    print(f"{command}: note: {note}", file=sys.stderr)


def _is_demo_subject(image) -> bool:
    """Whether `image` has the built-in subject's pixels (from its file, the web page's example or a copy)."""
    if not DEMO_REFERENCE.is_file():
        return False
    demo = demo_reference()
    return image.size == demo.size and image.convert("RGB").tobytes() == demo.tobytes()


def generate(
    loaded: LoadedModel, prompt: str, reference, values: list, sampling: SamplingSettings,
    on_step: Callable[[int], None] | None = None, reference_weights: list[float] | None = None,
    reference_masks: list | None = None, dial: str = "preservation",
) -> list:  # fmt: skip
    """One image per dial value (any of the dial's forms), in one batch from the same starting noise; with
    `sampling.frames` (on an AnimateDiff pipeline), one clip, a list of frames, per value.

    `values` are the call's `dial` argument: "preservation" (the dial, calibrated on a calibrated adapter) or
    "gate" (the raw g). `reference` is one image or a list (`FlexIPPipeline.__call__`: with
    `reference_weights`, `reference_masks`). `on_step(done)` runs after each denoising step (a web page's
    progress bar); an exception it raises stops the generation there (its cancel button).
    """

    def step_end(pipe, step: int, timestep, tensors: dict) -> dict:
        on_step(step + 1)
        return tensors

    generator = torch.Generator("cpu").manual_seed(sampling.seed)  # CPU noise: the same image on any device
    clip = {} if sampling.frames is None else {"num_frames": sampling.frames}
    output = loaded.pipe(
        prompt, reference=reference, **{dial: values}, scale=sampling.scale,
        reference_weights=reference_weights, reference_masks=reference_masks,
        num_inference_steps=sampling.steps, guidance_scale=sampling.guidance,
        negative_prompt=sampling.negative_prompt, generator=generator,
        callback_on_step_end=None if on_step is None else step_end, **clip,
    )  # fmt: skip
    return output.images if sampling.frames is None else output.frames


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


def dial_records(loaded: LoadedModel, values: list[Dial], dial: str = "preservation") -> list[dict]:
    """What each image's settings record of its dial value (docs/formats.md): "preservation", the value as
    given (null when `dial` is "gate"), and "gate", the raw g it stands for on the loaded adapter (the same
    value on an adapter without a calibration). Either one, given back to the same call, makes the image
    again."""
    gates = _gates(loaded, values, dial)
    return [{"preservation": None if dial == "gate" else value.record(), "gate": gate.record()}
            for value, gate in zip(values, gates)]  # fmt: skip


def sweep_dial_record(loaded: LoadedModel, values: list[Dial], dial: str = "preservation") -> dict:
    """`dial_records` of a whole sweep: "preservation" and "gate" as lists ("preservation" null for a gate
    sweep)."""
    gates = _gates(loaded, values, dial)
    return {"preservation": None if dial == "gate" else sweep_record(values), "gate": sweep_record(gates)}


def dial_labels(loaded: LoadedModel, values: list[Dial], dial: str = "preservation") -> list[str]:
    """Each value as a label shows it: the value given ("0.5"), and on a calibrated adapter the raw g a
    preservation value stands for ("0.5 (g 0.31)")."""
    calibrated = dial == "preservation" and loaded.pipe.flexip.adapter.config.calibration is not None
    gates = _gates(loaded, values, dial)
    return [f"{value.text()} (g {_short(gate)})" if calibrated else value.text()
            for value, gate in zip(values, gates)]  # fmt: skip


def _gates(loaded: LoadedModel, values: list[Dial], dial: str) -> list[Dial]:
    injection = loaded.pipe.flexip
    config = injection.adapter.config
    given = (None, values) if dial == "gate" else (values, None)
    return call_gates(*given, config.calibration, list(config.layers), injection.denoiser.block_names)


def _short(gate: Dial) -> str:
    """A raw gate to two decimals; a schedule seen through the map by its values at the first and the last
    step."""
    if isinstance(gate.form, MappedSchedule):
        start, end = gate.form.ends
        return Dial(DialSchedule(round(start, 2), round(end, 2), gate.form.schedule.shape)).text()
    return Dial(_rounded(gate.form)).text()


def _rounded(form):
    if isinstance(form, dict):
        return {part: _rounded(entry) for part, entry in form.items()}
    if isinstance(form, list):
        return [_rounded(value) for value in form]
    return round(form, 2)
