"""Dynamic weight gate (method.md §2.4): the preservation weight g in [0, 1]."""

from __future__ import annotations

import math

import torch
from torch import nn

MODALITIES = ("image", "video")


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class DynamicWeightGate(nn.Module):
    """One learnable logit per data modality; training adds Gaussian noise so g visits the whole dial.

    At inference the user sets g directly; the gate only reports what training learned per modality.
    """

    def __init__(self, image_init: float = 0.8, video_init: float = 0.2, noise_std: float = 1.5):
        super().__init__()
        self.noise_std = noise_std
        self.logits = nn.Parameter(torch.tensor([_logit(image_init), _logit(video_init)]))

    def forward(self, modality: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-sample g for `modality` (batch,) of indices into MODALITIES; noisy in training mode."""
        logits = self.logits[modality]
        if self.training and self.noise_std > 0:
            noise = torch.randn(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
            logits = logits + self.noise_std * noise
        return torch.sigmoid(logits)

    def learned_values(self) -> dict[str, float]:
        """The noise-free g of each modality, for logging."""
        values = torch.sigmoid(self.logits.detach().float())
        return {name: float(value) for name, value in zip(MODALITIES, values)}
