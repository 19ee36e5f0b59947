"""The dial over a clip's frames (`flexip.settings.dial`) without a model: `DialSchedule(over="frames")` and
`FrameSchedule`, `Dial.over`, their record and text, and a calibrated adapter's map over the frames."""

from __future__ import annotations

import json

import pytest

from flexip import DialSchedule, FlexIPError, FrameSchedule
from flexip.denoisers.blocks import UNET_BLOCKS
from flexip.settings.calibration import gate_dial
from flexip.settings.dial import Dial, frame_progress
from flexip.settings.dial_map import DialMap, MappedSchedule
from flexip.settings.dial_text import parse_dials

LAYERS = ["down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor",
          "up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor"]  # fmt: skip
FRAMES = DialSchedule(0.9, 0.3, "cosine", over="frames")


def recorded(value):
    return json.loads(json.dumps(value))


def test_a_schedule_over_frames_gives_frame_f_of_f_frames_its_value_at_f_over_f_minus_1():
    dial = Dial(DialSchedule(0.9, 0.3, over="frames")).resolve(LAYERS, UNET_BLOCKS)
    assert dial.over_frames and not dial.over_steps
    values = [dial.at(0.7, 2, frame_progress(f, 4)) for f in range(4)]  # the step's progress plays no part
    assert all(len(set(value)) == 1 for value in values)
    assert [value[0] for value in values] == pytest.approx([0.9, 0.7, 0.5, 0.3])
    assert frame_progress(0, 1) == 0.0  # one frame: the start
    steps = Dial(DialSchedule(0.9, 0.3)).resolve(LAYERS, UNET_BLOCKS)
    assert steps.over_steps and not steps.over_frames and steps.at(0.5, 1, frame=1.0) == pytest.approx((0.6,))


def test_a_callable_over_frames_is_wrapped_and_a_bare_one_runs_over_the_steps():
    frames = Dial(FrameSchedule(lambda progress: 1 - progress)).resolve(LAYERS, UNET_BLOCKS)
    assert frames.over_frames and frames.at(0.0, 1, frame=0.25) == (0.75,)
    assert Dial(lambda progress: 1 - progress).resolve(LAYERS, UNET_BLOCKS).over_steps
    with pytest.raises(FlexIPError, match="gave 2 at progress 0"):
        Dial(FrameSchedule(lambda progress: 2))


def test_over_turns_a_schedule_to_either_axis_and_refuses_other_forms_in_one_line():
    (dial,) = parse_dials("0.9:0.3:cosine", "--preservation")
    assert dial.over("frames") == Dial(FRAMES) and dial.over("frames").over("steps") == dial
    assert dial.over("frames").name == "--preservation"
    for form in (0.4, {"up": 0.3}, FrameSchedule(lambda p: p)):
        with pytest.raises(FlexIPError, match="only a schedule START:END") as error:
            Dial(form, "--preservation").over("frames")
        assert "\n" not in str(error.value)
    with pytest.raises(FlexIPError, match="over='clips' is not one of steps, frames"):
        dial.over("clips")
    with pytest.raises(FlexIPError, match="over='clips' is not one of steps, frames"):
        DialSchedule(0.1, 0.2, over="clips")


def test_the_record_says_over_frames_and_reads_back_and_a_steps_record_is_as_before():
    assert Dial(FRAMES).record() == {"start": 0.9, "end": 0.3, "shape": "cosine", "over": "frames"}
    assert Dial(DialSchedule(0.9, 0.3)).record() == {"start": 0.9, "end": 0.3, "shape": "linear"}
    assert Dial.from_record(recorded(Dial(FRAMES).record())) == Dial(FRAMES)
    assert Dial(FRAMES).text() == "0.9:0.3:cosine"  # the axis is a flag of its own on the command line
    with pytest.raises(FlexIPError, match="only a number, a per-block dict or a DialSchedule"):
        Dial(FrameSchedule(lambda p: p)).record()


def test_a_calibrated_adapter_maps_a_frames_schedule_as_a_steps_one():
    dial_map = DialMap((0.0, 0.5, 1.0), (0.0, 0.2, 1.0))
    gate = gate_dial(Dial(FRAMES), dial_map, LAYERS, UNET_BLOCKS)
    assert isinstance(gate.form, MappedSchedule) and gate.form.over == "frames"
    resolved = gate.resolve(LAYERS, UNET_BLOCKS)
    assert resolved.over_frames and resolved.at(0.0, 1, frame=0.5) == (pytest.approx(dial_map(FRAMES(0.5))),)
    assert Dial.from_record(recorded(gate.record())) == gate and gate.record()["over"] == "frames"
    wrapped = gate_dial(Dial(FrameSchedule(lambda p: 0.5)), dial_map, LAYERS, UNET_BLOCKS)
    assert wrapped.resolve(LAYERS, UNET_BLOCKS).over_frames and wrapped.form(0.3) == pytest.approx(0.2)
