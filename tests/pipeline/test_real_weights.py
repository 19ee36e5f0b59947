"""The real default models (flexip.defaults) through FlexIPPipeline; opt in with --run-slow.

Needs SD1.5, IP-Adapter's OpenCLIP ViT-H/14 and DINOv2-L in the local Hugging Face cache. No trained adapter
is needed: a fresh one (branch K/V copied from the UNet) checks loading, sizes and the s = 0 invariant.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from huggingface_hub import try_to_load_from_cache
from PIL import Image

from flexip import FlexIPAdapter, FlexIPPipeline, ReferenceEncoder
from flexip.defaults import BASE_MODEL, DINO_ENCODER, IMAGE_ENCODER
from flexip.model_paths import split_model_reference

pytestmark = pytest.mark.slow


def _cached(reference: str, filename: str) -> bool:
    repo, subfolder = split_model_reference(reference)
    path = f"{subfolder}/{filename}" if subfolder else filename
    return isinstance(try_to_load_from_cache(repo, path), str)


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    missing = [
        name
        for name, present in [
            (BASE_MODEL, _cached(BASE_MODEL, "model_index.json")),
            (IMAGE_ENCODER, _cached(IMAGE_ENCODER, "config.json")),
            (DINO_ENCODER, _cached(DINO_ENCODER, "config.json")),
        ]
        if not present
    ]
    if missing:
        pytest.skip(f"not in the local Hugging Face cache: {', '.join(missing)}")
    encoder = ReferenceEncoder.from_pretrained(IMAGE_ENCODER, DINO_ENCODER)
    assert (encoder.clip_embed_dim, encoder.dino_hidden_dim) == (1024, 1024)
    base = StableDiffusionPipeline.from_pretrained(BASE_MODEL)
    torch.manual_seed(0)
    adapter = FlexIPAdapter.for_unet(
        base.unet, 1024, 1024, base_model=BASE_MODEL, image_encoder=IMAGE_ENCODER, dino_encoder=DINO_ENCODER
    )
    assert adapter.config.cross_attention_dim == 768 and len(adapter.config.layers) == 16
    directory = tmp_path_factory.mktemp("sd15-adapter")
    adapter.save_pretrained(directory)
    return directory


def test_default_models_generate_and_scale_zero_is_sd15(adapter_dir):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    pipe = FlexIPPipeline.from_pretrained(adapter=adapter_dir, torch_dtype=dtype).to(
        device
    )  # base: as recorded
    plain = StableDiffusionPipeline.from_pretrained(BASE_MODEL, torch_dtype=dtype).to(device)
    reference = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    settings = {"num_inference_steps": 2, "height": 256, "width": 256, "output_type": "np"}

    def seeded():
        return torch.Generator().manual_seed(0)

    expected = plain("a dog on the beach", generator=seeded(), **settings).images
    got = pipe(
        "a dog on the beach", reference=reference, preservation=0.7, scale=0.0, generator=seeded(), **settings
    ).images
    np.testing.assert_allclose(got, expected, atol=1e-4 if dtype == torch.float32 else 1e-2)
    swept = pipe(
        "a dog on the beach", reference=reference, preservation=[0.0, 1.0], generator=seeded(), **settings
    ).images
    assert swept.shape == (2, 256, 256, 3) and np.isfinite(swept).all()
