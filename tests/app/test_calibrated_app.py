"""The web page on a calibrated adapter: its preservation is the calibrated dial, each value shown with the raw g
it stands for, both recorded, and its command line writes the same image (the page on an adapter without a
calibration shows nothing new: test_app_service.py, test_app_browser.py)."""

from __future__ import annotations

import shlex

import numpy as np
import pytest

pytest.importorskip("gradio")  # the app extra

from fixtures import CALIBRATION, picture, pixels, settings_of
from flexip.app.service import Service
from flexip.cli import main
from flexip.settings.generation import ModelSettings

MAP = CALIBRATION.dial_map


@pytest.fixture(scope="module")
def service(calibrated_model, calibrated_adapter, tiny_models, tmp_path_factory):
    models = ModelSettings(adapter=str(calibrated_adapter), base=str(tiny_models.base), device="cpu")
    return Service(calibrated_model, models, tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("uploads") / "dog.png"
    picture(0).save(path)
    return path


def ask(service, reference, **changes):
    values = {"prompt": "a dog", "preservation": 0.3, "sweep": None, "seed": 0, "randomize": False, "steps": 2,
              "guidance": 7.5, "scheduler": "ddim", "scale": 1.0, "negative_prompt": ""}  # fmt: skip
    return service.request(str(reference), str(reference), **{**values, **changes})


def test_one_image_shows_and_records_its_gate_and_is_what_its_command_writes(service, reference, tmp_path):
    result = service.run(ask(service, reference))
    assert result.labels == ["0.3 (g 0.2)"] and "1 image at preservation 0.3 (g 0.2)," in result.report
    settings = settings_of(result.images[0])
    assert (settings["preservation"], settings["gate"]) == (0.3, MAP(0.3))
    words = shlex.split(result.command)
    assert words[words.index("--preservation") + 1] == "0.3"
    words[words.index("--out") + 1] = str(tmp_path / "cli.png")
    assert main(words[1:]) == 0
    assert np.array_equal(pixels(tmp_path / "cli.png"), pixels(result.images[0]))
    assert settings_of(tmp_path / "cli.png") == settings


def test_a_sweep_shows_each_values_gate_and_records_both(service, reference):
    result = service.run(ask(service, reference, sweep=2, dial="0.5;0.9:0.3"))
    assert result.labels == ["0.5 (g 0.6)", "0.9:0.3 (g 0.92:0.2)"]
    schedule = {"start": 0.9, "end": 0.3, "shape": "linear"}
    assert settings_of(result.sheet)["preservation"] == [0.5, schedule]
    assert settings_of(result.sheet)["gate"] == [MAP(0.5), {**schedule, "map": CALIBRATION.dial_map.record()}]
    assert [settings_of(path)["gate"] for path in result.images] == settings_of(result.sheet)["gate"]
