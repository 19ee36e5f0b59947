"""The training configuration: typed dataclasses read from YAML, with `--set key=value` overrides.

Unknown keys are errors that name the key (with the closest known one), so a typo never silently trains with
a default. Relative paths are taken from the current directory, like every other command-line path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..defaults import BASE_MODEL, DINO_ENCODER, IMAGE_ENCODER
from ..errors import FlexIPError
from ..families import family_named
from ..models.config import GateConfig, PersonalizationConfig, PreservationConfig, check_values
from ..models.gate import MODALITIES


@dataclass
class ModelConfig:
    # Stable Diffusion 1.5 or SDXL pipeline directory or hub id (unet/, vae/, text encoders, tokenizers,
    # scheduler/); the family is read from its UNet.
    base: str = BASE_MODEL
    # A VAE to use instead of the base's (AutoencoderKL directory or hub id), e.g. SDXL's float16 fix
    # madebyollin/sdxl-vae-fp16-fix; empty: the base's own (SDXL's then encodes in float32 under fp16).
    vae: str = ""
    # CLIP vision model: a directory, a hub id, or "owner/repo/sub/folder" for a model in a repository folder.
    image_encoder: str = IMAGE_ENCODER
    dino_encoder: str = DINO_ENCODER  # DINOv2 model, same conventions
    # Where `flexip tiny-models` output is written when absent, so tiny.yaml runs from a fresh clone; empty
    # for real models. base/image_encoder/dino_encoder still name the directories to load.
    tiny_models: str = ""
    tiny_family: str = "sd15"  # the base family of the tiny model set written there: sd15 or sdxl
    dino_layer: int = -2  # which DINOv2 hidden state feeds the Preservation adapter (method.md §2.1)
    preservation: PreservationConfig = field(default_factory=PreservationConfig)
    personalization: PersonalizationConfig = field(default_factory=PersonalizationConfig)
    gate: GateConfig = field(default_factory=GateConfig)


@dataclass
class DataConfig:
    manifest: str = ""  # JSONL training manifest (docs/formats.md)
    # Webdataset shards to stream instead (`flexip prep shards`): their folder, or a path, brace pattern
    # ("shards/{000000..000999}.tar"), `::`-joined list or URL that webdataset opens. Replaces `manifest`.
    shards: str = ""
    # A feature cache folder to train from instead (`flexip prep cache`): the frozen encoders' outputs, made
    # once. Replaces `manifest`.
    cache: str = ""
    # Shards and caches stream in this many lanes (training/stream.py): a multiple of processes x num_workers,
    # at most the number of shards. A resumed run must keep it.
    lanes: int = 8
    resolution: int = 512  # target images are resized and centre-cropped to this many pixels
    video_fraction: float = 0.5  # share of video (variant) pairs in every batch; 0.5 = the paper's 1:1
    num_workers: int = 4  # DataLoader worker processes that read and augment images
    prefetch_factor: int = 2  # batches each worker loads ahead (with num_workers > 0)
    # Share of image pairs captioned with another image pair's caption, so that only the reference shows the
    # target's scene: it teaches the dial's preservation end to outrank the prompt (docs/demo-model.md, Part 2).
    swap_captions: float = 0.0


@dataclass
class DropoutConfig:
    """Classifier-free-guidance condition dropout (method.md §3): disjoint per-sample probabilities."""

    text: float = 0.05  # caption replaced by the empty prompt
    image: float = 0.05  # reference replaced by the null (all-zero) reference
    both: float = 0.05
    # Caption dropout on image (invariant) pairs when it should differ from `text`; unset = `text`. An invariant
    # pair's caption describes the reference's own scene: the more often it is dropped, the more of the target
    # the Preservation branch must rebuild from the reference alone (docs/demo-model.md, Part 2).
    text_on_image_pairs: float | None = None

    def text_rate(self, modality: str) -> float:
        if modality == "image" and self.text_on_image_pairs is not None:
            return self.text_on_image_pairs
        return self.text


@dataclass
class ValidationConfig:
    every: int = 1000  # optimizer steps between contact sheets (and one at the end)
    prompts: list[str] = field(
        default_factory=lambda: ["a photo of it", "it on a beach", "a watercolor painting of it"]
    )
    preservation: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])  # one column per g
    steps: int = 30  # DDIM steps
    guidance_scale: float = 7.5
    seed: int = 0


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    dropout: DropoutConfig = field(default_factory=DropoutConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    output_dir: str = "runs/flexip"
    seed: int = 0  # data order, augmentation, noise, timesteps, dropout and gate noise all derive from it
    max_steps: int = 100_000  # optimizer steps
    batch_size: int = 8  # per process and micro-step
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    lr_warmup_steps: int = 0  # linear warm-up from learning_rate / N to learning_rate over N optimizer steps; 0 = off
    max_grad_norm: float = 0.0  # clip the adapter's gradient norm to this before each optimizer step; 0 = off
    optimizer: str = "adamw"  # adamw | adamw8bit (bitsandbytes' 8-bit AdamW: CUDA only, a quarter of the state)
    weight_decay: float = 0.01  # AdamW; never applied to the gate logits (method.md §2.4)
    # Min-SNR-gamma loss weighting (Hang et al. 2023): each sample's MSE times min(SNR, gamma) / SNR; 0 = plain
    # MSE. It shifts weight to the noisy steps where a subject's global look (colour, background) is decided;
    # the demo recipe needs it (docs/demo-model.md, Part 2).
    min_snr_gamma: float = 0.0
    # Extra loss weight on the subject: pixels inside an image pair's mask (its target is its reference) weigh
    # 1 + this, the rest 1; video pairs have no target mask. 0 = off. A small subject is a few latent pixels
    # whose error the background drowns out (docs/demo-model.md, Part 2).
    subject_loss_weight: float = 0.0
    mixed_precision: str = (
        "no"  # no | fp16 | bf16: frozen models are stored in this dtype, the adapter in fp32
    )
    gradient_checkpointing: bool = False  # recompute UNet activations in backward: less memory, ~30% slower
    tf32: bool = False  # allow TF32 matmuls and convolutions (Ampere and later GPUs): faster, slightly less exact
    compile_unet: bool = False  # torch.compile the frozen UNet, adapter attached (the first steps compile)
    checkpoint_every: int = 1000  # optimizer steps between full-state checkpoints
    keep_checkpoints: int = 3  # the newest K checkpoints are kept
    log_every: int = 10  # optimizer steps between metric lines
    log_with: list[str] = field(default_factory=lambda: ["tensorboard"])  # tensorboard and/or wandb

    def validate(self) -> None:
        """Check values that YAML types cannot express; raises FlexIPError naming the key."""
        positive = {
            "max_steps": self.max_steps, "batch_size": self.batch_size, "checkpoint_every": self.checkpoint_every,
            "gradient_accumulation_steps": self.gradient_accumulation_steps, "keep_checkpoints": self.keep_checkpoints,
            "log_every": self.log_every, "data.resolution": self.data.resolution, "validation.every": self.validation.every,
            "validation.steps": self.validation.steps,
        }  # fmt: skip
        for key, value in positive.items():
            if value < 1:
                raise FlexIPError(f"config {key}: {value} must be at least 1")
        data = self.data
        if data.resolution % 8:
            raise FlexIPError(
                f"config data.resolution: {data.resolution} must be a multiple of 8 (the VAE's and the "
                f"pipelines' grid), e.g. {max(8, data.resolution // 8 * 8)}"
            )
        shares = {"video_fraction": data.video_fraction, "swap_captions": data.swap_captions}
        for key, value in shares.items():
            if not 0.0 <= value <= 1.0:
                raise FlexIPError(f"config data.{key}: {value} must be in [0, 1]")
        for key in ("min_snr_gamma", "subject_loss_weight"):
            if not 0 <= getattr(self, key) < math.inf:  # also NaN
                raise FlexIPError(f"config {key}: {getattr(self, key)} must be 0 (off) or positive, and finite")
        if not 0 < self.learning_rate < math.inf:
            raise FlexIPError(f"config learning_rate: {self.learning_rate} must be a finite number above 0, e.g. 1e-4")
        if not (isinstance(self.lr_warmup_steps, int) and self.lr_warmup_steps >= 0):
            raise FlexIPError(f"config lr_warmup_steps: {self.lr_warmup_steps} must be 0 (off) or a positive integer")
        if not 0 <= self.max_grad_norm < math.inf:
            raise FlexIPError(f"config max_grad_norm: {self.max_grad_norm} must be 0 (off) or positive, and finite")
        if self.optimizer not in ("adamw", "adamw8bit"):
            raise FlexIPError(f"config optimizer: {self.optimizer!r} is not one of adamw, adamw8bit")
        if self.data.prefetch_factor < 1:
            raise FlexIPError(f"config data.prefetch_factor: {self.data.prefetch_factor} must be at least 1")
        if not 0 <= self.weight_decay < math.inf:
            raise FlexIPError(f"config weight_decay: {self.weight_decay} must be 0 (off) or positive, and finite")
        if not math.isfinite(self.validation.guidance_scale):
            raise FlexIPError(f"config validation.guidance_scale: {self.validation.guidance_scale} must be finite")
        # numpy's global seed (which accelerate's set_seed also sets) takes 32 bits.
        for key, seed in (("seed", self.seed), ("validation.seed", self.validation.seed)):
            if not 0 <= seed < 2**32:
                raise FlexIPError(f"config {key}: {seed} must be between 0 and 2**32 - 1")
        for part in ("preservation", "personalization", "gate"):
            check_values(getattr(self.model, part), "config", f"model.{part}.")
        family_named(self.model.tiny_family, "config model.tiny_family")
        if self.data.num_workers < 0:
            raise FlexIPError(f"config data.num_workers: {self.data.num_workers} must be 0 or more")
        drop = self.dropout
        for modality in MODALITIES:
            rates = (drop.text_rate(modality), drop.image, drop.both)
            if not (min(rates) >= 0 and sum(rates) <= 1):  # also NaN
                raise FlexIPError(
                    f"config dropout: {drop} must be non-negative probabilities summing to at most 1 for "
                    f"{modality} pairs"
                )
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise FlexIPError(
                f"config mixed_precision: {self.mixed_precision!r} is not one of no, fp16, bf16"
            )
        unknown = sorted(set(self.log_with) - {"tensorboard", "wandb"})
        if unknown:
            raise FlexIPError(f"config log_with: {unknown} unknown; choose from tensorboard, wandb")
        if self.data.shards and self.data.cache:
            raise FlexIPError(
                "config data.shards and data.cache are both set: a cache is made from shards, train from one of them"
            )
        if not (self.data.manifest or self.data.shards or self.data.cache):
            raise FlexIPError(
                "config data.manifest is empty: name the JSONL training manifest (docs/formats.md), or set "
                "data.shards or data.cache"
            )
        if (self.data.shards or self.data.cache) and self.data.swap_captions:
            raise FlexIPError(
                "config data.swap_captions draws captions from the whole data set, which a stream of shards cannot: "
                "set it to 0, or train from data.manifest"
            )
        if self.data.lanes < 1:
            raise FlexIPError(f"config data.lanes: {self.data.lanes} must be at least 1")
        if not self.validation.prompts or not self.validation.preservation:
            raise FlexIPError(
                "config validation.prompts and validation.preservation need at least one entry each"
            )
        bad_g = [g for g in self.validation.preservation if not 0.0 <= g <= 1.0]
        if bad_g:
            raise FlexIPError(f"config validation.preservation: {bad_g} outside [0, 1]")


def load_config(path: str | os.PathLike, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML config, apply `key.sub=value` overrides (values parsed as YAML), check it."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise FlexIPError(
            f"config {path}: cannot read it ({e.strerror}); pass --config with a YAML file"
        ) from e
    except yaml.YAMLError as e:
        raise FlexIPError(f"config {path} is not valid YAML: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise FlexIPError(
            f"config {path}: expected a mapping of keys at the top level, got {type(data).__name__}"
        )
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key:
            raise FlexIPError(f"--set {override!r}: expected KEY=VALUE, e.g. --set data.num_workers=0")
        _assign(data, key.strip().split("."), yaml.safe_load(text), f"--set {key}")
    config = _build(TrainConfig, data, str(path))
    config.validate()
    return config


def config_to_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)


def _assign(data: dict, keys: list[str], value, where: str) -> None:
    for key in keys[:-1]:
        child = data.setdefault(key, {})
        if not isinstance(child, dict):
            raise FlexIPError(f"{where}: {key} is not a section")
        data = child
    data[keys[-1]] = value


def _build(cls, data, source: str, prefix: str = ""):
    """Turn nested dicts into `cls`, checking every key and value type against the dataclass fields."""
    if not isinstance(data, dict):
        raise FlexIPError(
            f"{source}: {prefix.rstrip('.') or 'config'} must be a mapping of keys, got {data!r}"
        )
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean {prefix}{close[0]}?" if close else f"known keys: {', '.join(names)}"
            raise FlexIPError(f"{source}: unknown key {prefix}{key} ({hint})")
    return cls(**{key: _convert(value, hints[key], source, f"{prefix}{key}") for key, value in data.items()})


def _convert(value, kind, source: str, key: str):
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # only `X | None` is used
        if value is None:
            return None
        (kind,) = [k for k in typing.get_args(kind) if k is not type(None)]
    if dataclasses.is_dataclass(kind):
        return _build(kind, value, source, f"{key}.")
    if typing.get_origin(kind) is list:
        if not isinstance(value, list):
            raise FlexIPError(f"{source}: {key} must be a list, got {value!r}")
        (item,) = typing.get_args(kind)
        return [_convert(v, item, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if kind is float and isinstance(value, str):
        # PyYAML reads "1e-4" (no dot) as a string; any other string gets the typed error below.
        with contextlib.suppress(ValueError):
            return float(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise FlexIPError(f"{source}: {key} must be {kind.__name__}, got {value!r}")
    return value
