"""Loading the frozen models training needs: the Stable Diffusion parts and the two reference encoders."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from ..errors import FlexIPError
from ..reference import ReferenceEncoder
from .config import ModelConfig

logger = logging.getLogger(__name__)


@dataclass
class FrozenModels:
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler  # the training noise schedule of the base model
    encoder: ReferenceEncoder


def prepare_tiny_models(config: ModelConfig) -> None:
    """Write the tiny model set where the config says, unless it is already there.

    A kit written before the kit had a data set gets only its `data/`: its models are left as they are.
    """
    from ..tiny import ModelSet, save_tiny_data_set, save_tiny_model_set

    models = ModelSet(Path(config.tiny_models))
    if not (models.base / "model_index.json").is_file():
        logger.info("writing the tiny model set to %s (first run only)", models.root)
        save_tiny_model_set(models.root)
    elif not models.manifest.is_file():
        logger.info("writing the tiny data set to %s (the kit there predates it)", models.data)
        save_tiny_data_set(models.data)


def _check_local(kind: str, reference: str) -> None:
    """Fail at once on a missing local path instead of asking the hub about a name that cannot be a repo."""
    if reference.startswith((".", "/", "~")) and not Path(reference).expanduser().exists():
        raise FlexIPError(
            f"config model.{kind}: {reference!r} does not exist; give an existing directory or a hub id "
            "(for the tiny models: `flexip tiny-models DIR`, or set model.tiny_models)"
        )


def _load(kind: str, reference: str, loader):
    try:
        return loader()
    except FlexIPError:
        raise
    except Exception as e:  # diffusers/transformers raise OSError, ValueError or hub errors for a bad path
        raise FlexIPError(
            f"config model.{kind} {reference!r}: cannot load it ({str(e).splitlines()[0]}); give a local directory "
            "or a Hugging Face hub id (downloaded once, then cached)"
        ) from e


def load_reference_encoder(config: ModelConfig, dtype: torch.dtype) -> ReferenceEncoder:
    _check_local("image_encoder", config.image_encoder)
    _check_local("dino_encoder", config.dino_encoder)
    return _load(
        "image_encoder/dino_encoder",
        f"{config.image_encoder}, {config.dino_encoder}",
        lambda: ReferenceEncoder.from_pretrained(
            config.image_encoder, config.dino_encoder, config.dino_layer, dtype
        ),
    )


def load_frozen_models(config: ModelConfig, dtype: torch.dtype) -> FrozenModels:
    """Every frozen model, in `dtype`, with gradients off."""
    base = config.base
    _check_local("base", base)

    def part(cls, subfolder, **kwargs):
        return _load("base", base, lambda: cls.from_pretrained(base, subfolder=subfolder, **kwargs))

    scheduler = part(DDPMScheduler, "scheduler")
    if scheduler.config.prediction_type != "epsilon":
        raise FlexIPError(
            f"config model.base {base!r} predicts {scheduler.config.prediction_type!r}; FlexIP trains with the "
            "epsilon objective (method.md §3): use an epsilon-prediction model such as Stable Diffusion 1.5"
        )
    models = FrozenModels(
        tokenizer=part(CLIPTokenizer, "tokenizer"),
        text_encoder=part(CLIPTextModel, "text_encoder", dtype=dtype),
        vae=part(AutoencoderKL, "vae", torch_dtype=dtype),
        unet=part(UNet2DConditionModel, "unet", torch_dtype=dtype),
        noise_scheduler=scheduler,
        encoder=load_reference_encoder(config, dtype),
    )
    for module in (models.text_encoder, models.vae, models.unet):
        module.requires_grad_(False).eval()
    return models
