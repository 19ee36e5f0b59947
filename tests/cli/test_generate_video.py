"""`flexip generate` and `sweep` with a motion adapter, in-process on the tiny kit: clips PyAV and Pillow read
back with their frames, size and settings; the sweep's clips in dial order with a sheet of their frames; the
learned gates named; nothing replaced without --overwrite."""

from __future__ import annotations

import json
import sys

import av
import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image

from fixtures import picture, pixels, settings_of
from flexip.cli import main
from flexip.cli.clips import starting_points_note
from flexip.models.learned_gate import learned_points
from flexip.pipeline.front_end import load_pipeline
from flexip.settings.generation import ModelSettings

FRAMES_OVER_CLIP = {"start": 0.9, "end": 0.3, "shape": "linear", "over": "frames"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("reference") / "dog.png"
    picture(0).save(path)
    return path


@pytest.fixture
def clip_args(tiny_models, reference):
    return ["--reference", str(reference), "--prompt", "a dog running", "--adapter", str(tiny_models.adapter),
            "--motion-adapter", str(tiny_models.motion_adapter), "--steps", "2", "--device", "cpu"]  # fmt: skip


def test_generate_writes_an_mp4_that_pyav_reads_back(tmp_path, clip_args, tiny_models, capsys):
    out = tmp_path / "dog.mp4"
    argv = ["generate", *clip_args, "--frames", "3", "--fps", "6", "--preservation", "0.9:0.3", "--dial-over",
            "frames", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    with av.open(str(out)) as container:
        decoded = list(container.decode(video=0))
        settings = json.loads(container.metadata["comment"])
    assert len(decoded) == 3 and (decoded[0].width, decoded[0].height) == (32, 32)  # the tiny base's side
    assert settings["frames"] == 3 and settings["fps"] == 6 and settings["steps"] == 2
    assert settings["preservation"] == settings["gate"] == FRAMES_OVER_CLIP
    assert settings["motion_adapter"] == str(tiny_models.motion_adapter)
    assert set(settings["learned_gate"]) == {"image", "video"}
    captured = capsys.readouterr()
    assert f"wrote {out}" in captured.out
    assert "note: this adapter learned g = 0.20 on video frames and 0.80 on still images" in captured.err

    before = out.read_bytes()
    assert main(argv) == 2  # never replaced without --overwrite
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == before


def test_a_sweeps_clips_are_its_values_in_dial_order_with_a_sheet_of_their_frames(tmp_path, clip_args):
    single = tmp_path / "single"  # a clip as a folder of PNGs
    assert main(["generate", *clip_args, "--frames", "2", "--preservation", "1", "--out", str(single)]) == 0
    assert sorted(path.name for path in single.iterdir()) == ["frame_000.png", "frame_001.png"]
    recorded = settings_of(single / "frame_001.png")
    assert (recorded["frame"], recorded["frames"], recorded["fps"], recorded["preservation"]) == (1, 2, 8, 1.0)

    out = tmp_path / "sweep"
    argv = ["sweep", *clip_args, "--frames", "2", "--preservation", "0,1", "--clip-format", "png", "--out", str(out)]
    assert main(argv) == 0
    clips = ["00_preservation-0.00", "01_preservation-1.00"]
    assert sorted(path.name for path in out.iterdir()) == sorted([*clips, "contact_sheet.png", "settings.json"])
    for frame in ("frame_000.png", "frame_001.png"):  # the second clip is the value 1, as generated alone
        assert np.array_equal(pixels(out / clips[1] / frame), pixels(single / frame))
    assert not np.array_equal(pixels(out / clips[0] / "frame_000.png"), pixels(single / "frame_000.png"))
    settings = json.loads((out / "settings.json").read_text())
    assert settings["preservation"] == [0.0, 1.0] and settings["frames"] == 2
    with Image.open(out / "contact_sheet.png") as sheet:  # two rows of the reference and two frames
        assert sheet.width == 8 + 3 * (128 + 8) and sheet.height > 2 * 128


def test_a_sweep_writes_gifs(tmp_path, clip_args):
    out = tmp_path / "gifs"
    assert main(["sweep", *clip_args, "--frames", "2", "--preservation", "0.2,0.8", "--clip-format", "gif",
                 "--out", str(out)]) == 0  # fmt: skip
    for name in ("00_preservation-0.20.gif", "01_preservation-0.80.gif"):
        with Image.open(out / name) as gif:
            assert gif.n_frames == 2 and json.loads(gif.info["comment"])["frames"] == 2


def test_an_mp4_without_pyav_is_one_line_before_any_model_loads(tmp_path, clip_args, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "av", None)  # find_spec answers None, as where PyAV is not installed
    assert main(["generate", *clip_args, "--frames", "2", "--out", str(tmp_path / "dog.mp4")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "pip install 'flexip[prep]'" in lines[0]
    assert not (tmp_path / "dog.mp4").exists()


def test_on_a_calibrated_adapter_the_note_names_the_dial_values_of_the_learned_gates(calibrated_adapter):
    note = starting_points_note(learned_points(calibrated_adapter))
    assert note.startswith("this adapter learned g = 0.20 on video frames and 0.80 on still images (preservation ")
    assert "on its calibrated dial): suggested starting points for --preservation" in note


def test_an_sdxl_adapter_makes_its_clip_on_animatediff_sdxl_with_the_bases_added_conditioning(
    tmp_path, tiny_xl_models, reference
):
    out = tmp_path / "xl.gif"
    argv = ["generate", "--reference", str(reference), "--prompt", "a dog running", "--adapter",
            str(tiny_xl_models.adapter), "--motion-adapter", str(tiny_xl_models.motion_adapter), "--frames", "2",
            "--steps", "1", "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    with Image.open(out) as gif:
        assert gif.n_frames == 2 and json.loads(gif.info["comment"])["frames"] == 2

    # diffusers' motion UNet leaves SDXL's added-conditioning embedding freshly drawn; the front end copies the
    # base's own into it.
    settings = ModelSettings(adapter=str(tiny_xl_models.adapter), motion_adapter=str(tiny_xl_models.motion_adapter),
                             device="cpu")  # fmt: skip
    pipe = load_pipeline(settings).pipe
    base = UNet2DConditionModel.from_pretrained(tiny_xl_models.base / "unet")
    assert type(pipe).__name__ == "AnimateDiffSDXLPipeline"
    for name, value in base.add_embedding.state_dict().items():
        assert torch.equal(pipe.unet.add_embedding.state_dict()[name], value), name
