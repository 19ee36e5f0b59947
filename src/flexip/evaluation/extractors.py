"""Feature extractors for the metrics: the only part of evaluation that loads weights.

Each is configured by a hub id or a local directory, and its name is written into every result file, because
the backbones differ between papers (DINO ViT-S/16 vs ViT-S/8 vs DINOv2; CLIP ViT-B/32 vs L/14).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoConfig, AutoModel, AutoProcessor, CLIPModel

from ..errors import FlexIPError
from ..model_paths import check_hub_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def dino_transform(image: Image.Image, crop_size: int = 224, resize: int = 256) -> torch.Tensor:
    """The official DINO evaluation transform (torchvision Resize(256, bicubic), CenterCrop(224), Normalize):
    the hub's image-processor config for facebook/dino-vits16 differs from it. Returns (3, crop, crop)."""
    image = image.convert("RGB")
    width, height = image.size
    # Resize the shorter side to `resize`, the longer one in proportion, truncated as torchvision does.
    if width <= height:
        new_width, new_height = resize, int(resize * height / width)
    else:
        new_width, new_height = int(resize * width / height), resize
    image = image.resize((new_width, new_height), Image.BICUBIC)
    left = round((new_width - crop_size) / 2.0)
    top = round((new_height - crop_size) / 2.0)
    image = image.crop((left, top, left + crop_size, top + crop_size))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, H, W)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (pixels - mean) / std


def _load(loader, name: str, what: str, **kwargs):
    """`loader(name)`, failing in one line that names the option `what` and the model."""
    check_hub_model(name, what)
    if name.startswith((".", "/", "~")) and not Path(name).expanduser().exists():
        raise FlexIPError(f"{what} {name} does not exist; give a local model directory or a hub id")
    try:
        return loader(name, **kwargs)
    except (OSError, ValueError) as e:  # what transformers raises for a folder or file it cannot read
        reason = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
        raise FlexIPError(
            f"{what} {name!r} cannot be loaded ({reason}); give a local model directory or a hub id"
        ) from e


def _config(name: str, what: str, model_types: tuple[str, ...], wanted: str):
    """The model's config, read before its weights: a model of another kind is refused in one line, where its
    weights would load with warnings and fail on the first image, or not load at all."""
    config = _load(AutoConfig.from_pretrained, name, what)
    if config.model_type not in model_types:
        raise FlexIPError(f"{what} {name!r} is a {config.model_type!r} model, not {wanted}")
    return config


def _pooled(output) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output is the projected embedding; 4.x a tensor.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class DinoFeatures:
    """DINO-I features: the [CLS] token of a DINO ViT (or DINOv2) after its final norm."""

    def __init__(self, model, name: str):
        self.model = model.eval().requires_grad_(False)
        self.name = name

    @classmethod
    def from_pretrained(
        cls, name: str, device: torch.device | str = "cpu", what: str = "--dino-model"
    ) -> DinoFeatures:
        """The DINO ViT or DINOv2 `name` (a hub id or local directory); `what` names it in errors."""
        wanted = (
            "a DINO ViT or DINOv2 (model type 'vit' or 'dinov2'): give one such as facebook/dino-vits16, or "
            "offline the metrics/dino folder that `flexip tiny-models DIR` writes"
        )
        config = _config(name, what, ("vit", "dinov2"), wanted)
        # A ViT's pooler is an untrained dense layer for DINO checkpoints; the metric uses the raw [CLS].
        extra = {"add_pooling_layer": False} if config.model_type == "vit" else {}
        model = _load(AutoModel.from_pretrained, name, what, **extra)
        return cls(model.to(device), name)

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        """RGB images -> (batch, hidden) float32 features on the CPU."""
        param = next(self.model.parameters())
        pixels = torch.stack([dino_transform(image) for image in images]).to(param.device, param.dtype)
        # Tiny test models are trained at other sizes; at the checkpoint's own size this is a no-op.
        extra = {"interpolate_pos_encoding": True} if self.model.config.model_type == "vit" else {}
        hidden = self.model(pixel_values=pixels, **extra).last_hidden_state
        return hidden[:, 0].float().cpu()


class ClipFeatures:
    """CLIP image and text embeddings (the projected [CLS] and [EOS] tokens) of a transformers CLIPModel."""

    def __init__(self, model: CLIPModel, processor, name: str):
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.name = name

    @classmethod
    def from_pretrained(
        cls, name: str, device: torch.device | str = "cpu", what: str = "--clip-model"
    ) -> ClipFeatures:
        """The CLIP model `name` (a hub id or local directory) and its processor; `what` names it in
        errors."""
        wanted = (
            "a CLIP model with text and image towers (model type 'clip'): give one such as "
            "openai/clip-vit-large-patch14, or offline the metrics/clip folder that `flexip tiny-models DIR` "
            "writes"
        )
        _config(name, what, ("clip",), wanted)
        try:
            processor = AutoProcessor.from_pretrained(name)
        except (OSError, ValueError):  # a model saved without its processor's files
            processor = None
        if not hasattr(processor, "tokenizer") or not hasattr(processor, "image_processor"):
            raise FlexIPError(
                f"{what} {name!r} has no CLIP processor (a tokenizer and an image processor); save the "
                "model's CLIPProcessor in its folder (processor.save_pretrained)"
            )
        model = _load(CLIPModel.from_pretrained, name, what)
        return cls(model.to(device), processor, name)

    @torch.no_grad()
    def image_embeds(self, images: list[Image.Image]) -> torch.Tensor:
        """RGB images -> (batch, projection_dim) float32 embeddings on the CPU."""
        param = next(self.model.parameters())
        pixels = self.processor(images=[image.convert("RGB") for image in images], return_tensors="pt")[
            "pixel_values"
        ]
        return (
            _pooled(self.model.get_image_features(pixel_values=pixels.to(param.device, param.dtype)))
            .float()
            .cpu()
        )

    @torch.no_grad()
    def text_embeds(self, texts: list[str]) -> torch.Tensor:
        """Prompts -> (batch, projection_dim) float32 embeddings on the CPU (truncated to the model's
        length)."""
        device = next(self.model.parameters()).device
        tokens = self.processor(text=texts, return_tensors="pt", padding=True, truncation=True)
        output = self.model.get_text_features(
            input_ids=tokens["input_ids"].to(device), attention_mask=tokens["attention_mask"].to(device)
        )
        return _pooled(output).float().cpu()
