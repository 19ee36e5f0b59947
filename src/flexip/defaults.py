"""The models FlexIP uses when none is named: the real ones it is built on (docs/method.md §2), and the
embedded demo model the package ships."""

from pathlib import Path

# The embedded default model (a model set: base/, adapter/, encoders), package data.
DEMO_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "demo"

# Stable Diffusion v1.5: UNet, VAE, CLIP ViT-L/14 text encoder.
BASE_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# OpenCLIP ViT-H/14 as IP-Adapter ships it (a transformers CLIPVisionModelWithProjection in a subfolder).
IMAGE_ENCODER = "h94/IP-Adapter/models/image_encoder"
# DINOv2-L: the low-level features the Preservation adapter re-samples.
DINO_ENCODER = "facebook/dinov2-large"
# Qwen2-VL: the vision-language model the paper captions its video frames with (`flexip prep caption`).
CAPTION_MODEL = "Qwen/Qwen2-VL-2B-Instruct"
# SAM ViT-B: subject masks for invariant pairs (`flexip prep images --mask-model`), as SA-1B's are SAM's.
MASK_MODEL = "facebook/sam-vit-base"
