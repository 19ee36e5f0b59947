"""`FlexIPPipeline`: text-to-image with a reference image and the preservation dial, on SD1.5, SDXL or FLUX.1."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from diffusers import FluxPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

from ..errors import FlexIPError
from ..families.registry import FLUX1, SD15, SDXL, Family, family_named, family_of_base, load_base
from ..models.adapter import FlexIPAdapter
from ..settings.dial import SCALE
from .call import flexip_call
from .embedded import embedded_model
from .injection import FlexIPInjection, ReferenceInput


class _WithReference:
    """What both FlexIP pipelines add to their family's stock text-to-image pipeline."""

    flexip: FlexIPInjection
    family: Family

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | None = None,
        *,
        adapter: str | os.PathLike | FlexIPAdapter | None = None,
        image_encoder: str | os.PathLike | None = None,
        dino_encoder: str | os.PathLike | None = None,
        torch_dtype: torch.dtype | None = None,
        revision: str | None = None,
        variant: str | None = None,
        base_config: str | os.PathLike | None = None,
        base: str | os.PathLike | None = None,
    ):
        """Load a base model (hub id, diffusers directory, or one `.safetensors` checkpoint file of a fine-tune)
        with a FlexIP adapter (directory or object), in the shape of diffusers' `from_pretrained`.

        With neither, the embedded demo model; with an adapter alone, the base its config records (the encoders
        too, always, unless given). `revision` and `variant` choose the base's files as diffusers does. A
        single-file base takes its components' configs from `base_config` (a diffusers directory or hub id of its
        family; needed offline unless the configs are in the local cache). `base=` is another name for the first
        argument. The pipeline is the adapter's family's: `FlexIPPipeline` on Stable Diffusion 1.5,
        `FlexIPXLPipeline` on SDXL, `FlexIPFluxPipeline` on FLUX.1 (any of them gives the right one).
        """
        adapter, base = _adapter_and_base(adapter, pretrained_model_name_or_path, base)
        family = family_named(adapter.config.base_family)
        base = base or adapter.resolve_model(adapter.config.base_model)
        if not base:
            raise FlexIPError(
                f"the adapter does not record its base model; pass the {family.title} base it was trained on "
                "(the first argument in Python, --base on the command line)"
            )
        loading = {name: value for name, value in (("revision", revision), ("variant", variant)) if value is not None}
        stock = _stock_pipeline(family, base, base_config, loading)
        if torch_dtype is not None:
            cast_components(stock, torch_dtype)
        target = flexip_pipeline_for(family)
        settings = {name: stock.config[name] for name in family.pipeline_settings}
        pipe = target(**stock.components, **settings)
        pipe.register_to_config(_name_or_path=os.fspath(base))  # as diffusers' from_pretrained records it
        model = getattr(pipe, family.denoiser.pipeline_attribute)
        pipe.flexip = FlexIPInjection.load(model, adapter, image_encoder, dino_encoder, torch_dtype)
        return pipe

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        reference: ReferenceInput | list[ReferenceInput] | None = None,
        preservation=None,
        scale=SCALE.default,
        reference_weights: list[float] | None = None,
        reference_masks: list | None = None,
        gate=None,
        **kwargs,
    ):
        """Generate images of the reference's subject following the prompt.

        `reference`: a PIL image, an image path, or an `EncodedReference` (`pipe.flexip.encode_reference(image)`);
        or a list of them: one subject's images, mixed by `reference_weights` (equal by default), or with
        `reference_masks` (PIL masks or 2-D arrays, one per reference) one subject per image inside its mask.
        `preservation`: the dial in [0, 1] (default 0.5): 1 keeps the subject's identity, 0 follows the prompt's
        edits; a per-block dict (`{"down": 0.9, "mid": 0.6, "up": 0.3}`, finer keys as in diffusers'
        `set_ip_adapter_scale`); a `flexip.DialSchedule(start=..., end=...)` or any callable of the denoising
        progress (0 at the first step, 1 at the last); or a list of these, generated in one batch from the same
        starting noise. On a calibrated adapter (`flexip calibrate`) equal steps of the dial are equal steps
        between identity and prompt; `gate` (same forms, instead of `preservation`) sets the raw g directly,
        which on an adapter without a calibration is the dial itself.
        `scale`: the adapters' strength s (0 is the base model), a number or a per-block dict. Guidance's
        unconditional half (FLUX.1's negative call) uses the null reference and the negative prompt. Every other
        argument is the family's stock pipeline's (`StableDiffusionPipeline.__call__`,
        `StableDiffusionXLPipeline.__call__` or `FluxPipeline.__call__`), with its meaning and defaults.

        Output order: for each prompt, for each of its `num_images_per_prompt` images, one image per
        preservation value in the order given; images that differ only in preservation share their starting
        noise. A list of generators has one generator per prompt and image (not per preservation value).
        This is the same call as a stock pipeline's after `load_flexip` (`pipeline/call.py`), except that here
        the reference is required.
        """
        if reference is None:
            raise FlexIPError("reference is missing: give the subject's image (a PIL image or a path)")
        stock_call = self.family.text_to_image.__call__
        return flexip_call(self, stock_call, (), {"prompt": prompt, **kwargs}, reference, preservation, scale,
                           reference_weights, reference_masks, gate)  # fmt: skip


class FlexIPPipeline(_WithReference, StableDiffusionPipeline):
    """diffusers' `StableDiffusionPipeline` with FlexIP attached (docs/method.md §2.3, §4).

    Build it with `FlexIPPipeline.from_pretrained(base, adapter=...)` (an SDXL adapter gives a
    `FlexIPXLPipeline`). Everything diffusers' pipeline does (any scheduler, `pipe.to(...)`, callbacks, LoRA)
    works unchanged: the denoising loop is diffusers' own, and the reference reaches the UNet through the hook
    described in `flexip.pipeline.injection`.
    """

    family = SD15


class FlexIPXLPipeline(_WithReference, StableDiffusionXLPipeline):
    """diffusers' `StableDiffusionXLPipeline` with FlexIP attached: `FlexIPPipeline`'s call on SDXL, with SDXL's
    arguments and defaults (`prompt_2`, `original_size`, 1024 px, ...)."""

    family = SDXL


class FlexIPFluxPipeline(_WithReference, FluxPipeline):
    """diffusers' `FluxPipeline` with FlexIP attached: `FlexIPPipeline`'s call on FLUX.1, with FLUX's arguments
    and defaults (`guidance_scale` 3.5 into the guidance embedding, `max_sequence_length` 512,
    `true_cfg_scale` 1.0, 1024 px, ...); with `true_cfg_scale` > 1 and a negative prompt, the negative call
    gets the null reference."""

    family = FLUX1


def _adapter_and_base(adapter, pretrained_model_name_or_path, base) -> tuple[FlexIPAdapter, str | os.PathLike | None]:
    """The adapter (loaded) and the base `from_pretrained` was given: both, the adapter alone (its recorded base
    is taken later), or neither (the embedded demo model); a base alone is refused."""
    if base is not None and pretrained_model_name_or_path is not None:
        raise FlexIPError("give the base model once: as the first argument or as base=, not both")
    base = pretrained_model_name_or_path if base is None else base
    if adapter is None:
        if base is not None:
            raise FlexIPError(
                f"no FlexIP adapter given for the base {os.fspath(base)!r}: pass adapter= (a directory written by "
                "`flexip train` or FlexIPAdapter.save_pretrained); with neither, the embedded demo model loads"
            )
        models = embedded_model().models
        adapter, base = models.adapter, models.base
    if not isinstance(adapter, FlexIPAdapter):
        adapter = FlexIPAdapter.from_pretrained(adapter)
    return adapter, base


def _stock_pipeline(family: Family, base, base_config, loading: dict):
    """`family`'s stock text-to-image pipeline for `base`, refused in one line if the base is another family's
    or cannot be loaded."""
    for given in (base, base_config):
        found = None if given is None else family_of_base(given)
        if found is not None and found is not family:
            raise FlexIPError(
                f"the adapter was trained for {family.title} but the base {os.fspath(given)!r} is {found.title}: "
                f"give a {family.title} base, or an adapter trained for {found.title}"
            )
    try:
        return load_base(family, base, base_config, **loading)
    except FlexIPError:
        raise
    except (OSError, ValueError, TypeError, KeyError) as e:
        hint = (
            f"name a diffusers directory of {family.title} as base_config (--base-config) for its configs"
            if Path(base).is_file() else "give a diffusers pipeline directory or a hub id whose weights are downloaded"
        )  # fmt: skip
        raise FlexIPError(
            f"cannot load a {family.title} base model from {str(base)!r} ({str(e).splitlines()[0]}); {hint}"
        ) from e


def cast_components(pipe, dtype: torch.dtype) -> None:
    """Cast a loaded diffusers pipeline's models that are not in `dtype` to it.

    After loading rather than while: diffusers renamed its loading argument (`torch_dtype`, now `dtype`)
    across the versions flexip supports. diffusers' models warn on every cast that some of their modules
    "should be kept in float32", even where the list of them is empty, as it is for Stable Diffusion's UNet
    and VAE: only that empty warning is kept off the console.
    """

    def not_empty_warning(record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()

    logger = logging.getLogger("diffusers.models.modeling_utils")
    logger.addFilter(not_empty_warning)
    try:
        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module) and module.dtype != dtype:
                module.to(dtype=dtype)
    finally:
        logger.removeFilter(not_empty_warning)


_PIPELINES = {SD15.name: FlexIPPipeline, SDXL.name: FlexIPXLPipeline, FLUX1.name: FlexIPFluxPipeline}


def flexip_pipeline_for(family: Family) -> type:
    """The FlexIP pipeline class of a base family."""
    return _PIPELINES[family.name]
