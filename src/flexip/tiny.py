"""The offline tiny-model kit: a complete model set with random weights, in the real on-disk formats.

Every test (and the embedded default until a trained demo model ships) goes through the same
`from_pretrained` code as real weights do; nothing here touches the network.

Layout written under `root` (docs/formats.md):

    base/           a diffusers pipeline directory of the family asked for: Stable Diffusion 1.5's (UNet, VAE,
                    text encoder, tokenizer, scheduler), SDXL's (two text encoders and tokenizers) or FLUX.1's
                    (a FluxTransformer2DModel, CLIP and T5 text encoders and tokenizers, a flow-matching scheduler)
    image_encoder/  transformers CLIPVisionModelWithProjection + CLIPImageProcessor
    dinov2/         transformers Dinov2Model + BitImageProcessor
    adapter/        FlexIP adapter directory, whose config points at ../image_encoder and ../dinov2
    motion_adapter/ (the Stable Diffusion 1.5 and SDXL kits) an AnimateDiff `MotionAdapter` for the UNet's
                    blocks, so `AnimateDiffPipeline` (`AnimateDiffSDXLPipeline`) runs offline
    data/           a tiny training set (`manifest.jsonl`, docs/formats.md): coloured shapes on plain grounds,
                    image pairs with masks and short clips of a shape moving, so `flexip train` has data offline
    benchmark/      a tiny evaluation benchmark (`benchmark.jsonl`, `flexip eval generate --benchmark jsonl`):
                    a few shapes as subjects, each with its reference picture and prompts
    metrics/        the metrics' backbones (`clip/`, `dino/`, `aesthetic.safetensors`), which evaluation builds
                    (`flexip.evaluation.tiny_backbones`) and `flexip tiny-models` writes
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxTransformer2DModel,
    MotionAdapter,
    UNet2DConditionModel,
)
from PIL import Image, ImageDraw
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    BitImageProcessor,
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    Dinov2Config,
    Dinov2Model,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from .atomic import atomic_directory
from .families.registry import FLUX1, SD15, SDXL, Family
from .models.adapter import FlexIPAdapter

IMAGE_SIZE = 32  # pixels; the UNet works on 16x16 latents
WIDTH = 32  # every hidden width in the kit
XL_SECOND_WIDTH = 48  # but the tiny SDXL's second text encoder's, which differs from the first as SDXL's does
# The tiny FLUX.1's T5 width (its transformer's `joint_attention_dim`), other than its CLIP's pooled width
# (WIDTH), as FLUX.1's are (4096 and 768).
FLUX_T5_WIDTH = 48


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

    @property
    def motion_adapter(self) -> Path:
        """An AnimateDiff motion adapter for the SD1.5 or SDXL base (written by `save_tiny_model_set`)."""
        return self.root / "motion_adapter"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def manifest(self) -> Path:
        """The tiny training set's manifest (written by `save_tiny_model_set`)."""
        return self.data / "manifest.jsonl"

    @property
    def benchmark(self) -> Path:
        """The tiny evaluation benchmark, a JSONL file (written by `save_tiny_model_set`)."""
        return self.root / "benchmark" / "benchmark.jsonl"

    @property
    def metrics(self) -> Path:
        """The folder of the metrics' backbones (written by `flexip.evaluation.tiny_backbones`)."""
        return self.root / "metrics"

    @property
    def clip_model(self) -> Path:
        """A CLIP model with text and image towers: `flexip eval score --clip-model` (and the IQA's, the
        aesthetic head's)."""
        return self.metrics / "clip"

    @property
    def dino_model(self) -> Path:
        """A DINO ViT: `flexip eval score --dino-model`."""
        return self.metrics / "dino"

    @property
    def aesthetic_head(self) -> Path:
        """An aesthetic head on `clip_model`'s image embeddings: `flexip eval score --aesthetic-head`."""
        return self.metrics / "aesthetic.safetensors"


def byte_level_tokenizer() -> CLIPTokenizer:
    """A CLIP BPE tokenizer with no merges: every byte is a token, so any prompt tokenizes offline."""
    # GPT-2/CLIP byte-to-unicode table: printable bytes map to themselves, the rest to code points >= 256.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={token: i for i, token in enumerate(tokens)}, merges=[], model_max_length=77)


def tiny_text_config(tokenizer: CLIPTokenizer) -> dict:
    """A CLIP text encoder's config at the kit's size for `tokenizer` (the base's; the metrics' CLIP's)."""
    return {
        "vocab_size": len(tokenizer), "hidden_size": WIDTH, "intermediate_size": 37, "num_hidden_layers": 2,
        "num_attention_heads": 4, "max_position_embeddings": 77, "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
    }  # fmt: skip


# A CLIP vision tower's config at the kit's size (the reference encoder's, and the metrics' CLIP's).
TINY_VISION_CONFIG = {
    "hidden_size": WIDTH, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
    "image_size": IMAGE_SIZE, "patch_size": 8,
}  # fmt: skip


def tiny_clip_image_processor() -> CLIPImageProcessor:
    """CLIP's image processing at the kit's IMAGE_SIZE."""
    return CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )


def t5_tokenizer() -> T5TokenizerFast:
    """A T5 unigram tokenizer whose pieces are single printable characters (with and without the word-start
    mark), built with the `tokenizers` library: any prompt tokenizes offline."""
    characters = [chr(code) for code in range(ord("!"), ord("~") + 1)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(c, -3.0) for c in characters] + [("▁" + c, -2.5) for c in characters]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"], special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=tokenizer, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0,
        model_max_length=512,
    )  # fmt: skip


def tiny_flux_transformer(guidance_embeds: bool = True) -> FluxTransformer2DModel:
    """FLUX.1's transformer at a tiny width: two double-stream blocks and one single-stream block, 2 heads of 16,
    rotary axes (4, 4, 8) as diffusers' own tests build it; with a guidance embedding as FLUX.1-dev's, without
    as FLUX.1-schnell's."""
    return FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=FLUX_T5_WIDTH, pooled_projection_dim=WIDTH,
        guidance_embeds=guidance_embeds, axes_dims_rope=(4, 4, 8),
    )  # fmt: skip


def build_tiny_flux_base(seed: int = 0):
    """A FluxPipeline of FLUX.1-dev's structure at a tiny width: CLIP's pooled text and T5's tokens (FLUX_T5_WIDTH
    wide), a VAE of 4 latent channels (16 once packed 2x2) with FLUX's scaling and shift, FLUX.1-dev's
    flow-matching schedule with its resolution-dependent shift."""
    torch.manual_seed(seed)
    transformer = tiny_flux_transformer()
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), latent_channels=4, norm_num_groups=32,
        sample_size=IMAGE_SIZE, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
        use_post_quant_conv=False,
    )  # fmt: skip
    tokenizer, tokenizer_2 = byte_level_tokenizer(), t5_tokenizer()
    t5 = T5Config(
        vocab_size=len(tokenizer_2), d_model=FLUX_T5_WIDTH, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    )  # fmt: skip
    text = {
        "tokenizer": tokenizer, "text_encoder": CLIPTextModel(CLIPTextConfig(**tiny_text_config(tokenizer))),
        "tokenizer_2": tokenizer_2, "text_encoder_2": T5EncoderModel(t5),
    }  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FLUX1.assemble(vae, transformer, scheduler, text)


def build_tiny_base(seed: int = 0, family: Family = SD15):
    """A pipeline of `family`'s shape small enough to run a denoising step in milliseconds on a CPU.

    The SDXL one has SDXL's structure at a tiny width: two text encoders of different widths (WIDTH and
    XL_SECOND_WIDTH, as SDXL's are 768 and 1280 wide) whose hidden states are concatenated, the second one's
    pooled projection and the six size numbers in `added_cond_kwargs`, and blocks of different head counts and
    transformer depths. The FLUX.1 one is `build_tiny_flux_base`'s.
    """
    if family is FLUX1:
        return build_tiny_flux_base(seed)
    torch.manual_seed(seed)
    xl = family is SDXL
    shape = {
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": WIDTH,
        "attention_head_dim": 8,
    }
    if xl:
        shape = {
            "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            "cross_attention_dim": WIDTH + XL_SECOND_WIDTH,
            "attention_head_dim": (2, 4),
            "transformer_layers_per_block": (1, 2),
            "use_linear_projection": True,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 6 * 8 + XL_SECOND_WIDTH,
        }
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        norm_num_groups=32, **shape,
    )  # fmt: skip
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
    tokenizer = byte_level_tokenizer()
    text_config = tiny_text_config(tokenizer)
    text = {"tokenizer": tokenizer, "text_encoder": CLIPTextModel(CLIPTextConfig(**text_config))}
    if xl:
        wider = {**text_config, "hidden_size": XL_SECOND_WIDTH, "projection_dim": XL_SECOND_WIDTH}
        second = CLIPTextModelWithProjection(CLIPTextConfig(**wider))
        text.update(tokenizer_2=byte_level_tokenizer(), text_encoder_2=second)
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1,
    )
    return family.assemble(vae, unet, scheduler, text)


def build_tiny_motion_adapter(seed: int = 0, family: Family = SD15) -> MotionAdapter:
    """AnimateDiff's motion modules for the tiny UNet's blocks (its widths, one layer per block; no motion module
    in SDXL's mid block, as AnimateDiff's SDXL adapter has none), random: their temporal attention mixes the
    frames from the first step, as trained ones do."""
    torch.manual_seed(seed)
    return MotionAdapter(
        block_out_channels=(32, 64), motion_layers_per_block=1, motion_norm_num_groups=32,
        motion_num_attention_heads=2, motion_max_seq_length=32, use_motion_mid_block=family is SD15,
    )  # fmt: skip


def build_tiny_image_encoders(seed: int = 0) -> tuple:
    """(CLIP vision model, its processor, DINOv2 model, its processor), all at 32 px."""
    torch.manual_seed(seed)
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_VISION_CONFIG, projection_dim=WIDTH))
    dino = Dinov2Model(
        Dinov2Config(
            hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2,
            image_size=IMAGE_SIZE, patch_size=8,
        )
    )
    # DINOv2 uses ImageNet statistics, unlike CLIP.
    dino_processor = BitImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    )  # fmt: skip
    return clip, tiny_clip_image_processor(), dino, dino_processor


# The tiny training set: flat shapes on flat grounds, drawn at IMAGE_SIZE. Not the demo world (recipes/demo):
# it only has to give the trainer both kinds of pairs, masks and captions to read.
DATA_IMAGE_PAIRS = 4
DATA_CLIPS = 2
DATA_FRAMES = 3  # per clip: frame 0 is the reference, the later frames are targets
_SHAPES = ("circle", "square", "triangle")
_COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40)}
_GROUNDS = {"white": (245, 245, 245), "gray": (128, 128, 128), "black": (15, 15, 15)}


def _draw_shape(shape: str, color: tuple, ground: tuple, cx: float, cy: float, radius: float):
    """(RGB image, L mask with white = the shape), IMAGE_SIZE px square."""
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    mask = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse(box, fill=255)
    elif shape == "square":
        draw.rectangle(box, fill=255)
    else:
        draw.polygon([(cx, cy - radius), (cx + radius, cy + radius), (cx - radius, cy + radius)], fill=255)
    image = Image.new("RGB", mask.size, ground)
    image.paste(color, mask=mask)
    return image, mask


def save_tiny_data_set(root: str | os.PathLike, seed: int = 0) -> Path:
    """Write the tiny training set under `root` (PNGs and `manifest.jsonl`); returns the manifest's path.

    DATA_IMAGE_PAIRS image pairs (reference = target, with the shape's mask) and DATA_CLIPS clips of
    DATA_FRAMES frames in which one shape slides from left to right (video pairs: frame 0 -> each later frame).
    Every draw comes from `seed`, so the same seed writes the same files.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colors, grounds = list(_COLORS), list(_GROUNDS)

    def pick():
        shape, color = _SHAPES[rng.integers(len(_SHAPES))], colors[rng.integers(len(colors))]
        ground = grounds[rng.integers(len(grounds))]
        return shape, color, ground, f"a {color} {shape} on a {ground} background"

    def save(image, name: str) -> str:
        image.save(root / name)
        return name

    records = []
    for index in range(DATA_IMAGE_PAIRS):
        shape, color, ground, text = pick()
        cx, cy = rng.uniform(10, IMAGE_SIZE - 10, 2)
        image, mask = _draw_shape(shape, _COLORS[color], _GROUNDS[ground], cx, cy, rng.uniform(5, 9))
        path = save(image, f"image{index}.png")
        records.append({"reference": path, "target": path, "caption": text, "modality": "image",
                        "source": f"image{index}", "mask": save(mask, f"image{index}_mask.png")})  # fmt: skip
    for index in range(DATA_CLIPS):
        shape, color, ground, text = pick()
        cy, radius = rng.uniform(10, IMAGE_SIZE - 10), rng.uniform(5, 7)
        clip, frames = f"clip{index}", []
        for frame, cx in enumerate(np.linspace(8, IMAGE_SIZE - 8, DATA_FRAMES)):
            image, mask = _draw_shape(shape, _COLORS[color], _GROUNDS[ground], cx, cy, radius)
            frames.append(save(image, f"{clip}_f{frame}.png"))
            if frame == 0:
                reference_mask = save(mask, f"{clip}_f0_mask.png")
        for target in frames[1:]:
            records.append({"reference": frames[0], "target": target, "caption": text, "modality": "video",
                            "source": clip, "mask": reference_mask})  # fmt: skip
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(record) + "\n" for record in records))
    return manifest


# The tiny evaluation benchmark: each subject is a shape drawn once as its reference, restaged by prompts.
BENCHMARK_SUBJECTS = {"red_circle": ("circle", "red", "white"), "blue_square": ("square", "blue", "gray")}
BENCHMARK_PROMPTS = ("a {color} {shape} on a black background", "a small {color} {shape} in a corner")


def save_tiny_benchmark(root: str | os.PathLike) -> Path:
    """Write the tiny evaluation benchmark under `root`: each subject's reference picture, and
    `benchmark.jsonl` with a line per subject and prompt (`flexip eval generate --benchmark jsonl`);
    returns the JSONL file's path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for subject, (shape, color, ground) in BENCHMARK_SUBJECTS.items():
        centre = IMAGE_SIZE / 2
        image, _ = _draw_shape(shape, _COLORS[color], _GROUNDS[ground], centre, centre, radius=9)
        image.save(root / f"{subject}.png")
        for prompt in BENCHMARK_PROMPTS:
            lines.append({"subject": subject, "category": "shape", "reference": f"{subject}.png",
                          "prompt": prompt.format(color=color, shape=shape)})  # fmt: skip
    benchmark = root / "benchmark.jsonl"
    benchmark.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return benchmark


def save_tiny_model_set(
    root: str | os.PathLike, seed: int = 0, overwrite: bool = False, family: Family = SD15
) -> ModelSet:
    """Build the tiny model set (its base of `family`) with random weights and save it under `root`: every
    part but metrics/, which `flexip.evaluation.tiny_backbones` writes; with a UNet base (SD1.5, SDXL), a
    motion adapter too, drawn and written last so the other parts are the same with or without it.

    Each part (base/, image_encoder/, dinov2/, adapter/, data/, benchmark/) is written atomically, so a part
    that exists is complete: it is kept as it is (a trained adapter put there survives) unless `overwrite`
    replaces it.
    """
    models = ModelSet(Path(root))
    base = build_tiny_base(seed, family)
    clip, clip_processor, dino, dino_processor = build_tiny_image_encoders(seed + 1)
    torch.manual_seed(seed + 2)
    adapter = FlexIPAdapter.for_unet(
        getattr(base, family.denoiser.pipeline_attribute),
        clip_embed_dim=clip.config.projection_dim,
        dino_hidden_dim=dino.config.hidden_size,
        base_model="../base",
        image_encoder="../image_encoder",
        dino_encoder="../dinov2",
        preservation={"num_queries": 4, "num_clip_tokens": 2, "width": WIDTH, "depth": 1, "heads": 2, "head_dim": 16},
        personalization={"num_clip_tokens": 2, "depth": 1, "heads": 2, "head_dim": 16},
    )
    # A fresh adapter adds nothing (its branch values start at zero). The kit stands in for a trained adapter,
    # so its branch values are seeded random: the dial moves the kit's outputs, which tests rely on.
    with torch.no_grad():
        for layer in adapter.layers.values():
            for to_v in (layer.to_v_preservation, layer.to_v_personalization):
                to_v.weight.normal_(std=to_v.in_features**-0.5)
    writers = {  # data first: a written base/ (what training checks for) implies the data
        models.data: lambda tmp: save_tiny_data_set(tmp, seed),
        models.benchmark.parent: save_tiny_benchmark,
        models.base: base.save_pretrained,
        models.image_encoder: lambda tmp: (clip.save_pretrained(tmp), clip_processor.save_pretrained(tmp)),
        models.dinov2: lambda tmp: (dino.save_pretrained(tmp), dino_processor.save_pretrained(tmp)),
        models.adapter: adapter.save_pretrained,
    }
    if family in (SD15, SDXL):
        writers[models.motion_adapter] = lambda tmp: build_tiny_motion_adapter(seed + 3, family).save_pretrained(tmp)
    for part, write in writers.items():
        if overwrite or not part.exists():
            with atomic_directory(part) as tmp:
                write(tmp)
    return models


def existing_parts(root: str | os.PathLike) -> list[str]:
    """The parts of a model set already under `root`, which `save_tiny_model_set` keeps unless told otherwise."""
    models = ModelSet(Path(root))
    parts = (models.data, models.benchmark.parent, models.base, models.image_encoder, models.dinov2,
             models.adapter, models.motion_adapter, models.metrics)  # fmt: skip
    return [f"{part.name}/" for part in parts if part.exists()]
