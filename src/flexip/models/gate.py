"""Dynamic weight gate (docs/method.md §2.4): the preservation weight g in [0, 1]."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import MODALITIES

COVERAGE_BINS = 10  # coverage is counted per tenth of the dial


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class DynamicWeightGate(nn.Module):
    """One learnable logit per data modality; in training each sample's g is noisy so the whole dial is trained.

    A training sample's g is `sigmoid(logit[modality] + noise_std * eps)`, except for a fixed share of samples
    (`uniform_share`) whose g is drawn uniformly from [0, 1] whatever their modality. The logits still learn
    each modality's bias from the other samples; the uniform share keeps every tenth of the dial visited by
    both modalities however far they drift (docs/decisions/training.md, "The gate keeps the whole dial
    trained"). At inference the user sets g directly; the gate only reports what training learned per
    modality.
    """

    def __init__(
        self, image_init: float = 0.8, video_init: float = 0.2, noise_std: float = 1.5, uniform_share: float = 0.2
    ):
        super().__init__()
        self.noise_std = noise_std
        self.uniform_share = uniform_share
        self.logits = nn.Parameter(torch.tensor([_logit(image_init), _logit(video_init)]))

    def forward(self, modality: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-sample g for `modality` (batch,) of indices into MODALITIES; noisy in training mode."""
        logits = self.logits[modality]
        if not self.training:
            return torch.sigmoid(logits)
        # Every draw is made whatever the settings, so the random stream after the gate does not depend on them.
        noise = torch.randn(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
        pick, uniform = torch.rand((2, *logits.shape), generator=generator, device=logits.device, dtype=logits.dtype)
        g = torch.sigmoid(logits + self.noise_std * noise)
        # The uniform samples carry no gradient to the logits: their g does not depend on them.
        return torch.where(pick < self.uniform_share, uniform, g)

    def learned_values(self) -> dict[str, float]:
        """The noise-free g of each modality, for logging."""
        values = torch.sigmoid(self.logits.detach().float())
        return {name: float(value) for name, value in zip(MODALITIES, values)}


def coverage_counts(g: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
    """(len(MODALITIES), COVERAGE_BINS) counts of the samples whose g falls in each tenth of [0, 1]."""
    bins = (g.detach().float() * COVERAGE_BINS).long().clamp(0, COVERAGE_BINS - 1)
    flat = modality.long() * COVERAGE_BINS + bins
    return torch.bincount(flat, minlength=len(MODALITIES) * COVERAGE_BINS).view(len(MODALITIES), COVERAGE_BINS)


def coverage_shares(counts: torch.Tensor) -> dict[str, list[float]]:
    """Each modality's share of its samples per tenth of the dial (all zero for a modality with no samples)."""
    totals = counts.sum(dim=1, keepdim=True).clamp(min=1)
    shares = (counts.float() / totals).tolist()
    return {name: [round(share, 4) for share in row] for name, row in zip(MODALITIES, shares)}
