"""A clip's writers: an .mp4 PyAV reads back frame by frame, a looping .gif, a folder of PNG frames, each with
the settings that made it; odd sizes, the encoder's fallback and a missing PyAV."""

from __future__ import annotations

import json
import sys

import av
import numpy as np
import pytest
from PIL import Image

from fixtures import settings_of
from flexip.errors import FlexIPError
from flexip.pipeline import clips
from flexip.pipeline.clips import clip_name, mp4_codec, save_clip

SETTINGS = {"prompt": "a dog running", "preservation": {"start": 0.9, "end": 0.3, "shape": "linear", "over": "frames"}}


def frames(count: int = 5, size: tuple[int, int] = (40, 32)) -> list[Image.Image]:
    """Frames that differ from each other: a bright bar moving right on a grey ground."""
    result = []
    for index in range(count):
        pixels = np.full((size[1], size[0], 3), 90, np.uint8)
        pixels[:, index * 6 : index * 6 + 6] = (250, 200, 40)
        result.append(Image.fromarray(pixels))
    return result


def test_an_mp4_reads_back_with_its_frames_size_and_settings(tmp_path):
    path = tmp_path / "clip.mp4"
    save_clip(frames(5), path, SETTINGS, fps=8, clip_format="mp4")
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        assert stream.codec_context.name == mp4_codec() and stream.average_rate == 8  # H.264 where PyAV has it
        recorded = json.loads(container.metadata["comment"])
    assert len(decoded) == 5 and decoded[0].shape == (32, 40, 3)
    assert recorded == {**SETTINGS, "frames": 5, "fps": 8}
    bar = decoded[2][:, 12:18].mean(axis=(0, 1))  # the frames keep their order and content, up to compression
    assert bar[0] > 200 and decoded[2][:, 30:].mean() < 120


def test_an_odd_sized_mp4_gains_one_edge_row_and_column(tmp_path):
    half = np.zeros((31, 33, 3), np.uint8)
    half[:, 16:] = 255  # black, then white from column 16: still there, not resampled to the new width
    path = tmp_path / "odd.mp4"
    save_clip([Image.fromarray(half)] * 2, path, SETTINGS, fps=4, clip_format="mp4")
    with av.open(str(path)) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert first.shape == (32, 34, 3)
    assert first[:, 15].mean() < 40 and first[:, 16].mean() > 215 and first[31, 33].mean() > 215


def test_mpeg4_stands_in_where_pyav_has_no_h264_encoder(tmp_path, monkeypatch):
    monkeypatch.setattr(clips, "MP4_CODECS", ("no-such-codec", "mpeg4"))
    save_clip(frames(3), tmp_path / "clip.mp4", SETTINGS, fps=8, clip_format="mp4")
    with av.open(str(tmp_path / "clip.mp4")) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"
        assert len(list(container.decode(video=0))) == 3


def test_without_pyav_an_mp4_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # find_spec answers None, as where PyAV is not installed
    with pytest.raises(FlexIPError, match=r"pip install 'flexip\[prep\]'"):
        mp4_codec()


def test_a_gif_loops_with_every_frame_and_its_settings(tmp_path):
    path = tmp_path / "clip.gif"
    save_clip(frames(4), path, SETTINGS, fps=10, clip_format="gif")
    with Image.open(path) as gif:
        assert (gif.n_frames, gif.size, gif.info["loop"], gif.info["duration"]) == (4, (40, 32), 0, 100)
        assert json.loads(gif.info["comment"]) == {**SETTINGS, "frames": 4, "fps": 10}


def test_a_folder_holds_one_png_per_frame_each_with_the_settings(tmp_path):
    path = tmp_path / "clip"
    save_clip(frames(3), path, SETTINGS, fps=8, clip_format="png")
    assert sorted(p.name for p in path.iterdir()) == ["frame_000.png", "frame_001.png", "frame_002.png"]
    assert settings_of(path / "frame_001.png") == {**SETTINGS, "frames": 3, "fps": 8, "frame": 1}
    with Image.open(path / "frame_002.png") as frame:
        assert np.array_equal(np.asarray(frame), np.asarray(frames(3)[2]))  # lossless


def test_a_folder_holds_one_clip_and_nothing_else_is_touched(tmp_path):
    path = tmp_path / "clip"
    save_clip(frames(3), path, SETTINGS, fps=8, clip_format="png")
    (path / "notes.txt").write_text("mine")
    (path / "frame_notes.png").write_bytes(b"mine too")
    save_clip(frames(2), path, SETTINGS, fps=8, clip_format="png")  # a shorter clip replaces the longer one
    assert sorted(p.name for p in path.iterdir()) == ["frame_000.png", "frame_001.png", "frame_notes.png", "notes.txt"]
    assert settings_of(path / "frame_001.png")["frames"] == 2


def test_a_sweeps_clips_are_named_as_its_images():
    assert clip_name("00_preservation-0.50.png", "mp4") == "00_preservation-0.50.mp4"
    assert clip_name("01_gate-0.9-0.3.png", "gif") == "01_gate-0.9-0.3.gif"
    assert clip_name("02_preservation-1.00.png", "png") == "02_preservation-1.00"
