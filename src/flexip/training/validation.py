"""The validation sweep: fixed references and prompts generated at several g, saved as one contact sheet.

Rows are (reference, prompt), columns the reference and one image per g; every image of a row starts from the
same noise, so a row shows what the dial alone changes. It samples through the family's FlexIP pipeline built on
the training denoiser and adapter, with the denoiser's sampler (a UNet: DDIM and classifier-free guidance,
docs/method.md §4; FLUX.1: its flow-matching Euler sampler and guidance embedding), so a validation image is
what a user of the exported adapter gets.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from accelerate.logging import get_logger
from PIL import Image

from ..contact_sheet import contact_sheet
from ..denoisers.registry import denoiser_of
from ..models.adapter import FlexIPAdapter
from ..pipeline.injection import FlexIPInjection
from ..pipeline.pipeline import flexip_pipeline_for
from .components import FrozenModels
from .config import ValidationConfig
from .data import UNREADABLE, Pair, load_rgb

logger = get_logger(__name__)

MIN_CELL = 128  # px: tiny models' 32 px images are upscaled so the sheet stays readable


@torch.no_grad()
def sweep(
    models: FrozenModels, adapter: FlexIPAdapter, references: list[Image.Image], config: ValidationConfig,
    resolution: int, device: torch.device,
) -> list[list[Image.Image]]:  # fmt: skip
    """One row of generated images per (reference, prompt), one column per `config.preservation` value."""
    scheduler = denoiser_of(models.unet).sampler(models.noise_scheduler)
    pipe = models.family.assemble(
        models.vae, models.unet, scheduler, models.text, cls=flexip_pipeline_for(models.family)
    )
    pipe.set_progress_bar_config(disable=True)
    # The adapter is attached to the training denoiser already and stays float32 there (mixed precision).
    pipe.flexip = FlexIPInjection(models.unet, adapter, models.encoder, follow_model=False)
    try:
        return [
            pipe(
                prompt, reference=reference, preservation=config.preservation, height=resolution, width=resolution,
                num_inference_steps=config.steps, guidance_scale=config.guidance_scale,
                generator=torch.Generator(device).manual_seed(config.seed),
            ).images
            for reference in references
            for prompt in config.prompts
        ]  # fmt: skip
    finally:
        pipe.flexip.unhook()


def sweep_sheet(
    references: list[Image.Image],
    prompts: list[str],
    preservation: list[float],
    rows: list[list[Image.Image]],
) -> Image.Image:
    """The sweep as a contact sheet: the reference, then one column per g; each row labelled with its prompt."""
    return contact_sheet(
        [[references[index // len(prompts)], *row] for index, row in enumerate(rows)],
        ["reference", *(f"g = {g:g}" for g in preservation)],
        tile_size=MIN_CELL,
        row_labels=[f"prompt: {prompts[index % len(prompts)]!r}" for index in range(len(rows))],
    )


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def validation_references(pairs: list[Pair]) -> list[Image.Image]:
    """The reference of the first readable pair of each modality: fixed for the whole run. An unreadable one
    is logged and the next pair of its modality taken (the data loader counts it)."""
    references = {}
    for pair in pairs:
        if pair.modality not in references:
            try:
                references[pair.modality] = load_rgb(pair.reference)
            except UNREADABLE as e:
                where = pair.reference if isinstance(pair.reference, Path) else "a shard sample's reference"
                logger.warning(f"the contact sheet skips {where}: {e}")
    return [references[m] for m in sorted(references)]
