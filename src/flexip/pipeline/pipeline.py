"""`FlexIPPipeline`: Stable Diffusion text-to-image with a reference image and the preservation dial."""

from __future__ import annotations

import os

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor

from ..errors import FlexIPError
from ..models.adapter import FlexIPAdapter
from .checks import check_guidance, check_images_per_prompt, check_preservation, check_scale, check_steps
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
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        **kwargs,
    ):
        """Generate images of the reference's subject following the prompt.

        `reference`: a PIL image, an image path, or an `EncodedReference` (`pipe.flexip.encode_reference(image)`).
        `preservation`: g in [0, 1]: 1 keeps the subject's identity, 0 follows the prompt's edits; or a list of
        values, generated in one batch from the same starting noise. `scale`: the adapters' strength s (0 is the
        base model). Guidance's unconditional half uses the null reference and the negative prompt.

        Output order: for each prompt, for each of its `num_images_per_prompt` images, one image per
        preservation value in the order given; images that differ only in preservation share their starting
        noise. A list of generators has one generator per prompt and image (not per preservation value).
        Other keyword arguments go to `StableDiffusionPipeline.__call__`.
        """
        # 1. Validate everything before any model runs.
        values = check_preservation(preservation)
        scale = check_scale(scale)
        check_steps(num_inference_steps)
        guidance_scale = check_guidance(guidance_scale)
        check_images_per_prompt(num_images_per_prompt)
        if reference is None:
            raise FlexIPError("reference is missing: give the subject's image (a PIL image or a path)")
        reference = self.flexip.prepare_reference(reference)
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        self.check_inputs(prompt, height, width, None, negative_prompt, prompt_embeds, negative_prompt_embeds)

        # 2. Encode the prompts and the reference once, for all preservation values.
        device = self._execution_device
        guided = guidance_scale > 1 and self.unet.config.time_cond_proj_dim is None
        cross_attention_kwargs = kwargs.get("cross_attention_kwargs") or {}
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, device, num_images_per_prompt, guided, negative_prompt,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            lora_scale=cross_attention_kwargs.get("scale"), clip_skip=kwargs.get("clip_skip"),
        )  # fmt: skip
        reference = self.flexip.encode_reference(reference)

        # 3. One starting noise per (prompt, image), shared by that image's preservation values.
        samples = prompt_embeds.shape[0]  # prompts x images per prompt
        if latents is None:
            shape = (
                samples,
                self.unet.config.in_channels,
                height // self.vae_scale_factor,
                width // self.vae_scale_factor,
            )
            latents = randn_tensor(shape, generator=generator, device=device, dtype=prompt_embeds.dtype)
        elif latents.shape[0] != samples:
            raise FlexIPError(
                f"latents hold {latents.shape[0]} samples; give one per prompt and image ({samples})"
            )
        if isinstance(generator, list):
            if len(generator) != samples:
                raise FlexIPError(
                    f"{len(generator)} generators given; give one per prompt and image ({samples})"
                )
            generator = [g for g in generator for _ in values]

        def per_value(tensor: torch.Tensor | None) -> torch.Tensor | None:
            # (samples, ...) -> (samples * len(values), ...), the preservation values innermost
            return None if tensor is None else tensor.repeat_interleave(len(values), dim=0)

        # 4. Diffusers' own loop; the hook gives the UNet P, S and g.
        preservation_per_sample = torch.tensor(values).repeat(samples)
        with self.flexip.generating(reference, preservation_per_sample, scale, samples * len(values)):
            return super().__call__(
                prompt_embeds=per_value(prompt_embeds), negative_prompt_embeds=per_value(negative_prompt_embeds),
                latents=per_value(latents), num_images_per_prompt=1, height=height, width=width,
                num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, generator=generator,
                output_type=output_type, return_dict=return_dict, **kwargs,
            )  # fmt: skip
