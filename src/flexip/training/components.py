"""Loading the frozen models training needs: the base model's parts (its family's text path among them) and
the two reference encoders."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DiffusionPipeline
from torch import nn

from ..denoisers.denoiser import TrainableDenoiser
from ..denoisers.registry import DENOISERS, Denoiser
from ..errors import FlexIPError
from ..families.family import TextConditioning
from ..families.registry import FAMILIES, Family, family_named, family_of_unet
from ..model_paths import check_hub_model, refuse_pickled_weights
from ..references.encoder import ReferenceEncoder
from .config import PRECISION_DTYPES, ModelConfig, TrainConfig

logger = logging.getLogger(__name__)


def frozen_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype the frozen models are stored in under the config's `mixed_precision`."""
    return getattr(torch, PRECISION_DTYPES[mixed_precision])


@dataclass
class FrozenModels:
    family: Family  # the base model's (flexip.families)
    text: dict[str, object]  # the family's tokenizers and text encoders, by pipeline component name
    vae: AutoencoderKL
    unet: nn.Module  # the denoiser (a UNet2DConditionModel for SD1.5 and SDXL, FLUX.1's transformer)
    noise_scheduler: object  # the base's training noise schedule, of the denoiser's `scheduler_class()`
    encoder: ReferenceEncoder
    # The empty caption's conditioning (condition dropout's) for each count of dropped captions, encoded once per
    # count (`feature_cache.empty_captions`).
    empty_captions: dict[int, TextConditioning] = field(default_factory=dict)

    def modules(self) -> list[nn.Module]:
        """Every frozen module with weights (text encoders, VAE, UNet, reference encoders)."""
        return [*self.text_encoders(), self.vae, self.unet, self.encoder]

    def text_encoders(self) -> list[nn.Module]:
        return [part for part in self.text.values() if isinstance(part, nn.Module)]

    def cached_encoders(self) -> list[nn.Module]:
        """The encoders whose outputs a feature cache holds (the text and reference encoders): training from a
        cache runs them only for the empty caption and the validation sweep."""
        return [*self.text_encoders(), self.encoder]


def absolute_reference(reference: str) -> str:
    """A model as it is found from any directory: a local path made absolute, a hub id (or "") as it is."""
    path = Path(reference).expanduser()
    return str(path.resolve()) if reference and path.exists() else reference


def prepare_tiny_models(config: ModelConfig) -> None:
    """Write the tiny model set where the config says, unless it is already there.

    A kit written before the kit had a data set gets only its `data/`: its models are left as they are.
    """
    from ..tiny import ModelSet, save_tiny_data_set, save_tiny_model_set

    family = family_named(config.tiny_family, "config model.tiny_family")
    refuse_untrainable(family.denoiser, f"config model.tiny_family {family.name!r}")
    models = ModelSet(Path(config.tiny_models))
    if not (models.base / "model_index.json").is_file():
        logger.info("writing the tiny model set to %s (first run only)", models.root)
        save_tiny_model_set(models.root, family=family)
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


def _trainable_titles() -> str:
    return ", ".join(f.title for f in FAMILIES.values() if isinstance(f.denoiser, TrainableDenoiser))


def refuse_untrainable(denoiser: Denoiser, where: str) -> None:
    """Refuse, naming `where`, a base whose denoiser FlexIP joins for generation but does not train on yet."""
    if not isinstance(denoiser, TrainableDenoiser):
        families = [family.title for family in FAMILIES.values() if family.denoiser is denoiser]
        title = " or ".join(families) or denoiser.model_class.__name__  # a denoiser no family runs by default
        raise FlexIPError(
            f"{where} is a {title} base: FlexIP generates on {title} but does not train on it yet; train on a "
            f"base of one of {_trainable_titles()}"
        )


def _denoiser_of_base(base: str) -> TrainableDenoiser:
    """The kind of denoiser a base pipeline holds, as its `model_index.json` names it (its class and where); one
    FlexIP does not train on is refused before any model loads."""
    index = _load("base", base, lambda: DiffusionPipeline.load_config(base))
    for denoiser in DENOISERS.values():
        entry = index.get(denoiser.pipeline_attribute)
        if isinstance(entry, (list, tuple)) and entry[-1] == denoiser.model_class.__name__:
            refuse_untrainable(denoiser, f"config model.base {base!r}")
            return denoiser
    known = ", ".join(f"{d.pipeline_attribute}: {d.model_class.__name__}" for d in DENOISERS.values())
    raise FlexIPError(
        f"config model.base {base!r}: its model_index.json names no denoiser FlexIP joins ({known}); give a "
        f"base of one of {_trainable_titles()}"
    )


def check_objective(config: TrainConfig) -> None:
    """Refuse objective settings the base's denoiser does not train with, before any model loads."""
    _check_local("base", config.model.base)
    check_hub_model(config.model.base, "config model.base", "model_index.json")
    _denoiser_of_base(config.model.base).check_objective(config)


def load_frozen_models(config: ModelConfig, dtype: torch.dtype) -> FrozenModels:
    """Every frozen model, in `dtype`, with gradients off."""
    base = config.base
    _check_local("base", base)
    check_hub_model(base, "config model.base", "model_index.json")

    def part(cls, subfolder, **kwargs):
        return _load("base", base, lambda: cls.from_pretrained(base, subfolder=subfolder, **kwargs))

    def weights(cls, subfolder, **kwargs):  # safetensors only: a pickled component is refused, never unpickled
        refuse_pickled_weights(Path(base) / subfolder, f"base's {subfolder}")
        return part(cls, subfolder, use_safetensors=True, **kwargs)

    denoiser = _denoiser_of_base(base)
    scheduler = part(denoiser.scheduler_class(), "scheduler")
    unet = weights(denoiser.model_class, denoiser.pipeline_attribute, torch_dtype=dtype)
    family = family_of_unet(unet)
    denoiser.check_schedule(scheduler, f"config model.base {base!r}")
    text = {
        name: part(cls, name) if "tokenizer" in name else weights(cls, name, dtype=dtype)
        for name, cls in family.text_parts.items()
    }
    if config.vae:
        _check_local("vae", config.vae)
        check_hub_model(config.vae, "config model.vae")
        refuse_pickled_weights(Path(config.vae), "model.vae")
        vae = _load(
            "vae", config.vae,
            lambda: AutoencoderKL.from_pretrained(config.vae, torch_dtype=dtype, use_safetensors=True),
        )  # fmt: skip
    else:
        vae = weights(AutoencoderKL, "vae", torch_dtype=dtype)
    if family.vae_overflows_in_fp16 and dtype == torch.float16 and vae.config.force_upcast:
        # SDXL's own VAE overflows in float16 (its pipelines upcast it for the same reason): it encodes in
        # float32 unless model.vae names one fixed for float16 (force_upcast false in its config).
        logger.info("the base's VAE overflows in float16: it encodes in float32 (set model.vae to a fixed one)")
        vae.to(torch.float32)
    models = FrozenModels(
        family=family, text=text, vae=vae, unet=unet, noise_scheduler=scheduler,
        encoder=load_reference_encoder(config, dtype),
    )  # fmt: skip
    for module in models.modules():
        module.requires_grad_(False).eval()
    return models
