"""The real models FlexIP is built on (method.md §2), named in this one place."""

# Stable Diffusion v1.5: UNet, VAE, CLIP ViT-L/14 text encoder.
BASE_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# OpenCLIP ViT-H/14 as IP-Adapter ships it (a transformers CLIPVisionModelWithProjection in a subfolder).
IMAGE_ENCODER = "h94/IP-Adapter/models/image_encoder"
# DINOv2-L: the low-level features the Preservation adapter re-samples.
DINO_ENCODER = "facebook/dinov2-large"
