"""One FlexIP call, the same for `FlexIPPipeline` and for every stock pipeline given FlexIP by `load_flexip`.

The path a `preservation` value takes, from the call to the attention processor (method.md §2.3, §4):

1. `flexip_call` checks it: one value or a list, each in [0, 1] (`checks.check_preservation`).
2. It encodes the prompt once, for all values, as the base family's pipeline does (`flexip.families`), and
   repeats every per-sample input once per value, innermost: the prompt embeddings (and SDXL's pooled ones),
   the starting noise (`_per_sample_generators`) and any given latents. `g` becomes a
   tensor with one value per conditional sample, in that order.
3. `FlexIPInjection.generating(reference, g, scale, samples)` holds the reference and `g` for the length of
   the call, in a context variable: per thread, never on the shared pipeline or UNet.
4. The stock pipeline's own denoising loop calls the UNet. The injection's forward pre-hook reads the
   context variable and, at the first UNet call, builds the `FlexIPCondition`:
   `adapter(clip_embeds, dino_tokens, text, g, scale=s)` gives the tokens P and S and the per-sample branch
   weights s·g and s·(1 − g); guidance's unconditional half gets the null reference.
5. The UNet passes `(text, condition)` to every cross-attention layer, where `FlexIPAttnProcessor` adds
   s·g·Attn(Q, K_P, V_P) + s·(1 − g)·Attn(Q, K_S, V_S) to the text attention.

Why this shape: diffusers' loops (every scheduler, guidance, callbacks, ControlNet, LoRA) run unchanged,
because the only thing FlexIP changes is what the UNet receives, and it changes it where diffusers' own
IP-Adapter does (`encoder_hidden_states` reaches only the cross-attention layers). A hook rather than a
rewritten loop lets one mechanism serve every pipeline class; a context variable rather than an attribute
keeps two threads' calls on one UNet apart, and `per_call` gives each call its own copy of diffusers' per-call
state. docs/design.md records the alternatives.
"""

from __future__ import annotations

import copy
import inspect
import threading
from collections.abc import Callable

import numpy as np
import torch

from ..errors import FlexIPError
from .checks import check_guidance, check_images_per_prompt, check_preservation, check_scale, check_steps
from .injection import ReferenceInput


@torch.no_grad()
def flexip_call(
    pipe,
    stock_call: Callable,
    args: tuple,
    kwargs: dict,
    reference: ReferenceInput,
    preservation: float | list[float],
    scale: float,
):
    """Run `stock_call(pipe, *args, **kwargs)` with FlexIP's reference and dial.

    Output order: for each prompt, for each of its `num_images_per_prompt` images, one image per preservation
    value in the order given; images that differ only in preservation share their starting noise.
    """
    # 1. Validate everything before any model runs.
    values = check_preservation(preservation)
    scale = check_scale(scale)
    signature = inspect.signature(stock_call)
    arguments = _named_arguments(signature, pipe, args, kwargs)

    def setting(name: str):
        return arguments[name] if name in arguments else signature.parameters[name].default

    check_steps(setting("num_inference_steps"), most=pipe.scheduler.config.num_train_timesteps)
    guidance_scale = check_guidance(setting("guidance_scale"))
    images_per_prompt = setting("num_images_per_prompt")
    images_per_prompt = 1 if images_per_prompt is None else check_images_per_prompt(images_per_prompt)
    if arguments.get("prompt") is None and arguments.get("prompt_embeds") is None:
        raise FlexIPError("give a prompt (or prompt_embeds)")
    prepared = pipe.flexip.prepare_reference(reference)
    pipe = per_call(pipe)  # from here on, this call's own copy (threads)

    # 2. Encode the prompt and the reference once, for all preservation values.
    guided = guidance_scale > 1 and pipe.unet.config.time_cond_proj_dim is None
    embeds = pipe.flexip.family.encode_prompt(pipe, arguments, images_per_prompt, guided)
    encoded = pipe.flexip.encode_reference(prepared)

    # 3. Every per-sample input once per value, the values innermost.
    samples = embeds["prompt_embeds"].shape[0]  # conditional samples: prompts x images per prompt
    repeats = len(values)

    def per_value(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else tensor.repeat_interleave(repeats, dim=0)

    latents = arguments.get("latents")
    if latents is not None and latents.shape[0] != samples:
        raise FlexIPError(f"latents hold {latents.shape[0]} samples; give one per prompt and image ({samples})")
    arguments.update({name: None for name in pipe.flexip.family.prompt_names})
    arguments.update({name: per_value(tensor) for name, tensor in embeds.items()})
    arguments.update(
        num_images_per_prompt=1, generator=_per_sample_generators(arguments.get("generator"), samples, repeats)
    )
    if latents is not None:
        arguments["latents"] = per_value(latents)
    if isinstance(arguments["generator"], list) and "strength" in signature.parameters:
        # A pipeline that starts from `image` (img2img, inpainting) VAE-encodes it with one generator per
        # image: one copy per sample makes every sample draw from its generator as a call of its own would.
        for name in ("image", "mask_image"):
            if arguments.get(name) is not None:
                arguments[name] = _per_sample_images(arguments[name], name, samples, repeats)

    # 4. The stock pipeline's own loop; the injection's hook gives its UNet P, S and g.
    g = torch.tensor(values).repeat(samples)
    with pipe.flexip.generating(encoded, g, scale, samples * repeats):
        return stock_call(pipe, **arguments)


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
