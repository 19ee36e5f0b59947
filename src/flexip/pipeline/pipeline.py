"""`FlexIPPipeline`: Stable Diffusion text-to-image with a reference image and the preservation dial."""

from __future__ import annotations

import os

import torch
from diffusers import StableDiffusionPipeline

from ..errors import FlexIPError
from ..models.adapter import FlexIPAdapter
from .call import flexip_call
from .injection import FlexIPInjection, ReferenceInput


class FlexIPPipeline(StableDiffusionPipeline):
    """diffusers' `StableDiffusionPipeline` with FlexIP attached (method.md §2.3, §4).

    Build it with `FlexIPPipeline.from_pretrained(base=..., adapter=...)`. Everything diffusers' pipeline does
    (any scheduler, `pipe.to(...)`, callbacks, LoRA) works unchanged: the denoising loop is diffusers' own, and
    the reference reaches the UNet through the hook described in `flexip.pipeline.injection`.
    """

    flexip: FlexIPInjection

    @classmethod
    def from_pretrained(
        cls,
        base: str | os.PathLike | None = None,
        *,
        adapter: str | os.PathLike | FlexIPAdapter,
        image_encoder: str | os.PathLike | None = None,
        dino_encoder: str | os.PathLike | None = None,
        torch_dtype: torch.dtype | None = None,
    ) -> FlexIPPipeline:
        """Load a Stable Diffusion base (hub id or directory) and a FlexIP adapter (directory or object).

        The base and the encoders default to those the adapter's config records.
        """
        if not isinstance(adapter, FlexIPAdapter):
            adapter = FlexIPAdapter.from_pretrained(adapter)
        base = base or adapter.resolve_model(adapter.config.base_model)
        if not base:
            raise FlexIPError(
                "the adapter does not record its base model; pass the Stable Diffusion base it was trained on "
                "(base=... in Python, --base on the command line)"
            )
        try:
            stock = StableDiffusionPipeline.from_pretrained(os.fspath(base))
        except (OSError, ValueError) as e:
            raise FlexIPError(
                f"cannot load a Stable Diffusion base model from {str(base)!r} ({str(e).splitlines()[0]}); give a "
                "diffusers pipeline directory or a hub id whose weights are downloaded"
            ) from e
        # Cast after loading (diffusers renamed its dtype argument across versions), and only when needed:
        # diffusers 0.42 warns on every cast.
        modules = [module for module in stock.components.values() if isinstance(module, torch.nn.Module)]
        if torch_dtype is not None and any(module.dtype != torch_dtype for module in modules):
            stock.to(dtype=torch_dtype)
        pipe = cls(**stock.components, requires_safety_checker=stock.config.requires_safety_checker)
        pipe.register_to_config(_name_or_path=os.fspath(base))  # as diffusers' from_pretrained records it
        pipe.flexip = FlexIPInjection.load(pipe.unet, adapter, image_encoder, dino_encoder, torch_dtype)
        return pipe

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        reference: ReferenceInput | None = None,
        preservation: float | list[float] = 0.5,
        scale: float = 1.0,
        **kwargs,
    ):
        """Generate images of the reference's subject following the prompt.

        `reference`: a PIL image, an image path, or an `EncodedReference` (`pipe.flexip.encode_reference(image)`).
        `preservation`: g in [0, 1]: 1 keeps the subject's identity, 0 follows the prompt's edits; or a list of
        values, generated in one batch from the same starting noise. `scale`: the adapters' strength s (0 is the
        base model). Guidance's unconditional half uses the null reference and the negative prompt. Every other
        argument is `StableDiffusionPipeline.__call__`'s, with its meaning.

        Output order: for each prompt, for each of its `num_images_per_prompt` images, one image per
        preservation value in the order given; images that differ only in preservation share their starting
        noise. A list of generators has one generator per prompt and image (not per preservation value).
        This is the same call as a stock pipeline's after `load_flexip` (`pipeline/call.py`), except that here
        the reference is required.
        """
        if reference is None:
            raise FlexIPError("reference is missing: give the subject's image (a PIL image or a path)")
        return flexip_call(
            self, StableDiffusionPipeline.__call__, (), {"prompt": prompt, **kwargs}, reference, preservation, scale
        )
