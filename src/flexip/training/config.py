"""The training configuration: typed dataclasses read from YAML, with `--set key=value` overrides.

The typed-config loader (settings/typed_config.py) refuses an unknown key, naming the closest known one, so a
typo never silently trains with a default; `TrainConfig.validate` checks what types cannot say. Relative paths
are taken from the current directory, like every other command-line path.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..calibration.plan import CalibrationPlan
from ..defaults import BASE_MODEL, DINO_ENCODER, IMAGE_ENCODER
from ..errors import FlexIPError
from ..evaluation.score_config import ScoreConfig
from ..families.names import check_family_name
from ..models.config import MODALITIES, GateConfig, PersonalizationConfig, PreservationConfig
from ..settings.typed_config import from_mapping

# mixed_precision -> the dtype the frozen models are stored in (a name in settings.numbers.DTYPES); the
# adapter trains in float32 whatever it is.
PRECISION_DTYPES = {"no": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _at_least(value: int, least: int, key: str) -> None:
    if value < least:
        raise FlexIPError(f"config {key}: {value} must be at least {least}")


def _share(value: float, key: str) -> None:
    if not 0.0 <= value <= 1.0:  # also NaN
        raise FlexIPError(f"config {key}: {value} must be in [0, 1]")


def _off_or_positive(value: float, key: str) -> None:
    if not 0 <= value < math.inf:  # also NaN
        raise FlexIPError(f"config {key}: {value} must be 0 (off) or positive, and finite")


def _seed(value: int, key: str) -> None:
    # numpy's global seed (which accelerate's set_seed also sets) takes 32 bits.
    if not 0 <= value < 2**32:
        raise FlexIPError(f"config {key}: {value} must be between 0 and 2**32 - 1")


@dataclass
class ModelConfig:
    # Stable Diffusion 1.5, SDXL or FLUX.1 pipeline directory or hub id (unet/ or transformer/, vae/, text
    # encoders, tokenizers, scheduler/); the family is read from its denoiser.
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
    tiny_family: str = "sd15"  # the base family of the tiny model set written there: sd15, sdxl or flux
    dino_layer: int = -2  # which DINOv2 hidden state feeds the Preservation adapter (docs/method.md §2.1)
    preservation: PreservationConfig = field(default_factory=PreservationConfig)
    personalization: PersonalizationConfig = field(default_factory=PersonalizationConfig)
    gate: GateConfig = field(default_factory=GateConfig)

    def check(self) -> None:
        self.preservation.check("config", "model.preservation.")
        self.personalization.check("config", "model.personalization.")
        self.gate.check("config", "model.gate.")
        check_family_name(self.tiny_family, "config model.tiny_family")


@dataclass
class DataConfig:
    manifest: str = ""  # JSONL training manifest (docs/formats.md)
    # Webdataset shards to stream instead (`flexip prep shards`): their folder, or a path, brace pattern
    # ("shards/{000000..000999}.tar"), `::`-joined list or URL that webdataset opens. Replaces `manifest`.
    shards: str = ""
    # A feature cache folder to train from instead (`flexip prep cache`): the frozen encoders' outputs, made
    # once. Replaces `manifest`.
    cache: str = ""
    # Shards and caches stream in lanes, each read by one DataLoader worker of one process (training/stream.py).
    # null: fitted to the shards and to the processes x num_workers launched (up to 8 lanes; fewer workers when
    # the shards are fewer than the readers), and a resume keeps the checkpoint's. A number pins the stream, so
    # that other hardware reads the same one: a multiple of processes x num_workers, at most the shards.
    lanes: int | None = None
    resolution: int = 512  # target images are resized and centre-cropped to this many pixels
    video_fraction: float = 0.5  # share of video (variant) pairs in every batch; 0.5 = the paper's 1:1
    num_workers: int = 4  # DataLoader worker processes that read and augment images (a stream: at most this)
    prefetch_factor: int = 2  # batches each worker loads ahead (with num_workers > 0)
    # Share of image pairs captioned with another image pair's caption, so that only the reference shows the
    # target's scene: it teaches the dial's preservation end to outrank the prompt (docs/demo-model.md, Part 2).
    swap_captions: float = 0.0

    def check(self) -> None:
        """Sizes and shares in range, and exactly one source of pairs (a manifest, shards or a cache)."""
        _at_least(self.resolution, 1, "data.resolution")
        if self.resolution % 8:
            raise FlexIPError(
                f"config data.resolution: {self.resolution} must be a multiple of 8 (the VAE's and the "
                f"pipelines' grid), e.g. {max(8, self.resolution // 8 * 8)}"
            )
        _share(self.video_fraction, "data.video_fraction")
        _share(self.swap_captions, "data.swap_captions")
        _at_least(self.prefetch_factor, 1, "data.prefetch_factor")
        if self.num_workers < 0:
            raise FlexIPError(f"config data.num_workers: {self.num_workers} must be 0 or more")
        if self.lanes is not None and self.lanes < 1:
            raise FlexIPError(
                f"config data.lanes: {self.lanes} must be at least 1, or null to fit the lanes to the shards"
            )
        if self.shards and self.cache:
            raise FlexIPError(
                "config data.shards and data.cache are both set: a cache is made from shards, train from one of "
                "them"
            )
        if not (self.manifest or self.shards or self.cache):
            raise FlexIPError(
                "config data.manifest is empty: name the JSONL training manifest (docs/formats.md), or set "
                "data.shards or data.cache"
            )
        if (self.shards or self.cache) and self.swap_captions:
            raise FlexIPError(
                "config data.swap_captions draws captions from the whole data set, which a stream of shards "
                "cannot: set it to 0, or train from data.manifest"
            )


@dataclass
class DropoutConfig:
    """Classifier-free-guidance condition dropout (docs/method.md §3): disjoint per-sample probabilities."""

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

    def check(self) -> None:
        for modality in MODALITIES:
            rates = (self.text_rate(modality), self.image, self.both)
            if not (min(rates) >= 0 and sum(rates) <= 1):  # also NaN
                raise FlexIPError(
                    f"config dropout: {self} must be non-negative probabilities summing to at most 1 for "
                    f"{modality} pairs"
                )


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

    def check(self) -> None:
        _at_least(self.every, 1, "validation.every")
        _at_least(self.steps, 1, "validation.steps")
        if not math.isfinite(self.guidance_scale):
            raise FlexIPError(f"config validation.guidance_scale: {self.guidance_scale} must be finite")
        _seed(self.seed, "validation.seed")
        if not self.prompts or not self.preservation:
            raise FlexIPError(
                "config validation.prompts and validation.preservation need at least one entry each"
            )
        bad_g = [g for g in self.preservation if not 0.0 <= g <= 1.0]
        if bad_g:
            raise FlexIPError(f"config validation.preservation: {bad_g} outside [0, 1]")


@dataclass
class CalibrationConfig:
    """How `calibrate: true` calibrates the exported adapter at the end of the run (as `flexip calibrate` does)."""

    pairs: int = 32  # at most this many validation pairs (each reference with each prompt), evenly spaced
    seeds: list[int] = field(default_factory=lambda: list(CalibrationPlan().seeds))
    points: int = CalibrationPlan().points  # gate values measured: 5 evenly spaced, the rest where the scores move
    steps: int = CalibrationPlan().steps  # denoising steps per image
    guidance: float = CalibrationPlan().guidance
    clip_model: str = ScoreConfig.clip_model  # CLIP-T's backbone, as `flexip eval score --clip-model`
    dino_model: str = ScoreConfig.dino_model  # DINO-I's backbone, as `flexip eval score --dino-model`

    def plan(self) -> CalibrationPlan:
        return CalibrationPlan(self.seeds, self.points, self.steps, self.guidance, prefix="config calibration.")

    def check(self) -> None:
        _at_least(self.pairs, 1, "calibration.pairs")
        self.plan()


# flow_matching.weighting_scheme -> what it does (diffusers' SD3/FLUX training utilities): the first three draw
# the timesteps (a logit-normal, a "mode" density or uniform) and weigh every sample alike; the last two draw them
# uniformly and weigh the loss by sigma.
WEIGHTING_SCHEMES = ("logit_normal", "mode", "none", "sigma_sqrt", "cosmap")


@dataclass
class FlowMatchingConfig:
    """FLUX.1's flow-matching objective (a FLUX.1 base only): how its noise levels are drawn and weighed, as
    diffusers' FLUX training examples set them, and the guidance its transformer is given."""

    weighting_scheme: str = "logit_normal"  # one of WEIGHTING_SCHEMES
    logit_mean: float = 0.0  # logit_normal: the mean and spread of the noise level's logit
    logit_std: float = 1.0
    mode_scale: float = 1.29  # mode: how far the density leans to the middle noise levels (SD3's 1.29)
    # The value of the transformer's guidance embedding (FLUX.1-dev's; FLUX.1-schnell has none): what the model
    # is trained at, which generation then uses as its guidance scale; 3.5 is FluxPipeline's default.
    guidance: float = 3.5

    def check(self) -> None:
        if self.weighting_scheme not in WEIGHTING_SCHEMES:
            raise FlexIPError(
                f"config flow_matching.weighting_scheme: {self.weighting_scheme!r} is not one of "
                f"{', '.join(WEIGHTING_SCHEMES)}"
            )
        if not math.isfinite(self.logit_mean):
            raise FlexIPError(f"config flow_matching.logit_mean: {self.logit_mean} must be finite")
        if not 0 < self.logit_std < math.inf:
            raise FlexIPError(f"config flow_matching.logit_std: {self.logit_std} must be a finite number above 0")
        # Outside [-1, 2 / (pi - 2)] the "mode" map is not monotone: no longer a density (SD3, section 3.1).
        if not -1 <= self.mode_scale <= 2 / (math.pi - 2):
            raise FlexIPError(f"config flow_matching.mode_scale: {self.mode_scale} must be in [-1, 1.75]")
        if not 0 <= self.guidance < math.inf:
            raise FlexIPError(f"config flow_matching.guidance: {self.guidance} must be 0 or positive, and finite")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    dropout: DropoutConfig = field(default_factory=DropoutConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    # Calibrate the exported adapter when the run ends (`calibration`, on the validation pairs): its dial then
    # moves evenly between identity and prompt (`flexip calibrate`).
    calibrate: bool = False
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    output_dir: str = "runs/flexip"
    seed: int = 0  # data order, augmentation, noise, timesteps, dropout and gate noise all derive from it
    max_steps: int = 100_000  # optimizer steps
    batch_size: int = 8  # per process and micro-step
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    # Linear warm-up from learning_rate / N to learning_rate over N optimizer steps; 0 = off.
    lr_warmup_steps: int = 0
    max_grad_norm: float = 0.0  # clip the adapter's gradient norm to this before each optimizer step; 0 = off
    # adamw | adamw8bit (bitsandbytes' 8-bit AdamW: CUDA only, a quarter of the state)
    optimizer: str = "adamw"
    weight_decay: float = 0.01  # AdamW; never applied to the gate logits (docs/method.md §2.4)
    # Min-SNR-gamma loss weighting (Hang et al. 2023): each sample's MSE times min(SNR, gamma) / SNR; 0 = plain
    # MSE. It shifts weight to the noisy steps where a subject's global look (colour, background) is decided;
    # the demo recipe needs it (docs/demo-model.md, Part 2).
    min_snr_gamma: float = 0.0
    # The objective's settings on a FLUX.1 base (flow matching); min_snr_gamma is the Stable Diffusion families'.
    flow_matching: FlowMatchingConfig = field(default_factory=FlowMatchingConfig)
    # Extra loss weight on the subject: pixels inside an image pair's mask (its target is its reference) weigh
    # 1 + this, the rest 1; video pairs have no target mask. 0 = off. A small subject is a few latent pixels
    # whose error the background drowns out (docs/demo-model.md, Part 2).
    subject_loss_weight: float = 0.0
    mixed_precision: str = "no"  # no | fp16 | bf16: the frozen models' dtype (PRECISION_DTYPES)
    gradient_checkpointing: bool = False  # recompute UNet activations in backward: less memory, ~30% slower
    # Allow TF32 matmuls and convolutions (Ampere and later GPUs): faster, slightly less exact.
    tf32: bool = False
    compile_unet: bool = False  # torch.compile the frozen UNet, adapter attached (the first steps compile)
    checkpoint_every: int = 1000  # optimizer steps between full-state checkpoints
    keep_checkpoints: int = 3  # the newest K checkpoints are kept
    log_every: int = 10  # optimizer steps between metric lines
    log_with: list[str] = field(default_factory=lambda: ["tensorboard"])  # tensorboard and/or wandb

    def validate(self) -> None:
        """Check what the fields' types cannot say: ranges, choices and settings that exclude each other;
        raises FlexIPError naming the key."""
        self._check_run()
        self._check_optimization()
        self.model.check()
        self.data.check()
        self.dropout.check()
        self.validation.check()
        self.calibration.check()
        self.flow_matching.check()

    def _check_run(self) -> None:
        """How long the run is, how often it checkpoints and logs, and where its metrics go."""
        for key in ("max_steps", "batch_size", "gradient_accumulation_steps", "checkpoint_every",
                    "keep_checkpoints", "log_every"):  # fmt: skip
            _at_least(getattr(self, key), 1, key)
        _seed(self.seed, "seed")
        unknown = sorted(set(self.log_with) - {"tensorboard", "wandb"})
        if unknown:
            raise FlexIPError(f"config log_with: {unknown} unknown; choose from tensorboard, wandb")

    def _check_optimization(self) -> None:
        """The optimizer, its schedule and the loss's weights, and the precision the models run in."""
        if not 0 < self.learning_rate < math.inf:
            raise FlexIPError(
                f"config learning_rate: {self.learning_rate} must be a finite number above 0, e.g. 1e-4"
            )
        if self.lr_warmup_steps < 0:
            raise FlexIPError(
                f"config lr_warmup_steps: {self.lr_warmup_steps} must be 0 (off) or a positive integer"
            )
        for key in ("max_grad_norm", "weight_decay", "min_snr_gamma", "subject_loss_weight"):
            _off_or_positive(getattr(self, key), key)
        if self.optimizer not in ("adamw", "adamw8bit"):
            raise FlexIPError(f"config optimizer: {self.optimizer!r} is not one of adamw, adamw8bit")
        if self.mixed_precision not in PRECISION_DTYPES:
            raise FlexIPError(
                f"config mixed_precision: {self.mixed_precision!r} is not one of "
                f"{', '.join(PRECISION_DTYPES)}"
            )


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
    config = from_mapping(TrainConfig, data, str(path))
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
