"""One FlexIP call, the same for `FlexIPPipeline` and for every stock pipeline given FlexIP by `load_flexip`.

The path a `preservation` value takes, from the call to the attention processor (docs/method.md §2.3, §4):

1. `flexip_call` checks it (`flexip.settings.dial`): one value or a list (a sweep), each a number in [0, 1],
   a per-block dict or a schedule, resolved to one value per joined layer (a `LayerDial`); `scale`
   likewise (a number or a per-block dict), and the references with their weights and masks (`subjects.py`).
2. It encodes the prompt once, for all values, as the base family's pipeline does (`flexip.families`), and
   repeats every per-sample input once per value, innermost: the prompt embeddings (and SDXL's pooled ones),
   the starting noise (`_per_sample_generators`) and any given latents. Each conditional sample gets its
   value's `LayerDial`, in that order.
3. `FlexIPInjection.generating(references, subjects, dials, scales, samples)` holds them for the length of
   the call, in a context variable: per thread, never on the shared pipeline or UNet. A schedule's progress
   moves at the end of each step through the stock loop's `callback_on_step_end` (`FlexIPInjection.advance`).
4. The stock pipeline's own denoising loop calls the UNet. The injection's forward pre-hook reads the
   context variable and, at the first UNet call, builds the `FlexIPCondition`: each reference's tokens P
   and S (`adapter.preservation`, `adapter.personalization`), and every layer's per-sample branch weights
   s·g and s·(1 − g) (`BranchWeights`); guidance's unconditional half gets the null reference. Under a
   schedule, later calls get the same tokens and key/value cache with that step's weights.
5. The UNet passes `(text, condition)` to every cross-attention layer, where `FlexIPAttnProcessor` adds
   s·g·Attn(Q, K_P, V_P) + s·(1 − g)·Attn(Q, K_S, V_S) to the text attention, each branch summed over the
   references with their weights and masks. On AnimateDiff's UNet a layer's rows are (sample, frame): the
   condition is the samples', read by every frame, and the weights (a schedule over the frames too) have a
   row per sample and frame (`denoisers/motion_unet.py`).

Why this shape: diffusers' loops (every scheduler, guidance, callbacks, ControlNet, LoRA) run unchanged,
because the only thing FlexIP changes is what the UNet receives, and it changes it where diffusers' own
IP-Adapter does (`encoder_hidden_states` reaches only the cross-attention layers). A hook rather than a
rewritten loop lets one mechanism serve every pipeline class; a context variable rather than an attribute
keeps two threads' calls on one UNet apart, and `per_call` gives each call its own copy of diffusers' per-call
state. docs/decisions/pipeline.md records the alternatives.
"""

from __future__ import annotations

import copy
import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

from ..errors import FlexIPError
from ..settings.calibration import call_gates
from ..settings.dial import SCALE, Dial, LayerDial
from ..settings.numbers import check_guidance, check_images_per_prompt, check_steps
from .calls import PipelineCall, pipeline_call
from .injection import ReferenceInput
from .subjects import check_subjects


@torch.no_grad()
def flexip_call(
    pipe,
    stock_call: Callable,
    args: tuple,
    kwargs: dict,
    reference: ReferenceInput | list[ReferenceInput],
    preservation,
    scale,
    reference_weights: list[float] | None = None,
    reference_masks: list | None = None,
    gate=None,
):
    """Run `stock_call(pipe, *args, **kwargs)` with FlexIP's references and dial (`flexip.settings.dial`, forms).

    Output order: for each prompt, for each of its `num_images_per_prompt` images, one image per preservation
    value in the order given; images that differ only in preservation share their starting noise.
    """
    checked = _checked_call(pipe, stock_call, args, kwargs, reference, preservation, gate, scale, reference_weights,
                            reference_masks)  # fmt: skip
    pipe = per_call(pipe)  # from here on, this call's own copy (threads)

    # Encode the prompt and the references once, for all preservation values.
    guided = checked.call.guided(pipe, checked.guidance_scale, checked.arguments)
    embeds = pipe.flexip.family.encode_prompt(pipe, checked.arguments, checked.images_per_prompt, guided)
    encoded = [pipe.flexip.encode_reference(item) for item in checked.references]
    samples = embeds["prompt_embeds"].shape[0]  # conditional samples: prompts x images per prompt
    arguments = _per_value_arguments(pipe, checked, embeds, samples)

    # The stock pipeline's own loop; the injection's hook gives its denoiser P, S and g.
    repeats = len(checked.dials)
    with pipe.flexip.generating(encoded, checked.subjects, checked.dials * samples, checked.scales,
                                samples * repeats, guided, checked.call.negative_call):  # fmt: skip
        return stock_call(pipe, **arguments)


@dataclass
class _CheckedCall:
    """A call's inputs, every one checked before any model runs."""

    call: PipelineCall
    arguments: dict  # the stock call's arguments by name
    dials: list[LayerDial]  # one per preservation value
    scales: tuple[float, ...]  # s per layer
    guidance_scale: float
    images_per_prompt: int
    references: list  # prepared reference images
    subjects: tuple


def _checked_call(pipe, stock_call, args, kwargs, reference, preservation, gate, scale, reference_weights,
                  reference_masks) -> _CheckedCall:  # fmt: skip
    config = pipe.flexip.adapter.config
    layers, names = list(config.layers), pipe.flexip.denoiser.block_names
    values = [value.resolve(layers, names) for value in call_gates(preservation, gate, config.calibration, layers, names)]
    scales = (scale if isinstance(scale, Dial) else Dial(scale, quantity=SCALE)).resolve(layers, names).values
    call = pipeline_call(pipe)
    signature = inspect.signature(stock_call)
    arguments = _named_arguments(signature, pipe, args, kwargs)

    def setting(name: str):
        return arguments[name] if name in arguments else signature.parameters[name].default

    check_steps(setting("num_inference_steps"), most=pipe.scheduler.config.num_train_timesteps)
    guidance_scale = check_guidance(setting("guidance_scale"))
    images_per_prompt = setting(call.per_prompt)
    images_per_prompt = 1 if images_per_prompt is None else check_images_per_prompt(images_per_prompt, call.per_prompt)
    if arguments.get("prompt") is None and arguments.get("prompt_embeds") is None:
        raise FlexIPError("give a prompt (or prompt_embeds)")
    references = list(reference) if isinstance(reference, (list, tuple)) else [reference]
    if not references:
        raise FlexIPError("reference is an empty list: give one or more images of the subject")
    if reference_masks is not None and not call.takes_masks:
        raise FlexIPError(
            f"{type(pipe).__name__} takes no reference_masks: its context image's tokens share the image stream the "
            "masks would divide; give the references without masks"
        )
    prepared = [pipe.flexip.prepare_reference(item) for item in references]
    subjects = check_subjects(len(prepared), reference_weights, reference_masks, _image_size(pipe, call, arguments))
    if any(value.over_steps for value in values) and "callback_on_step_end" not in signature.parameters:
        raise FlexIPError(f"{type(pipe).__name__} takes no callback_on_step_end, which a schedule needs; give numbers")
    if any(value.over_frames for value in values) and not call.makes_clips:
        raise FlexIPError(
            f"{values[0].name}: a schedule over the frames needs a pipeline that makes clips (AnimateDiff's); "
            f"{type(pipe).__name__} makes images: run the schedule over the steps, or give numbers"
        )
    return _CheckedCall(call, arguments, values, scales, guidance_scale, images_per_prompt, prepared, subjects)


def _per_value_arguments(pipe, checked: _CheckedCall, embeds: dict, samples: int) -> dict:
    """The stock call's arguments with every per-sample input once per preservation value, the values innermost:
    the prompt embeddings, one generator per sample and value, given latents, and an init image or mask."""
    arguments, repeats = checked.arguments, len(checked.dials)

    def per_value(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else tensor.repeat_interleave(repeats, dim=0)

    latents = arguments.get("latents")
    if latents is not None and latents.shape[0] != samples:
        raise FlexIPError(f"latents hold {latents.shape[0]} samples; give one per prompt and image ({samples})")
    arguments.update({name: None for name in pipe.flexip.family.prompt_names})
    arguments.update({name: per_value(tensor) for name, tensor in embeds.items()})
    arguments.update(
        {checked.call.per_prompt: 1}, generator=_per_sample_generators(arguments.get("generator"), samples, repeats)
    )
    if latents is not None:
        arguments["latents"] = per_value(latents)
    if isinstance(arguments["generator"], list) and checked.call.starts_from_image:
        # A pipeline that starts from `image` (img2img, inpainting) or a `video` VAE-encodes it with one
        # generator per output: one copy per sample makes every sample draw from its generator as a call of
        # its own would.
        for name in checked.call.inputs:
            if arguments.get(name) is not None:
                if name == "video":
                    arguments[name] = _per_sample_videos(arguments[name], samples, repeats)
                else:
                    arguments[name] = _per_sample_images(arguments[name], name, samples, repeats)
    if any(dial.over_steps for dial in checked.dials):
        _advance_at_each_step(pipe.flexip, arguments)
    return arguments


def _image_size(pipe, call: PipelineCall, arguments: dict) -> tuple[int, int] | None:
    """(height, width) of the images a call makes, where it is known before the loop: given, or the pipeline's
    default (`PipelineCall.default_side`); other pipelines take it from their input image."""
    height, width = arguments.get("height"), arguments.get("width")
    if height is None and width is None and call.default_side is not None:
        side = call.default_side(pipe)
        return side, side
    return None if height is None or width is None else (height, width)


def _advance_at_each_step(injection, arguments: dict) -> None:
    """Move a schedule's progress at the end of every step, through the stock loop's `callback_on_step_end`
    (as diffusers' `IPAdapterScaleCutoffCallback` changes IP-Adapter's scale); a user's callback still runs."""
    callback = arguments.get("callback_on_step_end")
    if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):
        arguments["callback_on_step_end_tensor_inputs"] = callback.tensor_inputs  # what diffusers would read

    def step_end(pipe, step: int, timestep, tensors: dict) -> dict:
        injection.advance(step, pipe.num_timesteps)
        return tensors if callback is None else callback(pipe, step, timestep, tensors)

    arguments["callback_on_step_end"] = step_end


# A tokenizer is not thread-safe: transformers sets its backend's padding for each call, so a thread asking
# for "longest" can cut another's "max_length" short. Encoding prompts takes milliseconds: one at a time.
_ENCODING = threading.Lock()


def per_call(pipe):
    """The pipeline for one call: a shallow copy with its own scheduler, sharing every model (no memory cost).

    diffusers keeps a call's state on the pipeline object (`_guidance_scale`, `_num_timesteps`, ...) and in its
    scheduler (timesteps, step index, a multistep solver's history): on one shared object, concurrent calls
    with other settings would read each other's. On a copy, with prompts encoded one at a time, concurrent
    calls are each exactly a call alone.
    """
    own = copy.copy(pipe)
    own.scheduler = copy.deepcopy(pipe.scheduler)
    encode = pipe.encode_prompt

    def encode_prompt(*args, **kwargs):
        with _ENCODING:
            return encode(*args, **kwargs)

    own.encode_prompt = encode_prompt  # the stock call's `self.encode_prompt` finds this one first
    return own


def _named_arguments(signature: inspect.Signature, pipe, args: tuple, kwargs: dict) -> dict:
    """The call's arguments by name (a positional prompt too), without `self`."""
    try:
        bound = signature.bind(pipe, *args, **kwargs)
    except TypeError as e:
        raise FlexIPError(f"{type(pipe).__name__}: {e}") from None
    arguments = {}
    for name, value in list(bound.arguments.items())[1:]:
        if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(value)
        else:
            arguments[name] = value
    return arguments


def _per_sample_generators(generator, samples: int, repeats: int) -> list[torch.Generator] | None:
    """One generator per sample, so that the images of one (prompt, image) share all their noise.

    Each preservation value of a sample gets a copy of that sample's generator (same state): the starting
    noise, an img2img pipeline's VAE sample and a stochastic sampler's step noise are then the same for
    every value. The sample's generator is the one given (one per prompt and image); with a single generator
    and one sample, that generator; with a single generator and several samples, one generator per sample
    seeded from it (diffusers would draw one block of noise for all of them, which cannot be shared out per
    sample), so a list of values still equals the values run one by one with the same seed.
    """
    if generator is None:
        if repeats == 1:
            return None
        # Shared noise needs a generator; seed it from torch's global one so torch.manual_seed still rules.
        generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())))
    if isinstance(generator, list):
        if len(generator) != samples:
            raise FlexIPError(f"{len(generator)} generators given; give one per prompt and image ({samples})")
        own = generator
    elif samples == 1:
        own = [generator]
    else:
        seeds = torch.randint(2**62, (samples,), generator=generator, device=generator.device).tolist()
        own = [torch.Generator(generator.device).manual_seed(seed) for seed in seeds]
    if repeats == 1:
        return own if isinstance(generator, list) or samples > 1 else generator
    return [_copy(source) for source in own for _ in range(repeats)]


def _per_sample_videos(video, samples: int, repeats: int) -> list:
    """An init video (one: a list of frames, or one per prompt and clip: a list of them or a (clips, frames,
    ...) array) as one per sample, the values innermost."""
    if isinstance(video, (torch.Tensor, np.ndarray)) and video.ndim == 5:
        videos = list(video)
    elif isinstance(video, list) and video and isinstance(video[0], list):
        videos = video
    else:
        videos = [video]
    if len(videos) == 1:
        return videos * (samples * repeats)
    if len(videos) != samples:
        raise FlexIPError(f"video holds {len(videos)} clips; give one, or one per prompt and clip ({samples})")
    return [clip for clip in videos for _ in range(repeats)]


def _per_sample_images(images, name: str, samples: int, repeats: int):
    """An init image or mask (one, or one per prompt and image) as one per sample, the values innermost."""
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4:  # a batch
        count = images.shape[0]
        if count not in (1, samples):
            raise FlexIPError(f"{name} holds {count} images; give one, or one per prompt and image ({samples})")
        index = np.arange(count).repeat(samples * repeats // count)
        return images[torch.from_numpy(index) if isinstance(images, torch.Tensor) else index]
    if not isinstance(images, list):
        images = [images]
    if len(images) == 1:
        return images * (samples * repeats)
    if len(images) != samples:
        raise FlexIPError(f"{name} holds {len(images)} images; give one, or one per prompt and image ({samples})")
    return [image for image in images for _ in range(repeats)]


def _copy(generator: torch.Generator) -> torch.Generator:
    copy = torch.Generator(generator.device)
    copy.set_state(generator.get_state())
    return copy
