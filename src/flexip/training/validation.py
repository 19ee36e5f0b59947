"""The validation sweep: fixed references and prompts generated at several g, saved as one contact sheet.

Rows are (reference, prompt), columns the reference and one image per g; every image of a row starts from the
same noise, so a row shows what the dial alone changes. It runs on the training UNet and adapter directly
with DDIM and classifier-free guidance (method.md §4), so training needs nothing from the pipeline package.
"""

from __future__ import annotations

import io

import torch
from diffusers import DDIMScheduler
from PIL import Image

from ..contact_sheet import contact_sheet
from ..models.adapter import FlexIPAdapter
from .components import FrozenModels
from .config import ValidationConfig
from .data import Pair, load_rgb
from .objective import encode_text

MIN_CELL = 128  # px: tiny models' 32 px images are upscaled so the sheet stays readable


@torch.no_grad()
def sweep(
    models: FrozenModels, adapter: FlexIPAdapter, references: list[Image.Image], config: ValidationConfig,
    resolution: int, device: torch.device,
) -> list[list[Image.Image]]:  # fmt: skip
    """One row of generated images per (reference, prompt), one column per `config.preservation` value."""
    unet, vae = models.unet, models.vae
    scheduler = DDIMScheduler.from_config(models.noise_scheduler.config)
    g = torch.tensor(config.preservation, device=device)
    n = len(config.preservation)
    null_text = encode_text(models, [""], device)
    latent_size = resolution // 2 ** (len(vae.config.block_out_channels) - 1)
    rows = []
    for reference in references:
        encoded = models.encoder([reference])
        null = encoded.null()
        for prompt in config.prompts:
            text = encode_text(models, [prompt], device)
            # Unconditional half (empty prompt, null reference) first, then the conditional half; n samples each.
            text_embeds = torch.cat([null_text.expand(n, -1, -1), text.expand(n, -1, -1)])
            clip_embeds = torch.cat([null.clip_embeds.expand(n, -1), encoded.clip_embeds.expand(n, -1)])
            dino_tokens = torch.cat(
                [null.dino_tokens.expand(n, -1, -1), encoded.dino_tokens.expand(n, -1, -1)]
            )
            condition = adapter(clip_embeds, dino_tokens, text_embeds, preservation=g.repeat(2), cache=True)

            generator = torch.Generator(device).manual_seed(config.seed)
            shape = (1, unet.config.in_channels, latent_size, latent_size)
            latents = torch.randn(shape, generator=generator, device=device, dtype=unet.dtype).expand(
                n, -1, -1, -1
            )
            scheduler.set_timesteps(config.steps, device=device)
            latents = latents * scheduler.init_noise_sigma
            for t in scheduler.timesteps:
                model_input = scheduler.scale_model_input(torch.cat([latents, latents]), t)
                noise = unet(model_input, t, encoder_hidden_states=(text_embeds, condition)).sample
                unconditional, conditional = noise.chunk(2)
                noise = unconditional + config.guidance_scale * (conditional - unconditional)
                latents = scheduler.step(noise, t, latents).prev_sample
            images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
            pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
            rows.append([Image.fromarray(p) for p in pixels.cpu().numpy()])
    return rows


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
    """The reference of the first readable pair of each modality: fixed for the whole run."""
    references = {}
    for pair in pairs:
        if pair.modality not in references:
            try:
                references[pair.modality] = load_rgb(pair.reference)
            except OSError:
                continue  # the data loader reports unreadable files; the sweep just takes the next pair
    return [references[m] for m in sorted(references)]
