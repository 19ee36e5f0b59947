"""Concurrent calls on ONE pipeline object, with different steps, guidance and references, on a stateful
multistep scheduler (DPM++) too: each thread gets exactly the image it gets alone (docs/decisions/pipeline.md,
"Concurrent calls on one pipeline object")."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, StableDiffusionPipeline

import flexip
from flexip import FlexIPPipeline


def flexip_pipeline(tiny_models, adapter, scheduler):
    pipe = FlexIPPipeline.from_pretrained(base=tiny_models.base, adapter=adapter)
    pipe.scheduler = scheduler.from_config(pipe.scheduler.config)
    return pipe


def stock_pipeline(tiny_models, adapter, scheduler):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_models.base)
    pipe.scheduler = scheduler.from_config(pipe.scheduler.config)
    return flexip.load_flexip(pipe, adapter)


@pytest.mark.parametrize(
    ("make", "scheduler"),
    [(flexip_pipeline, DPMSolverMultistepScheduler), (stock_pipeline, EulerAncestralDiscreteScheduler)],
    ids=["FlexIPPipeline-dpm++", "stock-euler-a"],
)
def test_mixed_settings_in_threads_give_each_call_its_own_image(tiny_models, load_test_adapter, images, make, scheduler):
    references = images["references"]
    pipe = make(tiny_models, load_test_adapter(), scheduler)
    pipe.set_progress_bar_config(disable=True)
    # Steps, guidance (on, and off: another batch size), reference, dial and seed all differ between the calls.
    calls = [
        {"num_inference_steps": 3, "guidance_scale": 1.0, "reference": references[0], "preservation": 1.0, "seed": 0},
        {"num_inference_steps": 5, "guidance_scale": 6.0, "reference": references[1], "preservation": 0.3, "seed": 1},
    ]

    def run(settings, **extra):
        settings = dict(settings)
        generator = torch.Generator().manual_seed(settings.pop("seed"))
        return pipe("a dog", generator=generator, output_type="np", **settings, **extra).images

    alone = [run(settings) for settings in calls]
    assert np.abs(alone[0] - alone[1]).max() > 1e-2

    # The threads take their first three denoising steps in lockstep, so their scheduler steps interleave.
    together = min(settings["num_inference_steps"] for settings in calls)
    barrier = threading.Barrier(len(calls), timeout=60)

    def step_together(pipeline, step, timestep, tensors):
        if step < together:
            barrier.wait()
        return tensors

    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(run, settings, callback_on_step_end=step_together) for settings in calls]
        for future in futures:  # a call that fails frees the others from the barrier at once
            future.add_done_callback(lambda done: done.exception() is not None and barrier.abort())
    results = [future.result() for future in futures]  # re-raises a thread's exception here
    # Concurrent threads may split torch's reductions differently (rounding-level differences); a call reading
    # the other's scheduler or guidance changes pixels by far more.
    for result, expected in zip(results, alone):
        np.testing.assert_allclose(result, expected, atol=1e-4)
    # The pipeline object itself keeps its scheduler as it was: no call's timesteps were written into it.
    assert pipe.scheduler.timesteps is None or pipe.scheduler.step_index is None
