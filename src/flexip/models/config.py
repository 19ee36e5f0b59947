"""The adapter's configuration: every size and setting needed to rebuild it, typed, and checked when read."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field

from ..errors import FlexIPError
from ..families import SD15, family_named

FORMAT_VERSION = 1


@dataclass
class PreservationConfig:
    num_queries: int = 16  # learnable identity queries
    num_clip_tokens: int = 4  # tokens projected from the CLIP image embedding
    width: int = 768  # resampler width
    depth: int = 4
    heads: int = 12
    head_dim: int = 64
    ff_mult: int = 4


@dataclass
class PersonalizationConfig:
    num_clip_tokens: int = 4  # tokens projected from the CLIP image embedding
    depth: int = 2
    heads: int = 12
    head_dim: int = 64
    ff_mult: int = 4


@dataclass
class GateConfig:
    image_init: float = 0.8  # g for image (invariant) samples at the start of training
    video_init: float = 0.2  # g for video (variant) samples
    noise_std: float = 1.5  # logit noise during training, so every g in [0, 1] is visited
    uniform_share: float = 0.2  # share of training samples whose g is uniform on [0, 1], whatever the drift


@dataclass
class FlexIPConfig:
    """Everything needed to rebuild the adapter; sizes come from the base model and encoders it was made for."""

    cross_attention_dim: int  # width of the UNet's text tokens (K/V input of every attn2)
    clip_embed_dim: int  # CLIP image embedding (projection) size
    dino_hidden_dim: int  # DINOv2 hidden size
    layers: dict[str, list[int]]  # attn2 processor name -> [K/V input width, K/V output width]
    base_model: str = ""  # diffusers base model it was trained on: hub id, or a path ("./x" = beside the adapter)
    base_family: str = SD15.name  # the base model's family (flexip.families); a file without one is SD1.5's
    image_encoder: str = ""  # CLIP vision model it was trained with, same convention
    dino_encoder: str = ""  # DINOv2 model it was trained with, same convention
    dino_layer: int = -2  # which DINOv2 hidden state feeds the Preservation adapter (-2: penultimate block)
    preservation: PreservationConfig = field(default_factory=PreservationConfig)
    personalization: PersonalizationConfig = field(default_factory=PersonalizationConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> FlexIPConfig:
        data = dict(data)
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise FlexIPError(
                f"{source}: format_version {version!r} is not supported (this flexip reads {FORMAT_VERSION}); "
                "upgrade flexip or re-export the adapter"
            )
        nested = {"preservation": PreservationConfig, "personalization": PersonalizationConfig, "gate": GateConfig}
        for key, sub_cls in nested.items():
            if key in data:
                if not isinstance(data[key], dict):
                    raise FlexIPError(f"{source}: {key} must be a mapping of keys, got {data[key]!r}")
                data[key] = _build(sub_cls, data[key], f"{source}: {key}")
        config = _build(cls, data, source)
        check_values(config, source)
        family_named(config.base_family, f"{source}: base_family")
        layers = config.layers
        if not isinstance(layers, dict) or not all(
            isinstance(name, str) and _is_sizes(widths, 2) for name, widths in layers.items()
        ):
            raise FlexIPError(f"{source}: layers must map layer names to [K/V input width, K/V output width]")
        return config


def _build(cls, data: dict, source: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise FlexIPError(f"{source}: unknown key(s) {', '.join(unknown)}; known keys are {', '.join(sorted(names))}")
    try:
        return cls(**data)
    except TypeError as e:
        raise FlexIPError(f"{source}: {e}") from e


# Bounds on every size a config gives, so that a typo (width: 76800000) is named before anything is built; far
# above any real adapter's (SD1.5's are at most 2048 wide and 8 deep).
MAX_SIZE = 65536


def _is_sizes(value, count: int) -> bool:
    return (
        isinstance(value, list) and len(value) == count
        and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SIZE for v in value)
    )  # fmt: skip


def check_values(part, source: str, prefix: str = "") -> None:
    """Refuse a config value of the wrong type or range, naming its key: sizes are integers in [1, MAX_SIZE],
    the gate's initial g strictly inside (0, 1) (its logit is infinite at 0 and 1), every float finite."""
    hints = typing.get_type_hints(type(part))
    for item in dataclasses.fields(part):
        value, kind, key = getattr(part, item.name), hints[item.name], f"{prefix}{item.name}"
        if dataclasses.is_dataclass(value):
            check_values(value, source, f"{key}.")
            continue
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise FlexIPError(f"{source}: {key} must be an integer, got {value!r}")
        if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
            raise FlexIPError(f"{source}: {key} must be a finite number, got {value!r}")
        if kind is str and not isinstance(value, str):
            raise FlexIPError(f"{source}: {key} must be a string, got {value!r}")
        sized = isinstance(part, (PreservationConfig, PersonalizationConfig)) or item.name.endswith("_dim")
        if kind is int and sized and not 1 <= value <= MAX_SIZE:
            raise FlexIPError(f"{source}: {key}={value} must be between 1 and {MAX_SIZE}")
        if isinstance(part, GateConfig) and item.name.endswith("_init") and not 0.0 < value < 1.0:
            raise FlexIPError(f"{source}: {key}={value} must be strictly between 0 and 1, e.g. 0.8 or 0.2")
        if isinstance(part, GateConfig) and value < 0:
            raise FlexIPError(f"{source}: {key}={value} must not be negative")
        if isinstance(part, GateConfig) and item.name == "uniform_share" and value > 1:
            raise FlexIPError(f"{source}: {key}={value} is a share of the samples: give a value from 0 to 1")
