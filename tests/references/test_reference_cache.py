"""The reference-feature cache: a repeated reference image is encoded once, by its pixels, within a bound."""

from __future__ import annotations

import numpy as np
import torch

from fixtures import picture
from flexip import FlexIPPipeline
from flexip.references.cache import ReferenceCache


def count_encoder_runs(encoder) -> list[str]:
    """A list that gets one entry per forward pass of either image encoder."""
    runs = []
    encoder.clip_model.register_forward_hook(lambda *_: runs.append("clip"))
    encoder.dino_model.register_forward_hook(lambda *_: runs.append("dino"))
    return runs


def test_the_pipeline_encodes_a_repeated_reference_once(pipe, tmp_path):
    runs = count_encoder_runs(pipe.flexip.reference_encoder)
    path = tmp_path / "dog.png"
    picture(0).save(path)
    images = [
        pipe("a dog", reference=reference, preservation=value, num_inference_steps=1, output_type="np").images
        for reference, value in [(picture(0), 0.2), (path, 0.9), (picture(0), 0.5)]
    ]
    assert runs == ["clip", "dino"]  # a PIL image and a file of the same pixels share one entry
    assert np.abs(images[0] - images[1]).max() > 1e-3  # the dial still acts
    pipe("a dog", reference=picture(1), num_inference_steps=1, output_type="np")
    assert runs == ["clip", "dino"] * 2  # other pixels are encoded


def test_cached_features_equal_fresh_ones_and_the_cache_is_bounded(pipe):
    encoder = pipe.flexip.reference_encoder
    cache = ReferenceCache(encoder, capacity=2)
    first = cache.encode(picture(10))
    assert cache.encode(picture(10)) is first
    fresh = encoder([picture(10)])
    torch.testing.assert_close(first.dino_tokens, fresh.dino_tokens)
    cache.encode(picture(11))
    cache.encode(picture(12))  # evicts the least recently used: picture 10
    assert cache.get(picture(10)) is None
    assert cache.get(picture(11)) is not None and cache.get(picture(12)) is not None


def test_features_are_not_reused_across_dtypes(tiny_models):
    pipe = FlexIPPipeline.from_pretrained(base=tiny_models.base, adapter=tiny_models.adapter)
    cache = pipe.flexip.reference_cache
    assert pipe.flexip.encode_reference(picture(20)).clip_embeds.dtype == torch.float32
    pipe.to(dtype=torch.bfloat16)
    pipe.flexip.encode_reference(picture(20))  # the injection follows the UNet's dtype first
    assert cache.get(picture(20)).clip_embeds.dtype == torch.bfloat16
