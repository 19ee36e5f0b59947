"""The gate an adapter learned per modality, read from its weights file without torch, and on a calibrated
adapter the dial value that stands for each (the calibration's map read backwards)."""

from __future__ import annotations

import pytest
import torch

from fixtures import CALIBRATION
from flexip import FlexIPAdapter
from flexip.models.learned_gate import learned_points


def test_the_learned_gates_are_the_adapters_own(tmp_path, load_test_adapter):
    adapter = load_test_adapter()
    with torch.no_grad():
        adapter.gate.logits.copy_(torch.tensor([1.5, -0.8]))  # as training leaves them: image high, video low
    adapter.save_pretrained(tmp_path / "adapter")
    points = learned_points(tmp_path / "adapter")
    learned = FlexIPAdapter.from_pretrained(tmp_path / "adapter").gate.learned_values()
    assert points == {name: {"gate": pytest.approx(g, abs=1e-4)} for name, g in learned.items()}
    assert points["video"]["gate"] < 0.5 < points["image"]["gate"]


def test_a_calibrated_adapter_names_the_dial_value_of_each_learned_gate(calibrated_adapter):
    points = learned_points(calibrated_adapter)
    for point in points.values():
        assert CALIBRATION.dial_map(point["preservation"]) == pytest.approx(point["gate"], abs=1e-3)
        assert point["preservation"] != pytest.approx(point["gate"], abs=1e-2)  # the map moved it
