"""FlexIP's evaluation on a calibrated adapter: its preservation values are the calibrated dial (the images'
folders, the manifest and the curves name them), and generation.json records the raw g each stands for."""

from __future__ import annotations

from fixtures import CALIBRATION
from flexip.evaluation.generate_config import Sampling
from flexip.evaluation.methods import build_method


def test_generation_records_the_raw_gate_of_each_dial_value(calibrated_adapter):
    method = build_method("flexip", Sampling(seeds=1, steps=2), adapter=str(calibrated_adapter),
                          preservation=(0.0, 0.3, 1.0))  # fmt: skip
    assert (method.dial_name, method.dials) == ("preservation", (0.0, 0.3, 1.0))
    settings = method.settings()
    assert settings["preservation"] == [0.0, 0.3, 1.0]
    assert settings["gate"] == [0.0, CALIBRATION.dial_map(0.3), 1.0]
