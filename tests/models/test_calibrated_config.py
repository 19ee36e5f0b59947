"""A calibration in an adapter's flexip_config.json: written at format_version 2 with every key, read back the
same; an adapter without one keeps its version-1 file byte for byte; a broken one refused in one line."""

from __future__ import annotations

import json
import shutil

import pytest

from fixtures import CALIBRATION
from flexip import FlexIPAdapter, FlexIPError
from flexip.models.config_file import CONFIG_NAME, read_config


def test_a_calibration_is_written_at_version_2_and_read_back(calibrated_adapter):
    written = json.loads((calibrated_adapter / CONFIG_NAME).read_text())
    assert written["format_version"] == 2
    assert written["calibration"] == {
        "dial": [0.0, 0.25, 0.5, 1.0], "gate": [0.0, 0.1, 0.6, 1.0],
        "points": [{"gate": 0.0, "identity": 0.2, "prompt": 0.3}, {"gate": 0.25, "identity": 0.5, "prompt": 0.29},
                   {"gate": 0.5, "identity": 0.55, "prompt": 0.2}, {"gate": 1.0, "identity": 0.6, "prompt": 0.18}],
        "identity_scorer": "dino-i tiny", "prompt_scorer": "clip-t tiny", "pair_set": "by hand", "pairs": 2,
        "seeds": [0, 1], "images": 16,
    }  # fmt: skip
    assert read_config(calibrated_adapter)[1].calibration == CALIBRATION


def test_an_adapter_without_a_calibration_keeps_its_version_1_file(tiny_models, tmp_path):
    FlexIPAdapter.from_pretrained(tiny_models.adapter).save_pretrained(tmp_path / "again")
    original = (tiny_models.adapter / CONFIG_NAME).read_bytes()
    assert (tmp_path / "again" / CONFIG_NAME).read_bytes() == original
    assert "calibration" not in json.loads(original) and json.loads(original)["format_version"] == 1


def _knots(dial, gate):
    def damage(config):
        config["calibration"]["dial"], config["calibration"]["gate"] = dial, gate

    return damage


def _version_1(config):
    config["format_version"] = 1


@pytest.mark.parametrize(
    "damage, named",
    [
        (_knots([0.0, 0.6, 0.4, 1.0], [0.0, 0.1, 0.6, 1.0]), "calibration.dial must strictly increase"),
        (_knots([0.0, 0.25, 0.5, 1.0], [0.0, 0.6, 0.1, 1.0]), "calibration.gate must strictly increase"),
        (_knots([0.0, 0.25, 0.5, 0.9], [0.0, 0.1, 0.6, 1.0]), "calibration.dial must start at 0, end at 1"),
        (_knots([0.0, 0.25, 0.5, 1.0], [0.1, 0.2, 0.6, 1.0]), "calibration.gate must start at 0, end at 1"),
        (_knots([0.0, 0.5, 1.0], [0.0, 0.1, 0.6, 1.0]), "one knot per calibration.dial knot"),
        (_version_1, "a calibration needs format_version 2 (the file says 1)"),
    ],
    ids=["dial not monotone", "gate not monotone", "dial ends", "gate ends", "knot counts", "version 1"],
)
def test_a_broken_calibration_is_refused_in_one_line(calibrated_adapter, tmp_path, damage, named):
    adapter = shutil.copytree(calibrated_adapter, tmp_path / "adapter")
    config = json.loads((adapter / CONFIG_NAME).read_text())
    damage(config)
    (adapter / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(FlexIPError) as refused:
        read_config(adapter)
    message = str(refused.value)
    assert named in message and str(adapter / CONFIG_NAME) in message and "\n" not in message, message
