"""The real models FlexIP is built on (method.md §2), named in this one place."""

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
