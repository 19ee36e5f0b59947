"""FlexIP on AnimateDiff (`load_flexip` on `AnimateDiffPipeline`, tiny SD1.5 base + the kit's tiny motion
adapter): the base model at s = 0, the ends of the dial, sweeps, the K/V once per generation, and the dial
over the frames reaching each frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    AnimateDiffPipeline,
    AnimateDiffSDXLPipeline,
    AnimateDiffVideoToVideoPipeline,
    MotionAdapter,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from PIL import Image

import flexip
from fixtures import cross_attention_calls, picture, poison_branch
from flexip import DialSchedule, FlexIPError, FrameSchedule
from flexip.settings.dial import frame_progress

FRAMES, STEPS = 4, 2
SCHEDULE = DialSchedule(0.9, 0.1, over="frames")


def stock(tiny_models, cls=AnimateDiffPipeline):
    """diffusers' AnimateDiff pipeline from the kit's base and motion adapter, nothing of FlexIP's."""
    base = (StableDiffusionXLPipeline if cls is AnimateDiffSDXLPipeline else StableDiffusionPipeline).from_pretrained(
        tiny_models.base
    )
    pipe = cls.from_pipe(base, motion_adapter=MotionAdapter.from_pretrained(tiny_models.motion_adapter))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def with_flexip(tiny_models, load_test_adapter, cls=AnimateDiffPipeline):
    return flexip.load_flexip(stock(tiny_models, cls), load_test_adapter())


def clip(pipe, seed: int = 0, **kwargs) -> np.ndarray:
    """(clips, frames, 32, 32, 3) of "a dog", guided (the unconditional half gets the null reference); from a
    `video` of FRAMES frames, or of FRAMES frames."""
    frames = {} if "video" in kwargs else {"num_frames": FRAMES}
    return pipe(
        prompt="a dog", num_inference_steps=STEPS, generator=torch.Generator().manual_seed(seed), output_type="np",
        **frames, **kwargs,
    ).frames  # fmt: skip


@pytest.fixture(scope="module")
def pipe(tiny_models, load_test_adapter):
    return with_flexip(tiny_models, load_test_adapter)


@pytest.fixture(scope="module")
def still_pipe(tiny_models, load_test_adapter):
    """The motion modules' temporal output projections zeroed: each frame is denoised on its own."""
    pipe = with_flexip(tiny_models, load_test_adapter)
    with torch.no_grad():
        for module in pipe.unet.modules():
            if isinstance(module, AnimateDiffTransformer3D):
                module.proj_out.weight.zero_()
                module.proj_out.bias.zero_()
    return pipe


def test_scale_zero_is_animatediff_bit_for_bit(pipe, tiny_models, reference):
    expected = clip(stock(tiny_models))
    np.testing.assert_array_equal(clip(pipe, reference=reference, preservation=0.7, scale=0), expected)
    assert np.abs(clip(pipe, reference=reference, preservation=0.7) - expected).max() > 1e-2  # FlexIP acts


def test_a_clip_from_a_clip_at_scale_zero_is_diffusers_video_to_video(tiny_models, load_test_adapter, reference):
    video = [Image.fromarray(np.full((32, 32, 3), 60 * frame, dtype=np.uint8)) for frame in range(FRAMES)]
    expected = clip(stock(tiny_models, AnimateDiffVideoToVideoPipeline), video=video, strength=0.9)
    pipe = with_flexip(tiny_models, load_test_adapter, AnimateDiffVideoToVideoPipeline)
    np.testing.assert_array_equal(clip(pipe, video=video, strength=0.9, reference=reference, scale=0), expected)
    swept = clip(pipe, video=video, strength=0.9, reference=reference, preservation=[0.2, 0.8])
    alone = clip(pipe, video=video, strength=0.9, reference=reference, preservation=0.8)
    np.testing.assert_allclose(swept[1], alone[0], atol=1e-4)


def test_animatediff_sdxl_is_one_more_entry(tiny_xl_models, load_xl_test_adapter, reference):
    # One pipeline: diffusers' `UNetMotionModel.from_unet2d` leaves SDXL's `add_embedding` freshly drawn.
    pipe = stock(tiny_xl_models, AnimateDiffSDXLPipeline)
    expected = clip(pipe)
    flexip.load_flexip(pipe, load_xl_test_adapter())
    np.testing.assert_array_equal(clip(pipe, reference=reference, scale=0), expected)
    swept = clip(pipe, reference=reference, preservation=[SCHEDULE, 0.2])
    np.testing.assert_allclose(swept[1], clip(pipe, reference=reference, preservation=0.2)[0], atol=1e-4)
    assert np.abs(swept[1] - expected[0]).max() > 1e-2  # FlexIP acts


@pytest.mark.parametrize("g, branch", [(1.0, "personalization"), (0.0, "preservation")])
def test_an_end_of_the_dial_never_reads_the_other_branch(tiny_models, load_test_adapter, reference, g, branch):
    pipe = with_flexip(tiny_models, load_test_adapter)  # its own: the test poisons its weights
    before = clip(pipe, reference=reference, preservation=g)
    poison_branch(pipe.flexip.adapter, branch, float("nan"))
    np.testing.assert_array_equal(clip(pipe, reference=reference, preservation=g), before)
    constant = DialSchedule(g, g, over="frames")  # every frame at the end: the other branch is still never read
    np.testing.assert_array_equal(clip(pipe, reference=reference, preservation=constant), before)
    assert np.isnan(clip(pipe, reference=reference, preservation=0.5)).any()  # the poison is live


def test_a_constant_schedule_over_frames_is_the_number(pipe, reference):
    number = clip(pipe, reference=reference, preservation=0.6)
    for constant in (DialSchedule(0.6, 0.6, over="frames"), FrameSchedule(lambda progress: 0.6)):
        np.testing.assert_array_equal(clip(pipe, reference=reference, preservation=constant), number)


def test_a_sweep_equals_its_values_one_by_one(pipe, reference):
    values = [0.0, SCHEDULE, 1.0]
    swept = clip(pipe, reference=reference, preservation=values, num_videos_per_prompt=2)
    assert swept.shape == (2 * len(values), FRAMES, 32, 32, 3)
    for index, value in enumerate(values):
        alone = clip(pipe, reference=reference, preservation=value, num_videos_per_prompt=2)
        for video in range(2):  # for each clip of the prompt, one clip per value
            np.testing.assert_allclose(swept[video * len(values) + index], alone[video], atol=1e-4)


def test_the_references_and_branch_keys_values_are_computed_once_per_generation(pipe):
    reference = picture(37)  # not seen before: the reference cache would skip the encoders
    encoder = pipe.flexip.reference_encoder
    projections = [
        linear for layer in pipe.flexip.adapter.layers.values()
        for linear in (layer.to_k_preservation, layer.to_v_preservation, layer.to_k_personalization,
                       layer.to_v_personalization)
    ]  # fmt: skip
    models = [encoder.clip_model, encoder.dino_model, pipe.flexip.adapter.preservation, *projections]
    runs = dict.fromkeys(models, 0)
    hooks = [model.register_forward_hook(lambda module, *_: runs.__setitem__(module, runs[module] + 1))
             for model in models]  # fmt: skip
    try:
        calls = cross_attention_calls(pipe, lambda: clip(pipe, reference=reference, preservation=[0.3, SCHEDULE]))
        rows = {hidden.shape[0] for _, hidden, _, _, _ in calls}
    finally:
        for hook in hooks:
            hook.remove()
    assert rows == {2 * 2 * FRAMES}  # the layers see a row per half, sample and frame ...
    assert all(condition.preservation_tokens.shape[0] == 2 * 2 for *_, condition, _ in calls)  # ... P a row per sample
    # 4 layers x 2 steps x 4 frames x 2 values, guided: one encoding, one P, one projection per branch and layer.
    assert [count for count in runs.values() if count != 1] == []


def test_a_schedule_over_frames_gives_each_frame_the_clip_of_its_value(still_pipe, reference):
    scheduled = clip(still_pipe, reference=reference, preservation=SCHEDULE)
    for frame in range(FRAMES):
        value = SCHEDULE(frame_progress(frame, FRAMES))
        constant = clip(still_pipe, reference=reference, preservation=value)
        np.testing.assert_array_equal(scheduled[0, frame], constant[0, frame])
    assert np.abs(scheduled[0, 0] - scheduled[0, -1]).max() > 1e-2  # the frames differ


def test_with_the_motion_modules_each_frame_s_value_reaches_its_layers(pipe, reference):
    calls = cross_attention_calls(pipe, lambda: clip(pipe, reference=reference, preservation=SCHEDULE))
    expected = torch.tensor([SCHEDULE(frame_progress(frame, FRAMES)) for frame in range(FRAMES)])
    assert len(calls) == len(pipe.flexip.adapter.config.layers) * STEPS
    for layer, hidden, _, condition, _ in calls:
        weights = condition.weights_for(layer.processor.projections)
        assert condition.frames == FRAMES and hidden.shape[0] == 2 * FRAMES
        g = weights.preservation_weight.view(2, FRAMES)  # the unconditional half, then the sample
        torch.testing.assert_close(g, expected.expand(2, -1), rtol=0, atol=1e-7)
        torch.testing.assert_close(weights.personalization_weight.view(2, FRAMES), 1 - expected.expand(2, -1))


def test_the_dial_over_frames_is_refused_on_an_image_pipeline(tiny_models, load_test_adapter, reference):
    images = flexip.load_flexip(StableDiffusionPipeline.from_pretrained(tiny_models.base), load_test_adapter())
    with pytest.raises(FlexIPError, match="a schedule over the frames needs a pipeline that makes clips") as error:
        images("a dog", reference=reference, preservation=SCHEDULE, num_inference_steps=1)
    assert "\n" not in str(error.value)


def test_a_prompt_per_frame_is_refused_in_one_line(pipe, reference):
    def per_frame(module, args, kwargs):  # a pipeline giving each frame a prompt of its own (FreeNoise's)
        text = kwargs["encoder_hidden_states"]
        kwargs["encoder_hidden_states"] = text + torch.arange(text.shape[0])[:, None, None]
        return args, kwargs

    hook = pipe.unet.register_forward_pre_hook(per_frame, with_kwargs=True, prepend=True)
    try:
        with pytest.raises(FlexIPError, match="other text embeddings for the frames of one clip") as error:
            clip(pipe, reference=reference, guidance_scale=1.0)
    finally:
        hook.remove()
    assert "\n" not in str(error.value)


def test_a_bad_clip_count_is_named_as_the_pipeline_names_it(pipe, reference):
    with pytest.raises(FlexIPError, match=r"^num_videos_per_prompt=0 must be an integer >= 1$"):
        pipe("a dog", reference=reference, num_frames=FRAMES, num_videos_per_prompt=0, num_inference_steps=1)
