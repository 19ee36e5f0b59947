"""The dial (`flexip.settings.dial`, its text forms: `dial_text`) without a model: its forms, where each front
end's value becomes one `Dial`, the checks when a value is made and against an adapter's layers, the text and
record forms, the schedules."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flexip import DialSchedule, FlexIPError
from flexip.denoisers.blocks import UNET_BLOCKS
from flexip.settings.dial import PRESERVATION, SCALE, Dial, dials, sweep_record, sweep_text
from flexip.settings.dial_text import parse_dials

# An adapter's layers: two down attentions, the mid block, and up block 1 with two attentions.
LAYERS = ["down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor",
          "mid_block.attentions.0.transformer_blocks.0.attn2.processor",
          "up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor",
          "up_blocks.1.attentions.1.transformer_blocks.0.attn2.processor"]  # fmt: skip


def recorded(value):
    """`value` through JSON, as the settings beside an image hold it."""
    return json.loads(json.dumps(value))


# One path: every front end's value is the same Dial and resolves the same.


@pytest.mark.parametrize(
    "form, text, quantity",
    [
        (0.4, "0.4", PRESERVATION),
        ({"down": 0.9, "mid": 0.6, "up": 0.3}, "down=0.9,mid=0.6,up=0.3", PRESERVATION),
        ({"up": {"block_1": 0.2}, "mid": 0.4}, "up.block_1=0.2,mid=0.4", PRESERVATION),
        (DialSchedule(0.9, 0.3), "0.9:0.3", PRESERVATION),
        (DialSchedule(0.9, 0.3, "cosine"), "0.9:0.3:cosine", PRESERVATION),
        (2, "2", SCALE),
        ({"down": 1, "up": 0.8}, "down=1,up=0.8", SCALE),
    ],
)
def test_a_python_value_the_command_lines_text_and_a_record_give_one_dial(form, text, quantity):
    (python,) = dials(form, quantity=quantity)
    (command_line,) = parse_dials(text, "--flag", quantity)
    from_record = Dial.from_record(recorded(python.record()), quantity)
    assert python == command_line == from_record
    resolved = [dial.resolve(LAYERS, UNET_BLOCKS) for dial in (python, command_line, from_record)]
    for progress in (0.0, 0.3, 1.0):
        assert len({layer_dial.at(progress, len(LAYERS)) for layer_dial in resolved}) == 1
    assert len({(layer_dial.values, layer_dial.schedule) for layer_dial in resolved}) == 1


def test_dials_of_different_values_or_quantities_differ():
    assert Dial(0.4) != Dial(0.5) and Dial(0.4) != Dial(0.4, quantity=SCALE)
    assert Dial({"up": 0.3}) != Dial({"down": 0.3})
    assert Dial(DialSchedule(0.9, 0.3)) != Dial(DialSchedule(0.3, 0.9))
    assert Dial(1) == Dial(1.0, name="--preservation")  # the number and its name's spelling do not matter


def test_a_dial_stays_itself_in_a_sweep():
    dial = Dial({"up": 0.3})
    assert dials(dial)[0] is dial and dials([dial, 0.5])[0] is dial


# The text forms of the command line and the web page.


@pytest.mark.parametrize(
    "text, form",
    [
        ("0.3,0.5", [0.3, 0.5]),
        ("down=0.9,mid=0.6,up=0.3", {"down": 0.9, "mid": 0.6, "up": 0.3}),
        ("up.block_1=0.2,mid=0.4", {"up": {"block_1": 0.2}, "mid": 0.4}),
        ("0.9:0.3", DialSchedule(0.9, 0.3)),
        ("0.9:0.3:cosine", DialSchedule(0.9, 0.3, "cosine")),
        ("0.9:0.3,0.6", [DialSchedule(0.9, 0.3), 0.6]),
        ("down=0.9,up=0.3;0.6;0.1:0.8", [{"down": 0.9, "up": 0.3}, 0.6, DialSchedule(0.1, 0.8)]),
    ],
)
def test_text_forms_parse_and_write_back(text, form):
    parsed = parse_dials(text, "--preservation")
    assert parsed == dials(form)
    assert parse_dials(sweep_text(parsed), "--preservation") == parsed
    assert [Dial.from_record(record) for record in recorded(sweep_record(parsed))] == parsed
    for dial in parsed:
        assert parse_dials(dial.text(), "--preservation") == [dial]
        assert Dial.from_record(recorded(dial.record())) == dial


@pytest.mark.parametrize(
    "text, named",
    [("0.9:", "'' is not a number"), ("down=x", "'x' is not a number"), ("1:2:3:4", "START:END or START:END:SHAPE"),
     ("0.3,0.5;0.7", "cannot be a list"), ("up=0.3,up=0.4", "up is given twice"),
     ("up=0.3,up.block_1=0.4", "up is given both whole and per block"), ("1.5", "--preservation=1.5 is outside [0, 1]")],
)  # fmt: skip
def test_text_mistakes_are_one_line(text, named):
    with pytest.raises(FlexIPError) as error:
        parse_dials(text, "--preservation")
    assert named in str(error.value) and "\n" not in str(error.value)


def test_records_keep_every_form_a_record_can_hold():
    for form in [0.4, {"up": {"block_1": [0.0, 1.0]}, "mid": [0.4]}, DialSchedule(0.1, 0.8, "cosine")]:
        dial = Dial(form)
        assert Dial.from_record(recorded(dial.record())) == dial
    assert Dial(0.4).record() == 0.4
    assert Dial(DialSchedule(0.9, 0.3)).record() == {"start": 0.9, "end": 0.3, "shape": "linear"}
    with pytest.raises(FlexIPError, match="only a number, a per-block dict or a DialSchedule"):
        Dial(lambda progress: 0.5).record()


# Checks: a value's numbers when it is made, its block names against an adapter's layers. One line each.


def test_dial_mistakes_are_one_line_errors():
    mistakes = {
        "outside [0, 1]": lambda: Dial({"mid": 1.5}),
        "DialSchedule start=1.2 is outside [0, 1]": lambda: DialSchedule(1.2, 0.0),
        "DialSchedule shape='cubic'": lambda: DialSchedule(0.2, 0.8, "cubic"),
        "gave 2 at progress 0": lambda: Dial(lambda progress: 2),
        "preservation[1]=[0.1]: a sweep cannot hold a list": lambda: dials([0.3, [0.1]]),
        "preservation is empty": lambda: dials([]),
        "scale=[1, 2]": lambda: Dial([1, 2], quantity=SCALE),
        "scale=DialSchedule(": lambda: Dial(DialSchedule(0.9, 0.3), quantity=SCALE),  # s does not change over steps
        "scale['up']=20.0 is outside [0, 10]": lambda: Dial({"up": 20.0}, quantity=SCALE),
        "preservation=True is a boolean": lambda: Dial(True),
        # block names and per-attention lists: known once the adapter's layers are
        "unknown block 'dwn'": lambda: Dial({"dwn": 0.5}).resolve(LAYERS, UNET_BLOCKS),
        "'block_3' is not a block with joined attention; this model's are block_1": lambda: Dial(
            {"up": {"block_3": 0.5}}).resolve(LAYERS, UNET_BLOCKS),
        "has 3 values; this block has 2 attentions": lambda: Dial({"up": {"block_1": [0, 1, 0]}}).resolve(
            LAYERS, UNET_BLOCKS),
        "the mid block is one block": lambda: Dial({"mid": {"block_0": 0.5}}).resolve(LAYERS, UNET_BLOCKS),
    }  # fmt: skip
    for expected, make in mistakes.items():
        with pytest.raises(FlexIPError) as error:
            make()
        assert expected in str(error.value) and "\n" not in str(error.value), (expected, str(error.value))


def test_block_dicts_expand_as_diffusers_names_them():
    layers = ["down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor",
              "down_blocks.1.attentions.1.transformer_blocks.0.attn2.processor",
              "mid_block.attentions.0.transformer_blocks.0.attn2.processor",
              "up_blocks.0.attentions.0.transformer_blocks.0.attn2.processor",
              "up_blocks.0.attentions.0.transformer_blocks.1.attn2.processor",
              "up_blocks.0.attentions.1.transformer_blocks.0.attn2.processor"]  # fmt: skip
    # InstantStyle's "style blocks only", in diffusers' set_ip_adapter_scale form; unnamed blocks keep s = 1
    style = Dial({"up": {"block_0": [0.0, 1.0]}}, quantity=SCALE)
    assert style.resolve(layers, UNET_BLOCKS).values == (1, 1, 1, 0, 0, 1)
    # unnamed blocks keep g = 0.5
    assert Dial({"down": {"block_1": [0.2, 0.3]}, "mid": [0.4]}).resolve(layers, UNET_BLOCKS).values == (
        0.2, 0.3, 0.4, 0.5, 0.5, 0.5)  # fmt: skip


# Schedules.


@pytest.mark.parametrize("progress, linear, cosine", [
    (0.0, 0.9, 0.9), (0.1, 0.82, 0.88042261), (0.25, 0.7, 0.78284271), (0.5, 0.5, 0.5), (0.75, 0.3, 0.21715729),
    (0.9, 0.18, 0.11957739), (1.0, 0.1, 0.1),
])  # fmt: skip
def test_a_schedule_has_its_shape_between_its_ends(progress, linear, cosine):
    # g = start + (end - start) * (1 - cos(pi * progress)) / 2 for cosine, by hand at 0.9 -> 0.1; what the layers get.
    for shape, expected in [("linear", linear), ("cosine", cosine)]:
        dial = Dial(DialSchedule(0.9, 0.1, shape)).resolve(LAYERS, UNET_BLOCKS)
        assert dial.at(progress, 3) == pytest.approx((expected,) * 3, abs=1e-8)


def test_a_cosine_schedule_is_slow_at_both_ends_and_fast_in_the_middle():
    cosine, linear = DialSchedule(0.9, 0.1, "cosine"), DialSchedule(0.9, 0.1)
    grid = np.linspace(0, 1, 101)
    steps = np.abs(np.diff([cosine(p) for p in grid]))
    # Faster and faster to the middle, then slower and slower.
    assert np.all(np.diff(steps[:50]) > 0) and np.all(np.diff(steps[50:]) < 0)
    for start, end in [(0.0, 0.1), (0.9, 1.0)]:
        assert abs(cosine(end) - cosine(start)) < abs(linear(end) - linear(start)) / 3
    assert abs(cosine(0.55) - cosine(0.45)) > abs(linear(0.55) - linear(0.45)) * 1.5
    values = [cosine(p) for p in grid]
    assert all(0.1 - 1e-12 <= value <= 0.9 for value in values) and np.all(np.diff(values) < 0)
