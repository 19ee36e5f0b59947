"""`load_flexip` on stock diffusers pipelines: the dial works, unloading restores them, calls stay separate."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline

import flexip
from fixtures import stock_pipeline
from flexip import FlexIPError

STEPS = 2


def call(pipe, kind: str, images, seed: int = 0, **flexip_kwargs):
    inputs = {
        "txt2img": {},
        "img2img": {"image": images["init"], "strength": 1.0},
        "inpaint": {"image": images["init"], "mask_image": images["mask"], "strength": 1.0},
        "controlnet": {"image": images["control"]},
    }[kind]
    return pipe(
        "a photo of a dog", num_inference_steps=STEPS, generator=torch.Generator().manual_seed(seed),
        output_type="np", **inputs, **flexip_kwargs,
    ).images  # fmt: skip


@pytest.mark.parametrize("kind", ["txt2img", "img2img", "inpaint", "controlnet"])
def test_load_flexip_gives_the_dial_and_unload_restores(tiny_models, adapter, images, kind):
    pipe = stock_pipeline(kind, tiny_models.base)
    stock_class, processors = type(pipe), dict(pipe.unet.attn_processors)
    before = call(pipe, kind, images)

    assert flexip.load_flexip(pipe, adapter) is pipe
    reference = images["references"][0]
    keep, edit = (call(pipe, kind, images, reference=reference, preservation=g) for g in (1.0, 0.0))
    assert np.abs(keep - edit).max() > 1e-3, "the dial must change the image"
    assert np.abs(keep - before).max() > 1e-3
    np.testing.assert_allclose(
        call(pipe, kind, images, reference=reference, preservation=1.0, scale=0.0), before, atol=1e-5
    )
    np.testing.assert_array_equal(call(pipe, kind, images), before)  # no reference: the stock call

    flexip.unload_flexip(pipe)
    assert type(pipe) is stock_class and dict(pipe.unet.attn_processors) == processors
    np.testing.assert_array_equal(call(pipe, kind, images), before)


@pytest.mark.parametrize("sharing", ["one-pipeline-ddim", "copies-euler"])
def test_interleaved_calls_in_threads_keep_their_own_reference(tiny_models, adapter, images, sharing):
    """Two threads share the UNet: either one pipeline object (a stateless scheduler), or one shallow copy per
    thread with its own scheduler (what every FlexIP call does for itself: docs/decisions/pipeline.md)."""
    pipe = stock_pipeline("img2img", tiny_models.base)
    if sharing == "copies-euler":
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    flexip.load_flexip(pipe, adapter)
    settings = [(images["references"][0], 1.0, 0), (images["references"][1], 0.6, 1)]
    alone = [call(pipe, "img2img", images, seed, reference=ref, preservation=g) for ref, g, seed in settings]

    # Both threads finish every denoising step before either starts the next one, so their UNet calls alternate.
    barrier = threading.Barrier(2, timeout=60)

    def step_together(pipeline, step, timestep, tensors):
        barrier.wait()
        return tensors

    results = [None, None]

    def worker(index):
        reference, g, seed = settings[index]
        own = pipe
        if sharing == "copies-euler":
            own = copy.copy(pipe)
            own.scheduler = copy.deepcopy(pipe.scheduler)
        results[index] = call(own, "img2img", images, seed, reference=reference, preservation=g,
                              callback_on_step_end=step_together)  # fmt: skip

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Concurrent threads may split torch's parallel reductions differently (rounding-level differences); a
    # leak of one call's reference or dial into the other changes pixels by far more than the tolerance.
    for result, expected in zip(results, alone):
        np.testing.assert_allclose(result, expected, atol=1e-4)
    assert np.abs(alone[0] - alone[1]).max() > 1e-2


def test_mistakes_are_reported(tiny_models, adapter, images):
    pipe = stock_pipeline("txt2img", tiny_models.base)
    with pytest.raises(FlexIPError, match="not loaded"):
        flexip.unload_flexip(pipe)
    flexip.load_flexip(pipe, adapter)
    with pytest.raises(FlexIPError, match="already loaded"):
        flexip.load_flexip(pipe, adapter)
    with pytest.raises(FlexIPError, match="without a reference"):
        call(pipe, "txt2img", images, preservation=0.5)
    with pytest.raises(FlexIPError, match="outside"):
        call(pipe, "txt2img", images, reference=images["references"][0], preservation=1.2)
    other = StableDiffusionImg2ImgPipeline(**pipe.components)
    with pytest.raises(FlexIPError, match="already has a FlexIP adapter"):
        flexip.load_flexip(other, adapter)


@pytest.mark.parametrize("kind", ["txt2img", "img2img", "inpaint", "controlnet"])
def test_a_preservation_list_is_one_batch_equal_to_the_values_one_by_one(tiny_models, adapter, images, kind):
    """The same meaning as FlexIPPipeline's list: one batch from one starting noise, in the order given."""
    pipe = flexip.load_flexip(stock_pipeline(kind, tiny_models.base), adapter)
    reference, values = images["references"][0], [0.0, 0.4, 1.0]
    batches = []
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        swept = call(pipe, kind, images, reference=reference, preservation=values)
    finally:
        hook.remove()
    assert swept.shape[0] == len(values) and set(batches) == {2 * len(values)}  # guidance doubles one batch
    for index, value in enumerate(values):
        np.testing.assert_allclose(swept[index], call(pipe, kind, images, reference=reference, preservation=value)[0],
                                   atol=1e-4)  # fmt: skip
    assert np.abs(swept[0] - swept[-1]).max() > 1e-3


def test_flexip_pipeline_and_a_stock_pipeline_given_flexip_are_one_call(tiny_models, adapter, images):
    """Same arguments, same images: FlexIPPipeline is the stock text-to-image pipeline with FlexIP loaded."""
    own = flexip.FlexIPPipeline.from_pretrained(base=tiny_models.base, adapter=adapter)
    own.set_progress_bar_config(disable=True)
    stock = flexip.load_flexip(stock_pipeline("txt2img", tiny_models.base), adapter)
    for kwargs in ({"preservation": 0.7}, {"preservation": [0.0, 1.0], "num_images_per_prompt": 2}):
        np.testing.assert_array_equal(
            call(own, "txt2img", images, reference=images["references"][1], **kwargs),
            call(stock, "txt2img", images, reference=images["references"][1], **kwargs),
        )
