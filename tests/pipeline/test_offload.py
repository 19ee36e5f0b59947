"""The adapter and encoders follow the UNet at every call: its dtype, and the device it runs on under CPU
offload (docs/decisions/pipeline.md, "The adapter and encoders follow the UNet"). Here the execution device
is the CPU; offload onto a GPU is not checked here (docs/performance.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from accelerate import cpu_offload

from fixtures import flexip_pipe


def generate(pipe, reference):
    return pipe(
        "a dog", reference=reference, preservation=[0.2, 0.9], num_inference_steps=2,
        generator=torch.Generator().manual_seed(0), output_type="np",
    ).images  # fmt: skip


def placements(pipe) -> set:
    modules = (
        pipe.flexip.adapter,
        pipe.flexip.reference_encoder.clip_model,
        pipe.flexip.reference_encoder.dino_model,
    )
    return {(p.device, p.dtype) for module in modules for p in module.parameters()}


@pytest.mark.parametrize("offload", ["sequential", "model"])
def test_cpu_offload_generates_the_same_images(tiny_models, adapter, reference, offload):
    """Sequential offload keeps the UNet's weights on the meta device between layers: following its weights
    would move the adapter there. On this CPU-only machine the execution device is the CPU."""
    expected = generate(flexip_pipe(tiny_models.base, adapter), reference)
    pipe = flexip_pipe(tiny_models.base, adapter)
    if offload == "sequential":
        cpu_offload(pipe.unet, execution_device=torch.device("cpu"))  # the text encoder's offload needs a GPU
        assert next(pipe.unet.parameters()).device.type == "meta"
    else:
        pipe.enable_model_cpu_offload(device="cpu")
    np.testing.assert_allclose(generate(pipe, reference), expected, atol=1e-5)
    assert placements(pipe) == {(torch.device("cpu"), torch.float32)}


def test_the_adapter_and_encoders_follow_the_unet_dtype_at_every_call(
    tiny_models, load_test_adapter, reference
):
    pipe = flexip_pipe(tiny_models.base, load_test_adapter())  # its own: casts round the weights
    kv_dtypes = []
    layer = next(iter(pipe.flexip.adapter.layers.values())).to_k_preservation
    layer.register_forward_hook(lambda module, args, output: kv_dtypes.append(output.dtype))
    for dtype in (torch.float32, torch.bfloat16, torch.float32):
        pipe.to(dtype=dtype)
        images = generate(pipe, reference)
        assert np.isfinite(images).all()
        assert placements(pipe) == {(torch.device("cpu"), dtype)}
        assert kv_dtypes[-1] == dtype  # the branch keys/values, made in the UNet's dtype
