"""What a calibration scores each image with: how much of the reference's identity it carries, and how well it
follows its prompt.

A scorer is any object with the `Scorer` protocol's two methods and two names (the demo recipe's judge is
one). The default, `MetricScorer`, is the evaluation's own DINO-I and CLIP-T (`flexip.evaluation`), with the
backbones `flexip eval score` takes, so that a calibration and an evaluation measure the same thing. A scorer
decides what "evenly" means: the map is even along the curve the scorer sees, and is recorded with its names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from PIL import Image

from ..evaluation import metrics
from ..evaluation.extractors import ClipFeatures, DinoFeatures
from ..evaluation.score_config import ScoreConfig

DEFAULTS = ScoreConfig(aesthetic_head="")  # `flexip eval score`'s backbones


class Scorer(Protocol):
    identity_name: (
        str  # what the calibration records as its identity scorer, e.g. "DINO-I facebook/dino-vits16"
    )
    prompt_name: str  # ... and as its prompt scorer

    def identity(self, images: list[Image.Image], references: list[Image.Image]) -> Sequence[float]:
        """Per image, how much of its reference's identity it carries (higher: more)."""

    def prompt(self, images: list[Image.Image], prompts: list[str]) -> Sequence[float]:
        """Per image, how well it follows its prompt (higher: better)."""


class MetricScorer:
    """DINO-I for identity (the DINO [CLS] cosine with the reference) and CLIP-T for the prompt (the CLIP image
    embedding's cosine with the prompt's)."""

    def __init__(self, clip: ClipFeatures, dino: DinoFeatures):
        self.clip, self.dino = clip, dino
        self.identity_name = f"DINO-I {dino.name}"
        self.prompt_name = f"CLIP-T {clip.name}"

    @classmethod
    def from_pretrained(
        cls, clip_model: str = DEFAULTS.clip_model, dino_model: str = DEFAULTS.dino_model,
        device: torch.device | str = "cpu",
    ) -> MetricScorer:  # fmt: skip
        """The backbones by hub id or local folder (the tiny kit's `metrics/clip` and `metrics/dino` offline)."""
        return cls(
            ClipFeatures.from_pretrained(clip_model, device, "--clip-model"),
            DinoFeatures.from_pretrained(dino_model, device, "--dino-model"),
        )

    def identity(self, images: list[Image.Image], references: list[Image.Image]) -> list[float]:
        return metrics.cosine_similarity(self.dino(images), self.dino(references)).tolist()

    def prompt(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        return metrics.cosine_similarity(
            self.clip.image_embeds(images), self.clip.text_embeds(prompts)
        ).tolist()
