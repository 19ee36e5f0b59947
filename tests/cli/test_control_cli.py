"""The dial's forms, several references and masks from the command line, on the tiny model set (the dial's text
forms themselves: test_settings_dial.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fixtures import pixels, settings_of
from flexip import DialSchedule
from flexip.cli import main
from flexip.pipeline.front_end import generate, load_pipeline
from flexip.settings.dial import Dial, dials
from flexip.settings.generation import ModelSettings, SamplingSettings

STEPS = "2"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("subjects")
    generator = np.random.default_rng(0)
    paths = {}
    for name in ("dog", "cat"):
        paths[name] = folder / f"{name}.png"
        Image.fromarray(generator.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(paths[name])
    left = Image.new("L", (32, 32), 0)
    left.paste(255, (0, 0, 16, 32))
    paths["left"], paths["right"] = folder / "left.png", folder / "right.png"
    left.save(paths["left"])
    Image.eval(left, lambda value: 255 - value).save(paths["right"])
    return paths


@pytest.fixture
def model_args(tiny_models):
    return ["--base", str(tiny_models.base), "--adapter", str(tiny_models.adapter), "--steps", STEPS, "--seed", "5"]


@pytest.mark.parametrize(
    "flag, recorded",
    [
        ("down=0.9,mid=0.6,up=0.3", {"down": 0.9, "mid": 0.6, "up": 0.3}),
        ("0.9:0.3", {"start": 0.9, "end": 0.3, "shape": "linear"}),
        ("0.4", 0.4),
    ],
)
def test_generate_records_the_form_and_the_record_makes_the_same_image(tmp_path, files, model_args, tiny_models,
                                                                        flag, recorded):  # fmt: skip
    out = tmp_path / "out.png"
    argv = ["generate", "--reference", str(files["dog"]), "--prompt", "a dog", "--preservation", flag, "--out", str(out)]
    assert main([*argv, *model_args, "--scale", "down=1,mid=1,up=0.8"]) == 0
    settings = settings_of(out)
    assert settings["preservation"] == recorded and settings["scale"] == {"down": 1.0, "mid": 1.0, "up": 0.8}
    # the settings alone reproduce the image
    loaded = load_pipeline(ModelSettings(adapter=settings["adapter"], base=settings["base"], scheduler=settings["scheduler"]))
    sampling = SamplingSettings(steps=settings["steps"], guidance=settings["guidance"], seed=settings["seed"],
                                scale=settings["scale"], negative_prompt=settings["negative_prompt"])  # fmt: skip
    again = generate(loaded, settings["prompt"], Image.open(settings["reference"]).convert("RGB"),
                     [Dial.from_record(settings["preservation"])], sampling)[0]  # fmt: skip
    assert np.array_equal(np.asarray(again), pixels(out))


def test_several_references_and_masks_round_trip(tmp_path, files, model_args):
    mixed, masked = tmp_path / "mixed.png", tmp_path / "masked.png"
    common = ["--prompt", "a dog and a cat", *model_args]
    assert main(["generate", "--reference", str(files["dog"]), "--reference", str(files["cat"]),
                 "--reference-weights", "0.7,0.3", "--out", str(mixed), *common]) == 0  # fmt: skip
    assert settings_of(mixed)["reference"] == [str(files["dog"]), str(files["cat"])]
    assert settings_of(mixed)["reference_weights"] == [0.7, 0.3]
    assert main(["generate", "--reference", str(files["dog"]), "--mask", str(files["left"]), "--reference",
                 str(files["cat"]), "--mask", str(files["right"]), "--out", str(masked), *common]) == 0  # fmt: skip
    assert settings_of(masked)["reference_masks"] == [str(files["left"]), str(files["right"])]
    assert "reference_weights" not in settings_of(masked)
    assert np.abs(pixels(mixed).astype(int) - pixels(masked)).max() > 0


def test_a_sweep_of_forms_names_and_records_each_value(tmp_path, files, model_args):
    out = tmp_path / "sweep"
    argv = ["sweep", "--reference", str(files["dog"]), "--prompt", "a dog", "--out", str(out),
            "--preservation", "down=0.9,up=0.3;0.9:0.3;0.5"]  # fmt: skip
    assert main([*argv, *model_args]) == 0
    names = ["00_preservation-down-0.9-up-0.3.png", "01_preservation-0.9-0.3.png", "02_preservation-0.50.png"]
    assert sorted(path.name for path in out.iterdir()) == sorted([*names, "contact_sheet.png", "settings.json"])
    assert settings_of(out / names[1])["preservation"] == {"start": 0.9, "end": 0.3, "shape": "linear"}
    recorded = json.loads((out / "settings.json").read_text())["preservation"]
    assert [Dial.from_record(record) for record in recorded] == dials(
        [{"down": 0.9, "up": 0.3}, DialSchedule(0.9, 0.3), 0.5]
    )


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--preservation", "dwn=0.5"], "unknown block 'dwn'"),
        (["--preservation", "1.2:0"], "DialSchedule start=1.2 is outside [0, 1]"),
        (["--preservation", "0.9:0.3,0.6"], "flexip sweep"),
        (["--preservation", "up.block_7=0.5"], "--preservation['up']: 'block_7' is not a block"),
        (["--reference-weights", "1,2"], "2 weights for 1 --reference"),
        (["--reference-weights", "a"], "--reference-weights a"),
        (["--mask", "left", "--mask", "right"], "2 --mask for 1 --reference"),
        (["--mask", "missing.png"], "--mask missing.png"),
        (["--scale", "up=20"], "--scale['up']=20.0 is outside [0, 10]"),
    ],
)
def test_mistakes_are_one_line_with_exit_code_2(tmp_path, files, model_args, capsys, extra, named):
    extra = [str(files[word]) if word in files else word for word in extra]
    argv = ["generate", "--reference", str(files["dog"]), "--prompt", "a dog", "--out", str(tmp_path / "o.png")]
    assert main([*argv, *model_args, *extra]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in captured.err, captured.err
