"""The base-model families FlexIP runs on, by name, and how a base model's family is found."""

from __future__ import annotations

import json
import os
from pathlib import Path

from huggingface_hub import try_to_load_from_cache
from safetensors import SafetensorError, safe_open
from torch import nn

from ..errors import FlexIPError
from ..model_paths import check_hub_model, refuse_pickled_weights
from .family import Family
from .flux import Flux1
from .names import check_family_name
from .sd15 import StableDiffusion15
from .sdxl import StableDiffusionXL

SD15 = StableDiffusion15()
SDXL = StableDiffusionXL()
FLUX1 = Flux1()
FAMILIES: dict[str, Family] = {family.name: family for family in (SD15, SDXL, FLUX1)}


def family_named(name: str, source: str = "base_family") -> Family:
    return FAMILIES[check_family_name(name, source)]


def family_of_unet(unet: nn.Module) -> Family:
    """The family whose denoiser `unet` is (SDXL's UNet has `addition_embed_type` "text_time", SD1.5's none;
    FLUX.1's is a FluxTransformer2DModel)."""
    for family in FAMILIES.values():
        if family.matches(unet):
            return family
    kind = getattr(unet.config, "addition_embed_type", None)
    titles = [family.title for family in FAMILIES.values()]
    raise FlexIPError(
        f"the base {type(unet).__name__} has addition_embed_type {kind!r}, which no FlexIP base family uses; "
        f"FlexIP runs on {', '.join(titles[:-1])} and {titles[-1]} bases"
    )


def family_of_base(base: str | os.PathLike) -> Family | None:
    """The family a base's `model_index.json` names (a diffusers directory, or a hub id already in the local
    cache) or a single checkpoint file's keys show, or None when it cannot be told here without the network:
    the loader then finds out."""
    if Path(base).is_file():
        return _family_of_checkpoint(Path(base))
    index = Path(base) / "model_index.json"
    if not index.is_file() and isinstance(base, str) and base.count("/") == 1:
        try:
            cached = try_to_load_from_cache(base, "model_index.json")
        except ValueError:  # not a hub id either (huggingface_hub's validation error): the loader will say so
            cached = None
        index = Path(cached) if isinstance(cached, str) else index
    try:
        entries = json.loads(index.read_text())
        name, transformer = entries.get("_class_name", ""), entries.get("transformer")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(transformer, list) and transformer[-1:] == [FLUX1.denoiser.model_class.__name__]:
        return FLUX1
    if name.startswith("StableDiffusionXL"):
        return SDXL
    return SD15 if name.startswith("StableDiffusion") else None


def _family_of_checkpoint(path: Path) -> Family | None:
    """An original-layout checkpoint's family from its key names (SDXL's text encoders sit under `conditioner.`,
    SD1.5's under `cond_stage_model.`; FLUX.1's transformer has double-stream blocks and a `vector_in` for the
    pooled CLIP text, which FLUX.2 lacks), read from the safetensors header only."""
    try:
        with safe_open(path, framework="pt") as file:
            keys = list(file.keys())
    except (OSError, SafetensorError):  # not a safetensors file: load_base says what to do
        return None
    if any(key.endswith("vector_in.in_layer.weight") for key in keys) and any(
        key.endswith("double_blocks.0.img_attn.norm.key_norm.scale") for key in keys
    ):
        return FLUX1
    if any(key.startswith("conditioner.") for key in keys):
        return SDXL
    return SD15 if any(key.startswith("cond_stage_model.") for key in keys) else None


def load_base(family: Family, base: str | os.PathLike, base_config: str | os.PathLike | None = None, **loading):
    """`family`'s stock text-to-image pipeline from a diffusers directory or hub id, or from one checkpoint file
    (`.safetensors`, the way most fine-tunes ship) through diffusers' `from_single_file`, which takes the
    components' configs from `base_config` (a diffusers directory or hub id of the same family) or, without it,
    from the hub repository it recognises in the file (the local cache when offline). `loading` goes to the
    loader (e.g. `torch_dtype`)."""
    path = Path(base)
    if not path.is_file():
        if base_config is not None:
            raise FlexIPError(
                f"base_config ({os.fspath(base_config)}) is for a base given as one checkpoint file, but {os.fspath(base)!r} "
                "is not a file: drop base_config (--base-config), or give the checkpoint file as the base"
            )
        index = path / "model_index.json"
        if index.is_file():
            try:
                entries = json.loads(index.read_text()).items()
                components = [name for name, value in entries if isinstance(value, list)]
            except (OSError, ValueError, AttributeError):
                components = []  # the loader says what is wrong with the index
            for component in components:
                refuse_pickled_weights(path / component, f"base's {component}")
        check_hub_model(base, "the base model", "model_index.json", loading.get("revision"))
        # Safetensors only, locally and from the hub: a pickled component is refused, never unpickled.
        return family.text_to_image.from_pretrained(os.fspath(base), use_safetensors=True, **loading)
    if path.suffix != ".safetensors":
        raise FlexIPError(
            f"{path}: a single-file base must be a .safetensors file (.ckpt and .bin files are pickles, which flexip "
            "never opens: they can run code); convert it to safetensors, or give a diffusers directory"
        )
    if base_config is not None:
        check_hub_model(base_config, "base_config", "model_index.json")
    return family.from_single_file(path, base_config, **loading)

