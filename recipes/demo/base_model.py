"""The demo base model: a small latent text-to-image diffusion model in Stable Diffusion's diffusers format,
plus the small random reference encoders (CLIP vision, DINOv2) that stand in for the paper's frozen encoders.

Layout of a saved model set (what `save_model_set` writes and part 2 loads):

    <dir>/base/           StableDiffusionPipeline.save_pretrained (vae, unet, text_encoder, tokenizer, scheduler)
    <dir>/image_encoder/  CLIPVisionModelWithProjection + CLIPImageProcessor
    <dir>/dinov2/         Dinov2Model + BitImageProcessor
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import (
    BitImageProcessor,
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    Dinov2Config,
    Dinov2Model,
)

from recipes.demo import SHIPPED_DIR
from recipes.demo.text import build_text_encoder, build_tokenizer, write_vocab_files

DEFAULT_MODEL_DIR = SHIPPED_DIR
# CLIP's normalisation; the random encoders do not care, but part 2's preprocessing stays the usual one.
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


@dataclass
class BaseModelConfig:
    image_size: int = 32  # px; the VAE downsamples 4x to 8x8 latents
    # 8, not SD's 4: with 4 channels the 8x8 latents blur small shapes so much that the judge read the class of
    # only 80% of VAE reconstructions; the UNet's cost barely depends on it.
    latent_channels: int = 8
    vae_channels: tuple[int, ...] = (16, 32, 64)  # one entry per VAE block; len - 1 downsamplings
    unet_channels: tuple[int, ...] = (48, 96, 96)  # 3.3M parameters: ~0.3 s per batch of 128 on 2 cores
    unet_layers_per_block: int = 1
    unet_heads: int = 4
    text_hidden_size: int = 64  # also the UNet's cross-attention width
    max_text_length: int = 16  # tokens; the longest caption is 12 words + BOS + EOS
    encoder_hidden_size: int = 64  # the random reference encoders' width
    seed: int = 0

    def __post_init__(self):
        # Coming back from JSON, tuples arrive as lists.
        self.vae_channels = tuple(self.vae_channels)
        self.unet_channels = tuple(self.unet_channels)


def build_vae(config: BaseModelConfig) -> AutoencoderKL:
    blocks = len(config.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=config.vae_channels,
        layers_per_block=1,
        latent_channels=config.latent_channels,
        norm_num_groups=16,
        sample_size=config.image_size,
    )


def build_unet(config: BaseModelConfig) -> UNet2DConditionModel:
    levels = len(config.unet_channels)
    latent_size = config.image_size // 2 ** (len(config.vae_channels) - 1)
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        # Cross-attention everywhere except the coarsest level, where the 2x2 map has little left to place.
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        block_out_channels=config.unet_channels,
        layers_per_block=config.unet_layers_per_block,
        cross_attention_dim=config.text_hidden_size,
        attention_head_dim=config.unet_heads,  # diffusers reads this as the number of heads for SD-style UNets
        norm_num_groups=16,
    )


def build_scheduler() -> DDIMScheduler:
    """DDIM over DDPM's linear schedule (1e-4..0.02): its final signal level sqrt(alpha_bar_T) ~ 0.006 is near
    zero, unlike SD's scaled_linear (~0.07), whose leftover signal at the last step carries the mean colour and
    makes 8x8 latents start sampling with the wrong background. "trailing" spacing starts sampling at t = 999.
    Epsilon prediction, as in Stable Diffusion, so adapter training needs no special case.
    """
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        prediction_type="epsilon",
        timestep_spacing="trailing",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,  # unused by "trailing" spacing; 1 keeps diffusers' SD config check quiet
    )


def build_reference_encoders(config: BaseModelConfig):
    """Random, seeded CLIP-vision and DINOv2 encoders at the demo's image size, and their processors."""
    torch.manual_seed(config.seed)
    width = config.encoder_hidden_size
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=width, intermediate_size=2 * width, projection_dim=width, num_hidden_layers=2,
        num_attention_heads=4, image_size=config.image_size, patch_size=4,
    )).eval()
    clip_processor = CLIPImageProcessor(
        size={"shortest_edge": config.image_size}, crop_size={"height": config.image_size, "width": config.image_size},
        image_mean=CLIP_MEAN, image_std=CLIP_STD,
    )
    dino = Dinov2Model(Dinov2Config(
        hidden_size=width, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, image_size=config.image_size,
        patch_size=4,
    )).eval()
    dino_processor = BitImageProcessor(
        size={"shortest_edge": config.image_size}, crop_size={"height": config.image_size, "width": config.image_size},
        do_convert_rgb=True, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    )
    return clip, clip_processor, dino, dino_processor


@dataclass
class BaseComponents:
    config: BaseModelConfig
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: DDIMScheduler


def build_components(config: BaseModelConfig) -> BaseComponents:
    """Every part of the base model, freshly initialised from `config` (the text encoder is final as built)."""
    torch.manual_seed(config.seed)
    tokenizer = build_tokenizer(max_length=config.max_text_length)
    return BaseComponents(
        config=config,
        vae=build_vae(config),
        unet=build_unet(config),
        text_encoder=build_text_encoder(tokenizer, config.text_hidden_size, config.seed),
        tokenizer=tokenizer,
        scheduler=build_scheduler(),
    )


def to_pipeline(parts: BaseComponents) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet,
        scheduler=parts.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def save_model_set(parts: BaseComponents, directory: str | Path, half: bool = True) -> Path:
    """Write base/, image_encoder/ and dinov2/ under `directory`, fp16 weights when `half`.

    Written into a sibling temporary folder first and swapped in at the end, so an interrupted save never
    leaves a half-written model where a loader would find it.
    """
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        _remove_tree(tmp)
    pipeline = to_pipeline(parts)
    if half:
        pipeline = pipeline.to(torch.float16)
    pipeline.save_pretrained(tmp / "base", safe_serialization=True)
    write_vocab_files(parts.tokenizer, tmp / "base" / "tokenizer")
    clip, clip_processor, dino, dino_processor = build_reference_encoders(parts.config)
    dtype = torch.float16 if half else torch.float32
    clip.to(dtype).save_pretrained(tmp / "image_encoder", safe_serialization=True)
    clip_processor.save_pretrained(tmp / "image_encoder")
    dino.to(dtype).save_pretrained(tmp / "dinov2", safe_serialization=True)
    dino_processor.save_pretrained(tmp / "dinov2")
    (tmp / "base" / "demo_config.json").write_text(json.dumps(asdict(parts.config), indent=2) + "\n")
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("base", "image_encoder", "dinov2"):  # replace only our three folders; leave siblings alone
        if (directory / name).exists():
            _remove_tree(directory / name)
        (tmp / name).replace(directory / name)
    _remove_tree(tmp)
    return directory


def load_pipeline(directory: str | Path = DEFAULT_MODEL_DIR, dtype=torch.float32) -> StableDiffusionPipeline:
    """The saved base model as a StableDiffusionPipeline (float32 by default: CPU inference wants it)."""
    base = Path(directory) / "base"
    if not (base / "model_index.json").is_file():
        raise FileNotFoundError(
            f"no base model at {base}; train one with `python -m recipes.demo.train_base --out {directory}`"
        )
    # Cast after loading: the dtype argument's name differs between diffusers versions.
    return StableDiffusionPipeline.from_pretrained(base, local_files_only=True).to(dtype=dtype)


def _remove_tree(path: Path) -> None:
    for child in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        child.rmdir() if child.is_dir() else child.unlink()
    path.rmdir()
