"""The offline tiny-model kit: a complete model set with random weights, in the real on-disk formats.

Every test (and the embedded default until a trained demo model ships) goes through the same
`from_pretrained` code as real weights do; nothing here touches the network.

Layout written under `root` (docs/formats.md):

    base/           a diffusers StableDiffusionPipeline directory (UNet, VAE, text encoder, tokenizer, scheduler)
    image_encoder/  transformers CLIPVisionModelWithProjection + CLIPImageProcessor
    dinov2/         transformers Dinov2Model + BitImageProcessor
    adapter/        FlexIP adapter directory, whose config points at ../image_encoder and ../dinov2
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import (
    BitImageProcessor,
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    Dinov2Config,
    Dinov2Model,
)

from .models.adapter import FlexIPAdapter

IMAGE_SIZE = 32  # pixels; the UNet works on 16x16 latents
WIDTH = 32  # every hidden width in the kit


@dataclass(frozen=True)
class ModelSet:
    """Directories of one complete model set."""

    root: Path

    @property
    def base(self) -> Path:
        return self.root / "base"

    @property
    def image_encoder(self) -> Path:
        return self.root / "image_encoder"

    @property
    def dinov2(self) -> Path:
        return self.root / "dinov2"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"


def _byte_level_tokenizer() -> CLIPTokenizer:
    """A CLIP BPE tokenizer with no merges: every byte is a token, so any prompt tokenizes offline."""
    # GPT-2/CLIP byte-to-unicode table: printable bytes map to themselves, the rest to code points >= 256.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={token: i for i, token in enumerate(tokens)}, merges=[], model_max_length=77)


def build_tiny_base(seed: int = 0) -> StableDiffusionPipeline:
    """A Stable-Diffusion-shaped pipeline small enough to run a denoising step in milliseconds on a CPU."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=WIDTH,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=32,
        sample_size=IMAGE_SIZE,
    )
    tokenizer = _byte_level_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=WIDTH,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )  # fmt: skip


def build_tiny_image_encoders(seed: int = 0) -> tuple:
    """(CLIP vision model, its processor, DINOv2 model, its processor), all at 32 px."""
    torch.manual_seed(seed)
    clip = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=WIDTH, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            image_size=IMAGE_SIZE, patch_size=8, projection_dim=WIDTH,
        )
    )
    dino = Dinov2Model(
        Dinov2Config(
            hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2,
            image_size=IMAGE_SIZE, patch_size=8,
        )
    )
    size = {"shortest_edge": IMAGE_SIZE}
    crop = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    clip_processor = CLIPImageProcessor(size=size, crop_size=crop)
    # DINOv2 uses ImageNet statistics, unlike CLIP.
    dino_processor = BitImageProcessor(
        size=size, crop_size=crop, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]
    )
    return clip, clip_processor, dino, dino_processor


def save_tiny_model_set(root: str | os.PathLike, seed: int = 0) -> ModelSet:
    """Build the whole tiny model set with random weights and save it under `root`; returns its paths."""
    models = ModelSet(Path(root))
    base = build_tiny_base(seed)
    base.save_pretrained(models.base)
    clip, clip_processor, dino, dino_processor = build_tiny_image_encoders(seed + 1)
    clip.save_pretrained(models.image_encoder)
    clip_processor.save_pretrained(models.image_encoder)
    dino.save_pretrained(models.dinov2)
    dino_processor.save_pretrained(models.dinov2)

    torch.manual_seed(seed + 2)
    adapter = FlexIPAdapter.for_unet(
        base.unet,
        clip_embed_dim=clip.config.projection_dim,
        dino_hidden_dim=dino.config.hidden_size,
        base_model="../base",
        image_encoder="../image_encoder",
        dino_encoder="../dinov2",
        preservation={"num_queries": 4, "num_clip_tokens": 2, "width": WIDTH, "depth": 1, "heads": 2, "head_dim": 16},
        personalization={"num_clip_tokens": 2, "depth": 1, "heads": 2, "head_dim": 16},
    )
    adapter.save_pretrained(models.adapter)
    return models


def save_tiny_ip_adapter(directory: str | os.PathLike, seed: int = 0) -> Path:
    """A tiny IP-Adapter for the tiny base, laid out like `h94/IP-Adapter` so that diffusers' own
    `pipe.load_ip_adapter(directory, subfolder="models", weight_name="ip-adapter_sd15.safetensors")` loads it
    offline: `models/ip-adapter_sd15.safetensors` (`image_proj.*`, `ip_adapter.*`) and `models/image_encoder/`."""
    from safetensors.torch import save_file

    models = Path(directory) / "models"
    unet = build_tiny_base(seed).unet
    clip, clip_processor, _, _ = build_tiny_image_encoders(seed + 1)
    clip.save_pretrained(models / "image_encoder")
    clip_processor.save_pretrained(models / "image_encoder")

    torch.manual_seed(seed + 3)
    tokens = 4  # the plain IP-Adapter projects the image embedding to 4 tokens
    tensors = {
        "image_proj.proj.weight": torch.randn(tokens * WIDTH, clip.config.projection_dim) * 0.1,
        "image_proj.proj.bias": torch.zeros(tokens * WIDTH),
        "image_proj.norm.weight": torch.ones(WIDTH),
        "image_proj.norm.bias": torch.zeros(WIDTH),
    }
    # diffusers numbers the attention processors in order and gives the cross-attention ones the odd ids.
    cross_attention = [name for name in unet.attn_processors if name.endswith("attn2.processor")]
    for index, name in enumerate(cross_attention):
        attention = unet.get_submodule(name.removesuffix(".processor"))
        # IP-Adapter initialises its image K/V from the layer's own text K/V.
        tensors[f"ip_adapter.{2 * index + 1}.to_k_ip.weight"] = attention.to_k.weight.detach().clone()
        tensors[f"ip_adapter.{2 * index + 1}.to_v_ip.weight"] = attention.to_v.weight.detach().clone()
    save_file(tensors, models / "ip-adapter_sd15.safetensors")
    return Path(directory)


def save_tiny_eval_models(root: str | os.PathLike, seed: int = 0) -> Path:
    """Tiny metric backbones for evaluation tests: `clip/` (transformers CLIPModel + CLIPProcessor), `dino/`
    (a DINO-style ViTModel without pooler) and `aesthetic.safetensors` (an aesthetic head on the tiny CLIP)."""
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, ViTConfig, ViTModel

    from .evaluation.aesthetic import AestheticHead

    root = Path(root)
    torch.manual_seed(seed)
    tokenizer = _byte_level_tokenizer()
    text_config = {
        "vocab_size": len(tokenizer), "hidden_size": WIDTH, "intermediate_size": 37, "num_hidden_layers": 2,
        "num_attention_heads": 4, "max_position_embeddings": 77, "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
    }  # fmt: skip
    vision_config = {"hidden_size": WIDTH, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "image_size": IMAGE_SIZE, "patch_size": 8}  # fmt: skip
    clip = CLIPModel(CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=WIDTH))
    size = {"shortest_edge": IMAGE_SIZE}
    crop = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    clip.save_pretrained(root / "clip")
    CLIPProcessor(image_processor=CLIPImageProcessor(size=size, crop_size=crop), tokenizer=tokenizer).save_pretrained(
        root / "clip"
    )
    dino = ViTModel(ViTConfig(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                              image_size=IMAGE_SIZE, patch_size=8), add_pooling_layer=False)  # fmt: skip
    dino.save_pretrained(root / "dino")
    save_file(AestheticHead(embed_dim=WIDTH).state_dict(), root / "aesthetic.safetensors")
    return root
