"""The training objective (docs/method.md §3): the frozen denoiser's loss with the gated adapters (for the
UNet, epsilon-prediction MSE; for FLUX.1, flow matching's velocity MSE; the denoiser draws the noise and
timesteps, says the target and weighs the loss: `flexip.denoisers`).

`encode_batch` runs the frozen encoders (no gradient) and applies condition dropout; `FlexIPTrainingModel`
is the one module handed to `accelerator.prepare`, so DDP syncs exactly the parameters that train.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..denoisers.registry import denoiser_of
from ..models.adapter import FlexIPAdapter
from ..models.config import MODALITIES
from .components import FrozenModels
from .config import DropoutConfig, TrainConfig


@dataclass
class EncodedBatch:
    latents: torch.Tensor  # (batch, channels, H/8, W/8), shifted and scaled as the denoiser expects
    text_embeds: torch.Tensor  # (batch, 77, cross_attention_dim)
    added: dict[str, torch.Tensor] | None  # the UNet's added_cond_kwargs (SDXL: pooled text, size conditioning)
    clip_embeds: torch.Tensor  # (batch, clip_embed_dim)
    dino_tokens: torch.Tensor  # (batch, tokens, dino_hidden_dim)
    modality: torch.Tensor  # (batch,) indices into MODALITIES
    drop_image: torch.Tensor  # (batch,) True where condition dropout gives the sample the null reference
    subject: torch.Tensor | None = None  # (batch, 1, H/8, W/8): share of each latent pixel inside the target's mask


def condition_dropout(
    modality: torch.Tensor, dropout: DropoutConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (drop text, drop image) masks: disjoint events with each sample's modality's probabilities."""
    device = generator.device
    text = torch.tensor([dropout.text_rate(name) for name in MODALITIES], device=device)[modality.to(device)]
    draw = torch.rand(len(modality), generator=generator, device=device)
    text_only = draw < text
    image_only = (draw >= text) & (draw < text + dropout.image)
    both = (draw >= text + dropout.image) & (draw < text + dropout.image + dropout.both)
    return text_only | both, image_only | both


@torch.no_grad()
def encode_batch(
    models: FrozenModels, batch: dict, dropout: DropoutConfig, generator: torch.Generator
) -> EncodedBatch:
    """Latents, text and reference features of a collated batch; dropped conditions become null ones."""
    device = generator.device
    drop_text, drop_image = condition_dropout(batch["modality"], dropout, generator)
    captions = ["" if drop else caption for caption, drop in zip(batch["captions"], drop_text.tolist())]
    text = models.family.encode_captions(models.text, captions, batch["sizes"], device)

    reference = models.encoder(batch["references"])

    pixels = batch["pixel_values"].to(device, models.vae.dtype)
    latents = denoiser_latents(models.vae, models.vae.encode(pixels).latent_dist.sample(generator))
    subject = None
    if "target_masks" in batch:
        subject = F.adaptive_avg_pool2d(batch["target_masks"].to(device, latents.dtype), latents.shape[-2:])
    return EncodedBatch(
        latents, text.embeds, text.added, reference.clip_embeds, reference.dino_tokens, batch["modality"].to(device),
        drop_image.to(device), subject,
    )  # fmt: skip


def denoiser_latents(vae, sample: torch.Tensor) -> torch.Tensor:
    """A VAE latent as the denoiser takes it: (sample - shift_factor) * scaling_factor (FLUX.1's VAE has a
    shift; Stable Diffusion's none)."""
    if vae.config.get("shift_factor") is not None:
        sample = sample - vae.config.shift_factor
    return sample * vae.config.scaling_factor


class FlexIPTrainingModel(nn.Module):
    """The frozen denoiser (`unet`: a UNet or FLUX.1's transformer) with the adapter attached; `forward` returns
    the batch's loss and each sample's g. `config` gives the objective's settings (min_snr_gamma,
    subject_loss_weight, flow_matching); unset, the defaults.

    Only the adapter's parameters require gradients: DDP (through `accelerator.prepare`) syncs just those.
    """

    def __init__(
        self, unet: nn.Module, adapter: FlexIPAdapter, noise_scheduler, config: TrainConfig | None = None
    ):  # fmt: skip
        super().__init__()
        self.unet = unet
        self.denoiser = denoiser_of(unet)  # its objective: noise, timesteps, target and how it is called
        self.adapter = adapter
        self.noise_scheduler = noise_scheduler
        # Not `config`: accelerate and DeepSpeed read a model's `config` as a transformers config.
        self.settings = config or TrainConfig()
        adapter.attach(unet)

    def forward(self, batch: EncodedBatch, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.settings
        noisy, timesteps, target = self.denoiser.noisy_and_target(
            self.noise_scheduler, batch.latents, generator, config
        )

        # g per sample from its modality's logit plus noise: the gradient reaches the logits through the
        # branch weights g and 1 - g (docs/method.md §2.4).
        g = self.adapter.gate(batch.modality, generator=generator)
        # Image dropout = the null reference through both adapters, as in guidance (docs/method.md §4).
        condition = self.adapter(
            batch.clip_embeds, batch.dino_tokens, batch.text_embeds, preservation=g, null_rows=batch.drop_image
        )
        prediction = self.denoiser.predict(
            self.unet, noisy, timesteps, batch.text_embeds, condition, batch.added, config
        )
        per_sample = per_sample_mse(prediction, target, batch.subject, config.subject_loss_weight)
        weight = self.denoiser.loss_weight(self.noise_scheduler, timesteps, config)
        if weight is not None:
            per_sample = per_sample * weight
        return per_sample.mean(), g.detach()


def per_sample_mse(
    prediction: torch.Tensor, target: torch.Tensor, subject: torch.Tensor | None = None, subject_weight: float = 0.0
) -> torch.Tensor:
    """(batch,) mean squared error; with `subject` (batch, 1, H, W) in [0, 1], a mean weighted 1 + subject_weight
    inside it and 1 outside, normalised per sample so the loss keeps its scale."""
    error = F.mse_loss(prediction.float(), target.float(), reduction="none")
    if not subject_weight or subject is None:
        return error.mean(dim=(1, 2, 3))
    weight = 1.0 + subject_weight * subject.float()
    return (error * weight).mean(dim=(1, 2, 3)) / weight.mean(dim=(1, 2, 3))
