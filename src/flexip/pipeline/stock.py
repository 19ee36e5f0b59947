"""The dial on a stock diffusers pipeline: `load_flexip(pipe, adapter)` and `unload_flexip(pipe)`.

After `load_flexip`, the pipeline's call also takes `reference=`, `preservation=` and `scale=`, with the same
meaning as `FlexIPPipeline`'s (lists included): both run `flexip_call` (`pipeline/call.py`). Everything else
(img2img, inpainting, ControlNet, LoRA, schedulers, callbacks) is the stock pipeline's own code. Without a
`reference` the call is the base model's.

Python looks `__call__` up on the type, so a pipeline object can only take new call arguments through its
class: `load_flexip` gives it a subclass of its own class, with the same name (diffusers writes
`type(pipe).__name__` into `model_index.json`), whose only addition is that call. The stock class is kept on
the injection, and `unload_flexip` puts it back.
"""

from __future__ import annotations

import os

from ..errors import FlexIPError
from ..models.adapter import FlexIPAdapter
from ..settings.dial import SCALE
from .call import flexip_call, per_call
from .calls import pipeline_call
from .injection import FlexIPInjection, ReferenceInput

_SUBCLASSES: dict[type, type] = {}


def load_flexip(
    pipe,
    adapter: str | os.PathLike | FlexIPAdapter,
    image_encoder: str | os.PathLike | None = None,
    dino_encoder: str | os.PathLike | None = None,
):
    """Give a Stable Diffusion, SDXL or FLUX.1 pipeline (text-to-image, img2img, inpainting, ControlNet; FLUX.1
    Kontext; AnimateDiff's clips) FlexIP's reference and dial (`pipeline/calls.py` lists the classes).

    `adapter` is an adapter directory or a loaded `FlexIPAdapter`; the encoders default to those its config
    names. Returns `pipe`, now called as `pipe(prompt, ..., reference=image, preservation=0.7)`.
    """
    if getattr(pipe, "flexip", None) is not None:
        raise FlexIPError("FlexIP is already loaded on this pipeline; call flexip.unload_flexip(pipe) first")
    model = pipeline_call(pipe).model(pipe)  # a pipeline class FlexIP knows, or one line naming those it does
    parameter = next(model.parameters())
    injection = FlexIPInjection.load(model, adapter, image_encoder, dino_encoder, torch_dtype=parameter.dtype)
    injection.stock_class = type(pipe)
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
    pipe.__class__ = injection.stock_class


def _with_reference(stock_class: type) -> type:
    """The subclass of `stock_class` whose call accepts `reference`, `preservation` and `scale`."""
    if stock_class not in _SUBCLASSES:
        stock_call = stock_class.__call__

        def __call__(
            self, *args, reference: ReferenceInput | list[ReferenceInput] | None = None, preservation=None,
            scale=SCALE.default, reference_weights: list[float] | None = None, reference_masks: list | None = None,
            gate=None, **kwargs,
        ):  # fmt: skip
            if reference is None:
                given = [name for name, value in [("preservation", preservation), ("gate", gate), ("reference_weights",
                         reference_weights), ("reference_masks", reference_masks)] if value is not None]  # fmt: skip
                if given:
                    raise FlexIPError(f"{given[0]} was given without a reference image: pass reference=...")
                return stock_call(per_call(self), *args, **kwargs)
            return flexip_call(self, stock_call, args, kwargs, reference, preservation, scale, reference_weights,
                               reference_masks, gate)  # fmt: skip

        __call__.__doc__ = (
            f"{stock_class.__name__}'s call with FlexIP (arXiv 2504.07405): `reference` (a PIL image, an image path "
            "or an EncodedReference, or a list of them with `reference_weights` and `reference_masks`), "
            "`preservation` g in [0, 1], a per-block dict or a flexip.DialSchedule (over the steps, or a clip's frames), "
            "or a list of them made in one "
            "batch from one starting noise (default 0.5; 1 keeps the subject's identity, 0 follows the prompt's "
            "edits; the calibrated dial on a calibrated adapter), `gate` the raw g instead (same forms), `scale` s >= 0 or a per-block dict (default 1; 0 is the base model); see FlexIPPipeline's "
            "call. Without a reference it is the stock call.\n\n"
            + (stock_call.__doc__ or "")
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
