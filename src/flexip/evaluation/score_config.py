"""Which backbones produce the metrics, and against what identity is compared: recorded beside every score.

Kept apart from `score` so that the command line can show the defaults without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import FlexIPError

IDENTITY_MODES = ("reference", "all")


@dataclass(frozen=True)
class ScoreConfig:
    """The backbones behind the metrics (hub ids or local paths), recorded beside every score."""

    aesthetic_head: str  # LAION's sac+logos+ava1-l14-linearMSE.pth, or a safetensors copy
    clip_model: str = "openai/clip-vit-large-patch14"  # CLIP-I and CLIP-T (torchmetrics' CLIPScore default)
    dino_model: str = "facebook/dino-vits16"  # DINO-I, as DreamBooth measured it
    iqa_model: str = "openai/clip-vit-large-patch14"  # CLIP-IQA
    aesthetic_model: str = "openai/clip-vit-large-patch14"  # what the LAION head was trained on
    identity: str = "reference"  # compare with the reference used, or average over "all" real images

    def __post_init__(self):
        if self.identity not in IDENTITY_MODES:
            raise FlexIPError(f"--identity must be one of {', '.join(IDENTITY_MODES)}, got {self.identity!r}")
