"""--preservation (the calibrated dial on a calibrated adapter) and --gate (the raw g) on the command line: the
same images, both recorded, and a record that makes its image again (mistakes: test_cli_before_torch.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fixtures import CALIBRATION, picture, pixels, settings_of
from flexip.cli import main
from flexip.pipeline.front_end import generate
from flexip.settings.dial import Dial
from flexip.settings.generation import SamplingSettings

MAP = CALIBRATION.dial_map
STEPS = "2"


@pytest.fixture(scope="module")
def arguments(tiny_models, tmp_path_factory):
    """What every command here takes but the dial and --out, on `adapter` (a directory) and the tiny base."""
    reference = tmp_path_factory.mktemp("reference") / "dog.png"
    picture(0).save(reference)

    def on(adapter) -> list[str]:
        return ["--reference", str(reference), "--prompt", "a dog", "--adapter", str(adapter),
                "--base", str(tiny_models.base), "--steps", STEPS, "--seed", "3"]  # fmt: skip

    return on


@pytest.fixture(scope="module")
def common(arguments, calibrated_adapter):
    return arguments(calibrated_adapter)


def test_generate_records_the_dial_and_the_gate_and_either_makes_the_image(
    tmp_path, common, calibrated_model
):
    dial, raw = tmp_path / "dial.png", tmp_path / "raw.png"
    assert main(["generate", *common, "--preservation", "0.9:0.3", "--out", str(dial)]) == 0
    settings = settings_of(dial)
    assert settings["preservation"] == {"start": 0.9, "end": 0.3, "shape": "linear"}
    assert settings["gate"] == {**settings["preservation"], "map": MAP.record()}
    # Either record, read back, makes the image again.
    sampling = SamplingSettings(steps=settings["steps"], seed=settings["seed"])
    reference = Image.open(settings["reference"]).convert("RGB")
    for name in ("preservation", "gate"):
        again = generate(
            calibrated_model, "a dog", reference, [Dial.from_record(settings[name])], sampling, dial=name
        )
        assert np.array_equal(np.asarray(again[0]), pixels(dial)), name
    # The raw gate given by hand: the dial's image, recorded without a preservation.
    assert main(["generate", *common, "--gate", repr(MAP(0.6)), "--out", str(raw)]) == 0
    assert (settings_of(raw)["preservation"], settings_of(raw)["gate"]) == (None, MAP(0.6))
    dialled = generate(calibrated_model, "a dog", reference, [Dial(0.6)], sampling)[0]
    assert np.array_equal(np.asarray(dialled), pixels(raw))


def test_a_gate_sweep_is_named_and_recorded_as_the_gate(tmp_path, common):
    out = tmp_path / "sweep"
    assert main(["sweep", *common, "--gate", "0.3;up=0.6", "--out", str(out)]) == 0
    names = ["00_gate-0.30.png", "01_gate-up-0.6.png"]
    assert sorted(path.name for path in out.iterdir()) == sorted(
        [*names, "contact_sheet.png", "settings.json"]
    )
    recorded = json.loads((out / "settings.json").read_text())
    assert (recorded["preservation"], recorded["gate"]) == (None, [0.3, {"up": 0.6}])
    second = settings_of(out / names[1])
    assert (second["preservation"], second["gate"]) == (None, {"up": 0.6})


def test_without_a_calibration_the_gate_recorded_is_the_dial(tmp_path, tiny_models, arguments):
    out = tmp_path / "out.png"
    argv = ["generate", *arguments(tiny_models.adapter), "--preservation", "down=0.4", "--out", str(out)]
    assert main(argv) == 0
    assert (settings_of(out)["preservation"], settings_of(out)["gate"]) == ({"down": 0.4}, {"down": 0.4})
