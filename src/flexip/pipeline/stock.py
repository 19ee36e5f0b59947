"""The dial on a stock diffusers pipeline: `load_flexip(pipe, adapter)` and `unload_flexip(pipe)`.

After `load_flexip`, the pipeline's call also takes `reference=`, `preservation=` and `scale=`; everything else
(img2img, inpainting, ControlNet, LoRA, schedulers, callbacks) is the stock pipeline's own code. Without a
`reference` the call is the base model's. The pipeline's class is swapped for a subclass of the same name whose
only addition is that call; `unload_flexip` swaps it back and restores the UNet.
"""

from __future__ import annotations

import inspect
import os

import torch

from ..errors import FlexIPError
from ..models.adapter import FlexIPAdapter
from .checks import check_preservation, check_scale
from .injection import FlexIPInjection, ReferenceInput

_SUBCLASSES: dict[type, type] = {}


def load_flexip(
    pipe,
    adapter: str | os.PathLike | FlexIPAdapter,
    image_encoder: str | os.PathLike | None = None,
    dino_encoder: str | os.PathLike | None = None,
):
    """Give a Stable Diffusion pipeline (text-to-image, img2img, inpainting, ControlNet) FlexIP's reference and dial.

    `adapter` is an adapter directory or a loaded `FlexIPAdapter`; the encoders default to those its config
    names. Returns `pipe`, now called as `pipe(prompt, ..., reference=image, preservation=0.7)`.
    """
    if getattr(pipe, "flexip", None) is not None:
        raise FlexIPError("FlexIP is already loaded on this pipeline; call flexip.unload_flexip(pipe) first")
    unet = getattr(pipe, "unet", None)
    if unet is None or not callable(pipe):
        raise FlexIPError(f"{type(pipe).__name__} has no UNet: load_flexip needs a Stable Diffusion pipeline")
    parameter = next(unet.parameters())
    injection = FlexIPInjection.load(unet, adapter, image_encoder, dino_encoder, torch_dtype=parameter.dtype)
    pipe.flexip = injection
    pipe.__class__ = _with_reference(type(pipe))
    return pipe


def unload_flexip(pipe) -> None:
    """Undo `load_flexip`: the pipeline's class, UNet processors and hooks are as before."""
    injection = getattr(pipe, "flexip", None)
    if injection is None:
        raise FlexIPError("FlexIP is not loaded on this pipeline; nothing to unload")
    injection.remove()
    del pipe.flexip
    pipe.__class__ = pipe.__class__.__bases__[0]


def _with_reference(stock_class: type) -> type:
    """The subclass of `stock_class` whose call accepts `reference`, `preservation` and `scale`."""
    if stock_class not in _SUBCLASSES:
        stock_call = stock_class.__call__
        signature = inspect.signature(stock_call)

        def __call__(
            self, *args, reference: ReferenceInput | None = None, preservation: float | None = None,
            scale: float = 1.0, **kwargs,
        ):  # fmt: skip
            if reference is None:
                if preservation is not None:
                    raise FlexIPError("preservation was given without a reference image: pass reference=...")
                return stock_call(self, *args, **kwargs)
            (g,) = check_preservation(0.5 if preservation is None else preservation)
            scale = check_scale(scale)
            encoded = self.flexip.encode_reference(reference)
            num_samples = _num_conditional_samples(signature, self, args, kwargs)
            preservation_per_sample = torch.full((num_samples,), g)
            with self.flexip.generating(encoded, preservation_per_sample, scale, num_samples):
                return stock_call(self, *args, **kwargs)

        __call__.__doc__ = (
            f"{stock_class.__name__}'s call with FlexIP (method.md §2.3): `reference` (a PIL image, an image path "
            "or an EncodedReference), `preservation` g in [0, 1] (default 0.5; 1 keeps the subject's identity, "
            "0 follows the prompt's edits), `scale` s >= 0 (default 1; 0 is the base model). Without a "
            "reference it is the stock call.\n\n" + (stock_call.__doc__ or "")
        )
        # Same name, so diffusers' save_pretrained and logs still see the stock pipeline.
        _SUBCLASSES[stock_class] = type(
            stock_class.__name__,
            (stock_class,),
            {
                "__call__": __call__,
                "__module__": stock_class.__module__,
                "__qualname__": stock_class.__qualname__,
            },
        )
    return _SUBCLASSES[stock_class]


def _num_conditional_samples(signature: inspect.Signature, pipe, args: tuple, kwargs: dict) -> int:
    """batch_size * num_images_per_prompt, as every Stable Diffusion pipeline computes it."""
    bound = signature.bind(pipe, *args, **kwargs)
    bound.apply_defaults()
    arguments = bound.arguments
    prompt = arguments.get("prompt")
    if isinstance(prompt, str):
        batch = 1
    elif isinstance(prompt, list):
        batch = len(prompt)
    elif arguments.get("prompt_embeds") is not None:
        batch = arguments["prompt_embeds"].shape[0]
    else:
        raise FlexIPError("give a prompt or prompt_embeds")
    return batch * (arguments.get("num_images_per_prompt") or 1)
