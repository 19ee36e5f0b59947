"""The FlexIP adapter: both adapters, the gate and every layer's branch K/V, as one saveable object."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from dataclasses import dataclass, field

import torch
from safetensors.torch import load_file, save
from torch import nn

from ..atomic import atomic_directory, atomic_write_bytes, recover_directory
from ..errors import FlexIPError
from ..families import SD15, family_named, family_of_unet
from .attention import (
    BranchProjections,
    FlexIPCondition,
    attach,
    branch_weights,
    cross_attention_layers,
    detach,
)
from .gate import DynamicWeightGate
from .personalization import PersonalizationAdapter
from .preservation import PreservationAdapter

FORMAT_VERSION = 1
CONFIG_NAME = "flexip_config.json"
WEIGHTS_NAME = "flexip_adapter.safetensors"


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


def _check_fits(config: FlexIPConfig, source: str) -> None:
    """Count the parameters on the meta device (nothing allocated) and refuse more than this machine's memory."""
    with torch.device("meta"):
        parameters = sum(p.numel() for p in FlexIPAdapter(config).parameters())
    needed, memory = parameters * 4, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > memory:
        raise FlexIPError(
            f"{source}: the adapter these sizes describe has {parameters:,} parameters ({needed / 2**30:.1f} GiB in "
            f"float32), more than this machine's {memory / 2**30:.1f} GiB of memory; check the sizes"
        )


def _module_key(layer_name: str) -> str:
    # nn.ModuleDict keys cannot contain dots; the config keeps the real processor names.
    return layer_name.removesuffix(".processor").replace(".", "__")


class FlexIPAdapter(nn.Module):
    """Preservation adapter, Personalization adapter, gate, and per-layer branch K/V (method.md §2).

    Build one for a UNet with `FlexIPAdapter.for_unet`, or load one with `from_pretrained`. `attach(unet)`
    installs it into the UNet's cross-attention layers, `detach(unet)` restores the original processors.
    """

    def __init__(self, config: FlexIPConfig):
        super().__init__()
        self.config = config
        pres, pers = config.preservation, config.personalization
        self.preservation = PreservationAdapter(
            config.clip_embed_dim, config.dino_hidden_dim, config.cross_attention_dim,
            pres.num_queries, pres.num_clip_tokens, pres.width, pres.depth, pres.heads, pres.head_dim, pres.ff_mult,
        )  # fmt: skip
        self.personalization = PersonalizationAdapter(
            config.clip_embed_dim, config.cross_attention_dim,
            pers.num_clip_tokens, pers.depth, pers.heads, pers.head_dim, pers.ff_mult,
        )  # fmt: skip
        self.gate = DynamicWeightGate(
            config.gate.image_init, config.gate.video_init, config.gate.noise_std, config.gate.uniform_share
        )
        self.layers = nn.ModuleDict(
            {_module_key(name): BranchProjections(in_dim, out_dim) for name, (in_dim, out_dim) in config.layers.items()}
        )

    @classmethod
    def for_unet(
        cls,
        unet: nn.Module,
        clip_embed_dim: int,
        dino_hidden_dim: int,
        base_model: str = "",
        image_encoder: str = "",
        dino_encoder: str = "",
        **overrides,
    ) -> FlexIPAdapter:
        """A fresh adapter sized from `unet`: exactly the base model until trained (`BranchProjections.start_from`)."""
        layers = cross_attention_layers(unet)
        if not layers:
            raise FlexIPError("the UNet has no cross-attention layers: FlexIP needs a text-conditioned UNet")
        for name, attn in layers.items():
            if attn.to_k.bias is not None or attn.to_v.bias is not None:
                raise FlexIPError(f"UNet layer {name}: K/V projections with bias are not supported")
        widths = {attn.to_k.in_features for attn in layers.values()}
        if len(widths) != 1:
            raise FlexIPError(f"the UNet's cross-attention layers take text of several widths {sorted(widths)}")
        config = FlexIPConfig.from_dict(
            {
                "cross_attention_dim": widths.pop(),
                "clip_embed_dim": clip_embed_dim,
                "dino_hidden_dim": dino_hidden_dim,
                "layers": {name: [a.to_k.in_features, a.to_k.out_features] for name, a in layers.items()},
                "base_model": base_model,
                "base_family": family_of_unet(unet).name,
                "image_encoder": image_encoder,
                "dino_encoder": dino_encoder,
                "format_version": FORMAT_VERSION,
                **overrides,
            },
            source="FlexIPAdapter.for_unet",
        )
        _check_fits(config, "FlexIPAdapter.for_unet")
        adapter = cls(config)
        for name, attn in layers.items():
            adapter.layers[_module_key(name)].start_from(attn)
        return adapter

    def forward(
        self,
        clip_embeds: torch.Tensor,
        dino_tokens: torch.Tensor,
        text_embeds: torch.Tensor,
        preservation: torch.Tensor | float,
        scale: torch.Tensor | float = 1.0,
        cache: bool = False,
    ) -> FlexIPCondition:
        """Encode P and S for a batch; pass the result to the UNet as `encoder_hidden_states=(text, condition)`.

        A branch that no sample uses (all g = 0, all g = 1, or s = 0) is not computed.
        """
        batch = text_embeds.shape[0]
        preservation_weight, personalization_weight = branch_weights(preservation, scale, batch, text_embeds.device)
        empty = text_embeds.new_zeros(batch, 0, text_embeds.shape[-1])
        preservation_tokens = (
            self.preservation(clip_embeds, dino_tokens) if preservation_weight.any() else empty
        )
        personalization_tokens = (
            self.personalization(clip_embeds, text_embeds) if personalization_weight.any() else empty
        )
        return FlexIPCondition.create(
            preservation_tokens, personalization_tokens, preservation_weight, personalization_weight, cache=cache
        )

    def layer_projections(self) -> dict[str, BranchProjections]:
        """Each cross-attention layer's branch K/V by the layer's processor name, in the config's order."""
        return {name: self.layers[_module_key(name)] for name in self.config.layers}

    def attach(self, unet: nn.Module) -> None:
        """Install the gated cross-attention in `unet`, after checking every layer's size."""
        self.check_compatible(unet)
        attach(unet, self.layer_projections())

    @staticmethod
    def detach(unet: nn.Module) -> None:
        """Restore the UNet's original attention processors."""
        detach(unet)

    def check_compatible(self, unet: nn.Module) -> None:
        """Fail on a base of another family, or with the first layer whose size differs from `unet`'s."""
        ours, theirs = family_named(self.config.base_family), family_of_unet(unet)
        if ours is not theirs:
            raise FlexIPError(
                f"this adapter was trained for {ours.title} (base_family {ours.name!r}) but the base model is "
                f"{theirs.title}: use a {ours.title} base, or an adapter trained for {theirs.title}"
            )
        layers = cross_attention_layers(unet)
        for name, (in_dim, out_dim) in self.config.layers.items():
            if name not in layers:
                raise FlexIPError(
                    f"adapter layer {name} does not exist in the base UNet: this adapter was made for another "
                    "base model architecture; use the base model it was trained with"
                )
            attn = layers[name]
            base = (attn.to_k.in_features, attn.to_k.out_features)
            if base != (in_dim, out_dim):
                raise FlexIPError(
                    f"adapter layer {name} has K/V {in_dim}->{out_dim} but the base UNet's is {base[0]}->{base[1]}: "
                    "this adapter was made for another base model; use the base model it was trained with"
                )
        missing = sorted(set(layers) - set(self.config.layers))
        if missing:
            raise FlexIPError(
                f"the base UNet has cross-attention layer {missing[0]} that the adapter lacks "
                f"({len(missing)} in all): use the base model the adapter was trained with"
            )

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write `flexip_config.json` and `flexip_adapter.safetensors` (float32 unless the weights are not).

        Every other file in `directory` is left alone. A new directory appears whole; in an existing one each
        file is replaced atomically, the weights first: a crash between the two leaves new weights under the
        old config, which is the same config while training, and otherwise a mismatch loading names.
        """
        directory = recover_directory(directory)
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in self.state_dict().items()}
        files = {
            WEIGHTS_NAME: save(state, metadata={"format": "pt", "flexip_format_version": str(FORMAT_VERSION)}),
            CONFIG_NAME: (json.dumps(self.config.to_dict(), indent=2) + "\n").encode(),
        }
        if directory.exists() and not directory.is_dir():
            raise FlexIPError(f"{directory} is a file; save the adapter into a folder")
        if directory.is_dir():
            for name, data in files.items():
                atomic_write_bytes(directory / name, data)
            return
        with atomic_directory(directory) as tmp:
            for name, data in files.items():
                (tmp / name).write_bytes(data)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, torch_dtype: torch.dtype | None = None) -> FlexIPAdapter:
        """Load an adapter directory written by `save_pretrained`; every tensor's name and shape is checked."""
        directory = recover_directory(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FlexIPError(
                    f"{path} not found: an adapter directory holds {CONFIG_NAME} and {WEIGHTS_NAME} "
                    "(written by FlexIPAdapter.save_pretrained or `flexip train`)"
                )
        try:
            config_data = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FlexIPError(f"{config_path} is not valid JSON ({e}); re-export the adapter") from e
        if not isinstance(config_data, dict):
            raise FlexIPError(f"{config_path}: expected a JSON object of settings; re-export the adapter")
        config = FlexIPConfig.from_dict(config_data, source=str(config_path))
        _check_fits(config, str(config_path))
        adapter = cls(config)
        try:
            state = load_file(weights_path)
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise FlexIPError(f"{weights_path} is not a readable safetensors file ({e}); re-export the adapter") from e
        expected = adapter.state_dict()
        for name, tensor in expected.items():
            if name not in state:
                raise FlexIPError(f"{weights_path}: tensor {name} is missing; the file does not match {CONFIG_NAME}")
            if not state[name].is_floating_point():  # loading would cast it silently into the float parameter
                raise FlexIPError(
                    f"{weights_path}: tensor {name} holds {str(state[name].dtype).removeprefix('torch.')} values, not "
                    "floating-point weights; the file is not a FlexIP adapter's: re-export the adapter"
                )
            if state[name].shape != tensor.shape:
                raise FlexIPError(
                    f"{weights_path}: tensor {name} has shape {tuple(state[name].shape)}, "
                    f"{CONFIG_NAME} implies {tuple(tensor.shape)}"
                )
        unexpected = sorted(set(state) - set(expected))
        if unexpected:
            raise FlexIPError(f"{weights_path}: unexpected tensor {unexpected[0]} ({len(unexpected)} in all)")
        broken = [name for name, tensor in state.items() if tensor.is_floating_point() and not tensor.isfinite().all()]
        if broken:
            raise FlexIPError(
                f"{weights_path}: tensor {broken[0]} holds NaN or infinite values ({len(broken)} tensors in all), "
                "which would give blank images; use an earlier checkpoint of the training run"
            )
        adapter.load_state_dict(state)
        adapter.source_directory = directory
        if torch_dtype is not None:
            adapter.to(torch_dtype)
        return adapter.eval()

    def resolve_model(self, reference: str) -> str:
        """A model id from the config; "./x" and "../x" are taken relative to the adapter directory."""
        directory = getattr(self, "source_directory", None)
        if directory is not None and reference.startswith(("./", "../")):
            return str((directory / reference).resolve())
        return reference
