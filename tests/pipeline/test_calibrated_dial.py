"""The calibrated dial in the Python call: on a calibrated adapter `preservation` u is the raw gate at map(u),
bit for bit, in every form; `gate` is the raw g; without a calibration the two are one (the map's maths:
tests/calibration/test_curve.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import flexip
from fixtures import CALIBRATION, flexip_pipe, stock_pipeline
from flexip import DialSchedule, FlexIPError
from flexip.pipeline.front_end import LoadedModel, dial_labels
from flexip.settings.dial import dials
from flexip.settings.dial_map import MappedSchedule

STEPS = 2
MAP = CALIBRATION.dial_map
SCHEDULE = DialSchedule(0.9, 0.3, "cosine")
BLOCKS = {"down": 0.9, "mid": 0.6, "up": {"block_1": [0.3, 0.7]}}


def mapped_blocks(form):
    if isinstance(form, dict):
        return {part: mapped_blocks(entry) for part, entry in form.items()}
    if isinstance(form, list):
        return [MAP(value) for value in form]
    return MAP(form)


# (preservation u, the raw gate it stands for): a number, a sweep of every form with the dial's ends (one
# batch), a schedule as a callable of the progress.
FORMS = {
    "number": (0.3, MAP(0.3)),
    "sweep": (
        [0.0, 0.2, BLOCKS, SCHEDULE, 1.0],
        [0.0, MAP(0.2), mapped_blocks(BLOCKS), MappedSchedule(SCHEDULE, MAP), 1.0],
    ),
    "callable": (SCHEDULE, lambda progress: MAP(SCHEDULE(progress))),
}


@pytest.fixture(scope="module")
def calibrated_pipe(tiny_models, calibrated_adapter):
    """A FlexIPPipeline on the calibrated copy of the module's `adapter` (the same weights), read from its files."""
    pipe = flexip_pipe(tiny_models.base, calibrated_adapter)
    assert pipe.flexip.adapter.config.calibration == CALIBRATION
    return pipe


def generate(pipe, reference, **dial):
    return pipe("a photo of a dog", reference=reference, num_inference_steps=STEPS, output_type="np",
                generator=torch.Generator().manual_seed(0), **dial).images  # fmt: skip


@pytest.mark.parametrize("preservation, gate", FORMS.values(), ids=FORMS.keys())
def test_a_calibrated_dial_is_the_raw_gate_at_its_map(calibrated_pipe, pipe, reference, preservation, gate):
    calibrated = generate(calibrated_pipe, reference, preservation=preservation)
    assert np.array_equal(calibrated, generate(calibrated_pipe, reference, gate=gate))
    # The same raw gate on the adapter without a calibration: the calibration changes nothing else.
    assert np.array_equal(calibrated, generate(pipe, reference, preservation=gate))


def test_the_default_is_the_dial_at_one_half(calibrated_pipe, pipe, reference):
    default = generate(calibrated_pipe, reference)
    assert np.array_equal(default, generate(pipe, reference, preservation=MAP(0.5)))
    assert np.abs(default - generate(pipe, reference)).max() > 1e-3  # the map moves the dial


def test_without_a_calibration_preservation_is_the_gate(pipe, reference):
    forms = [0.3, BLOCKS, SCHEDULE]
    assert np.array_equal(
        generate(pipe, reference, preservation=forms), generate(pipe, reference, gate=forms)
    )
    default = generate(pipe, reference)  # 0.5, as before
    assert np.array_equal(default, generate(pipe, reference, gate=0.5))


def test_a_stock_pipeline_given_a_calibrated_adapter_takes_the_dial_too(
    tiny_models, calibrated_adapter, reference
):
    stock = flexip.load_flexip(stock_pipeline("txt2img", tiny_models.base), str(calibrated_adapter))
    preservation, gate = FORMS["sweep"]
    assert np.array_equal(
        generate(stock, reference, preservation=preservation), generate(stock, reference, gate=gate)
    )
    with pytest.raises(FlexIPError, match="give preservation or gate, not both"):
        generate(stock, reference, preservation=0.3, gate=0.3)
    with pytest.raises(FlexIPError, match="gate was given without a reference image"):
        stock("a photo of a dog", gate=0.3, num_inference_steps=STEPS)


def test_preservation_and_gate_together_are_refused(calibrated_pipe, pipe, reference):
    for each in (calibrated_pipe, pipe):
        with pytest.raises(FlexIPError, match="give preservation or gate, not both"):
            generate(each, reference, preservation=0.3, gate=0.3)


def test_labels_show_the_raw_gate_only_where_the_dial_is_calibrated(calibrated_pipe, pipe):
    values = dials([0.3, {"up": 0.7}, SCHEDULE])
    given = ["0.3", "up=0.7", "0.9:0.3:cosine"]
    assert dial_labels(LoadedModel(pipe, None, {}), values) == given
    assert dial_labels(LoadedModel(calibrated_pipe, None, {}), values, dial="gate") == given
    assert dial_labels(LoadedModel(calibrated_pipe, None, {}), values) == [
        "0.3 (g 0.2)",
        "up=0.7 (g down=0.6,mid=0.6,up=0.76)",
        "0.9:0.3:cosine (g 0.92:0.2:cosine)",
    ]


def test_blocks_a_dict_leaves_out_take_the_calibrated_default(calibrated_pipe, reference):
    """`{"down": 0.9}` on a calibrated adapter is `{"down": 0.9, "mid": 0.5, "up": 0.5}` on the dial: every
    block it leaves out is at the dial's default, which stands for g = map(0.5), not the raw 0.5."""
    partial = generate(calibrated_pipe, reference, preservation={"down": 0.9})
    written_out = generate(calibrated_pipe, reference, preservation={"down": 0.9, "mid": 0.5, "up": 0.5})
    assert np.array_equal(partial, written_out)
    raw_default = generate(calibrated_pipe, reference, gate={"down": MAP(0.9)})
    assert np.abs(partial - raw_default).max() > 1e-4
