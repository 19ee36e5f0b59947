"""The tiny kit's metric backbones: a CLIP with text and image towers, a DINO ViT and an aesthetic head on
that CLIP, with random weights in the formats `flexip eval score` loads, so that the evaluation runs offline
end to end.

`flexip tiny-models DIR` writes them in DIR/metrics/ (`ModelSet.metrics`): `clip/` (a transformers CLIPModel
and its CLIPProcessor: --clip-model, --iqa-model, --aesthetic-model), `dino/` (a DINO ViT without pooler:
--dino-model) and `aesthetic.safetensors` (--aesthetic-head). Their scores mean nothing; they run the code
that real backbones run.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel, CLIPProcessor, ViTConfig, ViTModel

from ..atomic import atomic_directory
from ..tiny import (
    IMAGE_SIZE,
    TINY_VISION_CONFIG,
    WIDTH,
    ModelSet,
    byte_level_tokenizer,
    tiny_clip_image_processor,
    tiny_text_config,
)
from .aesthetic import AestheticHead


def save_tiny_backbones(root: str | os.PathLike, seed: int = 0, overwrite: bool = False) -> Path:
    """Write the metric backbones into the model set at `root`, as its metrics/ part: atomically, and kept as
    it is if it exists unless `overwrite` replaces it (as `save_tiny_model_set` does its parts). Returns the
    folder."""
    folder = ModelSet(Path(root)).metrics
    if overwrite or not folder.exists():
        with atomic_directory(folder) as tmp:
            _write_backbones(tmp, seed)
    return folder


def _write_backbones(folder: Path, seed: int) -> None:
    torch.manual_seed(seed)
    tokenizer = byte_level_tokenizer()
    clip_config = CLIPConfig(
        text_config=tiny_text_config(tokenizer), vision_config=TINY_VISION_CONFIG, projection_dim=WIDTH
    )
    CLIPModel(clip_config).save_pretrained(folder / "clip")
    processor = CLIPProcessor(image_processor=tiny_clip_image_processor(), tokenizer=tokenizer)
    processor.save_pretrained(folder / "clip")
    # DINO-I reads a DINO ViT's [CLS] token without the pooler (`DinoFeatures`), as DreamBooth measured it.
    dino_config = ViTConfig(
        hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        image_size=IMAGE_SIZE, patch_size=8,
    )  # fmt: skip
    ViTModel(dino_config, add_pooling_layer=False).save_pretrained(folder / "dino")
    save_file(AestheticHead(embed_dim=WIDTH).state_dict(), folder / "aesthetic.safetensors")
