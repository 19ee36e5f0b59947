"""The adapter's configuration: every size and setting needed to rebuild it, typed, and checked when read."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import FlexIPError
from ..families.names import check_family_name
from ..settings.calibration import Calibration
from ..settings.typed_config import from_mapping

# Version 2 is version 1 with a "calibration": a config is written at the oldest version that holds it, so an
# adapter without a calibration stays readable by every flexip that reads version 1.
FORMAT_VERSION = 1
CALIBRATED_FORMAT_VERSION = 2

# Bounds on every size a config gives, so that a typo (width: 76800000) is named before anything is built; far
# above any real adapter's (SD1.5's are at most 2048 wide and 8 deep).
MAX_SIZE = 65536


def check_sizes(part, names: list[str], source: str, prefix: str) -> None:
    """Refuse a size of `part` outside [1, MAX_SIZE], naming its key (`prefix` + its name)."""
    for name in names:
        value = getattr(part, name)
        if not 1 <= value <= MAX_SIZE:
            raise FlexIPError(f"{source}: {prefix}{name}={value} must be between 1 and {MAX_SIZE}")


@dataclass
class PreservationConfig:
    num_queries: int = 16  # learnable identity queries
    num_clip_tokens: int = 4  # tokens projected from the CLIP image embedding
    width: int = 768  # resampler width
    depth: int = 4
    heads: int = 12
    head_dim: int = 64
    ff_mult: int = 4

    def check(self, source: str, prefix: str = "preservation.") -> None:
        check_sizes(self, [item.name for item in dataclasses.fields(self)], source, prefix)


@dataclass
class PersonalizationConfig:
    num_clip_tokens: int = 4  # tokens projected from the CLIP image embedding
    depth: int = 2
    heads: int = 12
    head_dim: int = 64
    ff_mult: int = 4

    def check(self, source: str, prefix: str = "personalization.") -> None:
        check_sizes(self, [item.name for item in dataclasses.fields(self)], source, prefix)


# The data modalities the gate learns a g for: invariant image pairs, and variant pairs (video frames, views).
MODALITIES = ("image", "video")


@dataclass
class GateConfig:
    image_init: float = 0.8  # g for image (invariant) samples at the start of training
    video_init: float = 0.2  # g for video (variant) samples
    noise_std: float = 1.5  # logit noise during training, so every g in [0, 1] is visited
    uniform_share: float = 0.2  # share of training samples whose g is uniform on [0, 1], whatever the drift

    def check(self, source: str, prefix: str = "gate.") -> None:
        """Each initial g strictly inside (0, 1) (its logit is infinite at 0 and 1), the noise not negative
        and the uniform share from 0 to 1."""
        for name in ("image_init", "video_init"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise FlexIPError(
                    f"{source}: {prefix}{name}={value} must be strictly between 0 and 1, e.g. 0.8 or 0.2"
                )
        for name in ("noise_std", "uniform_share"):
            if getattr(self, name) < 0:
                raise FlexIPError(f"{source}: {prefix}{name}={getattr(self, name)} must not be negative")
        if self.uniform_share > 1:
            raise FlexIPError(
                f"{source}: {prefix}uniform_share={self.uniform_share} is a share of the samples: give a "
                "value from 0 to 1"
            )


@dataclass
class FlexIPConfig:
    """Everything needed to rebuild the adapter; sizes come from the base model and encoders it was made for."""

    cross_attention_dim: int  # width of the UNet's text tokens (K/V input of every attn2)
    clip_embed_dim: int  # CLIP image embedding (projection) size
    dino_hidden_dim: int  # DINOv2 hidden size
    layers: dict[str, list[int]]  # attn2 processor name -> [K/V input width, K/V output width]
    base_model: str = ""  # the diffusers base it was trained on: hub id, or path ("./x": beside the adapter)
    base_family: str = "sd15"  # the base model's family (flexip.families); a file without one is SD1.5's
    image_encoder: str = ""  # CLIP vision model it was trained with, same convention
    dino_encoder: str = ""  # DINOv2 model it was trained with, same convention
    dino_layer: int = -2  # which DINOv2 hidden state feeds the Preservation adapter (-2: penultimate block)
    preservation: PreservationConfig = field(default_factory=PreservationConfig)
    personalization: PersonalizationConfig = field(default_factory=PersonalizationConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    calibration: Calibration | None = None  # the dial's calibration (flexip.settings.calibration), if any
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        if self.calibration is None:
            del data["calibration"]
        data["format_version"] = FORMAT_VERSION if self.calibration is None else CALIBRATED_FORMAT_VERSION
        return data

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> FlexIPConfig:
        """The config `data` (an adapter's flexip_config.json) gives, its keys, types and ranges checked; an
        error names `source`."""
        version = data.get("format_version")
        if version not in (FORMAT_VERSION, CALIBRATED_FORMAT_VERSION) or isinstance(version, bool):
            raise FlexIPError(
                f"{source}: format_version {version!r} is not supported (this flexip reads {FORMAT_VERSION} and "
                f"{CALIBRATED_FORMAT_VERSION}); upgrade flexip or re-export the adapter"
            )
        if version == FORMAT_VERSION and data.get("calibration") is not None:
            raise FlexIPError(
                f"{source}: a calibration needs format_version {CALIBRATED_FORMAT_VERSION} (the file says "
                f"{version}); calibrate the adapter again with `flexip calibrate`"
            )
        config = from_mapping(cls, data, source)
        config.check(source)
        return config

    def check(self, source: str) -> None:
        """Refuse a size outside [1, MAX_SIZE], a gate setting outside its range or an unknown family."""
        check_sizes(self, ["cross_attention_dim", "clip_embed_dim", "dino_hidden_dim"], source, "")
        self.preservation.check(source)
        self.personalization.check(source)
        self.gate.check(source)
        if self.calibration is not None:
            self.calibration.check(source)
        check_family_name(self.base_family, f"{source}: base_family")
        for name, widths in self.layers.items():
            if len(widths) != 2 or not all(1 <= width <= MAX_SIZE for width in widths):
                raise FlexIPError(
                    f"{source}: layers[{name!r}] is {widths}; each layer maps to [K/V input width, K/V "
                    f"output width], each from 1 to {MAX_SIZE}"
                )
