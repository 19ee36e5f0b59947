"""The typed settings every front end shares: built without argparse, checked when built, reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from fixtures import picture
from flexip import FlexIPError
from flexip.pipeline.front_end import generate, load_pipeline, record
from flexip.settings.generation import ModelSettings, SamplingSettings


@pytest.mark.parametrize(
    "kwargs, message",
    [({"steps": 0}, "steps=0"), ({"guidance": float("nan")}, "guidance=nan"), ({"scale": -1}, "scale=-1")],
)
def test_sampling_settings_are_checked_when_built(kwargs, message):
    with pytest.raises(FlexIPError, match=message):
        SamplingSettings(**kwargs)


def test_model_settings_are_checked_when_built():
    with pytest.raises(FlexIPError, match="dtype='float8'"):
        ModelSettings(dtype="float8")
    with pytest.raises(FlexIPError, match="scheduler='fast'"):
        ModelSettings(scheduler="fast")


def test_a_front_end_generates_from_the_settings_alone(tiny_models):
    """What the command line does, from Python: the same settings give the same image, and say how it was made."""
    models = ModelSettings(adapter=str(tiny_models.adapter), device="cpu", scheduler="dpm++")
    sampling = SamplingSettings(steps=2, guidance=3.0, seed=5)
    loaded = load_pipeline(models)
    reference = picture(0)
    first = generate(loaded, "a dog", reference, [0.0, 1.0], sampling)
    again = generate(loaded, "a dog", reference, [1.0], sampling)
    assert len(first) == 2
    np.testing.assert_allclose(np.asarray(first[1], dtype=int), np.asarray(again[0], dtype=int), atol=1)
    written = record("a dog", "dog.png", models, sampling, loaded)
    assert written["seed"] == 5 and written["scheduler"] == "dpm++" and written["steps"] == 2
    assert written["dtype"] == "float32" and written["adapter"] == str(tiny_models.adapter)
