"""`flexip prep` at its edges: work bounded by what is kept, a resumed step is the same run, and every mistake
or damaged input is one line (or one skipped, counted item), never a traceback. Media are made in the test."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tarfile
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

import flexip.prep.progress
import flexip.prep.shards
from fixtures import rows
from flexip.cli import main
from flexip.prep.captions import Captioner
from flexip.prep.pictures import hamming
from flexip.prep.shards import shard_name
from prep_media import encode_clip, noise, write_clips, write_photos, write_views


def videos(clips: Path, out: Path, frames: Path, *extra: str) -> list[str]:
    return ["prep", "videos", str(clips), "--out", str(out), "--frames-dir", str(frames), "--min-size", "16",
            *extra]  # fmt: skip


def report(out: Path) -> list[dict]:
    path = out.with_name(out.name + ".report.jsonl")
    return rows(path) if path.exists() else []


@contextlib.contextmanager
def counting_calls(*functions):
    """Count the calls of Python functions by name, wherever imported (a profile hook matches their code)."""
    calls, codes = Counter(), {function.__code__ for function in functions}

    def hook(frame, event, arg):
        if event == "call" and frame.f_code in codes:
            calls[frame.f_code.co_name] += 1

    sys.setprofile(hook)
    try:
        yield calls
    finally:
        sys.setprofile(None)


# 1. Work grows with what is kept, not with an input's length or size.


def long_shot(tmp_path, monkeypatch, capsys):
    clips = tmp_path / "clips"
    clips.mkdir()
    encode_clip(clips / "long.mp4", 4.0, seed=1)  # one shot, 40 frames, every one sampled (--min-gap 0)
    out = tmp_path / "v.jsonl"
    args = videos(clips, out, tmp_path / "f", "--min-gap", "0", "--max-pairs", "2")

    def check(code, calls):
        assert code == 0 and calls["hamming"] < 40, calls  # all pairs of 40 frames would be 780 comparisons
        assert rows(out)[0]["times"] == [0.0, 3.9]  # still the farthest pair first

    return args, check


def many_views(tmp_path, monkeypatch, capsys):
    objects = tmp_path / "objects"
    (objects / "mug").mkdir(parents=True)
    for index in range(40):  # 38 near-identical views and two others
        noise(0 if index < 38 else index, 16, 16).save(objects / "mug" / f"view{index:02d}.png")
    out = tmp_path / "views.jsonl"
    args = ["prep", "views", str(objects), "--out", str(out), "--min-size", "8", "--max-pairs", "2"]

    def check(code, calls):
        assert code == 0 and calls["hamming"] < 200, calls  # all ordered pairs of 40 views would be 1560
        assert len(rows(out)) == 2

    return args, check


def wide_photo(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("flexip.prep.pictures.MAX_PIXELS", 500_000)
    photos = tmp_path / "photos"
    photos.mkdir()
    noise(0, 2000, 24).save(photos / "strip.png")  # 48 kP, padded to 4:1 it would be 2000 x 500 = 1 MP
    noise(1).save(photos / "plain.png")
    out = tmp_path / "images.jsonl"

    def check(code, calls):
        assert code == 0 and [row["source"] for row in rows(out)] == ["plain.png"]
        assert [p["kind"] for p in report(out)] == ["too-large"]

    return ["prep", "images", str(photos), "--out", str(out), "--min-size", "16"], check


def mask_bomb(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("flexip.prep.pictures.MAX_PIXELS", 10_000)
    photos, masks = tmp_path / "photos", tmp_path / "masks"
    photos.mkdir()
    masks.mkdir()
    noise(0).save(photos / "plain.png")
    Image.new("L", (400, 300), 255).save(masks / "plain.png")  # its header alone says it is too large
    out = tmp_path / "images.jsonl"

    def check(code, calls):
        assert code == 0 and len(rows(out)) == 1 and "mask" not in rows(out)[0]
        (problem,) = report(out)
        assert problem["kind"] == "bad-mask" and "pixels" in problem["reason"], problem

    args = ["prep", "images", str(photos), "--out", str(out), "--min-size", "16", "--masks", str(masks)]
    return args, check


def large_frames(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("flexip.prep.pictures.MAX_PIXELS", 1000)
    clips = tmp_path / "clips"
    clips.mkdir()
    encode_clip(clips / "big.mp4", 2.0)  # 64 x 64 frames: over the (lowered) limit
    out = tmp_path / "v.jsonl"

    def check(code, calls):
        assert code == 0 and rows(out) == [] and [p["kind"] for p in report(out)] == ["too-large"]

    return videos(clips, out, tmp_path / "f"), check


def large_targets(tmp_path, monkeypatch, capsys):
    """Captions of 4 MP photos: the captioner gets them at the most its processor could use, not whole."""
    from test_prep_models import save_tiny_qwen2_vl

    model = save_tiny_qwen2_vl(tmp_path / "qwen")
    noise(0, 2400, 1800).save(tmp_path / "big.png")
    manifest = tmp_path / "m.jsonl"
    pair = {"reference": "big.png", "target": "big.png", "caption": "", "modality": "image"}
    manifest.write_text(json.dumps(pair) + "\n")
    sizes, caption = [], Captioner.__call__

    def recorded(self, images):
        sizes.extend(image.size for image in images)
        return caption(self, images)

    monkeypatch.setattr(Captioner, "__call__", recorded)

    def check(code, calls):
        assert code == 0 and sizes and max(max(size) for size in sizes) <= 2 * 448, sizes

    args = ["prep", "caption", str(manifest), "--out", str(tmp_path / "c.jsonl"), "--model", str(model)]
    return args, check


def edited_plan(tmp_path, monkeypatch, capsys):
    """`prep check` of shards whose shards.json plans 200000: it looks at the shards that are there."""
    folder = tmp_path / "shards"
    folder.mkdir()
    with tarfile.open(folder / "000000.tar", "w"):
        pass
    (folder / "shards.json").write_text(json.dumps({"shards": 200_000}))

    def check(code, calls):
        assert code == 1 and calls["shard_name"] < 100, calls
        assert "199999 of 200000 planned shards missing, e.g. 000001.tar" in capsys.readouterr().out

    return ["prep", "check", str(folder)], check


@pytest.mark.parametrize(
    "case", [long_shot, many_views, wide_photo, mask_bomb, large_frames, large_targets, edited_plan]
)
def test_work_is_bounded_by_what_is_kept(tmp_path, monkeypatch, capsys, case):
    args, check = case(tmp_path, monkeypatch, capsys)
    with counting_calls(hamming, shard_name) as calls:
        code = main(args)
    check(code, calls)


def test_only_regular_files_are_input(tmp_path):
    """A named pipe in a photo folder would block its reader forever."""
    import os

    from flexip.prep.folders import scan_files

    noise(0).save(tmp_path / "a.png")
    os.mkfifo(tmp_path / "pipe.png")
    assert scan_files(tmp_path) == ["a.png"]


# 2. A resumed step is the same run; its outputs inside its input folder are never its input.


class Interrupted(flexip.prep.progress.tqdm):
    """A progress bar whose first update is a Ctrl-C: the step stops after its first item (or shard)."""

    def update(self, n=1):
        raise KeyboardInterrupt


def prepared(tmp_path: Path) -> None:
    photos, objects = write_photos(tmp_path), write_views(tmp_path)
    write_clips(tmp_path)
    shutil.copytree(photos, tmp_path / "photos2")
    manifest = tmp_path / "views.jsonl"
    assert main(["prep", "views", str(objects), "--out", str(manifest), "--min-size", "16"]) == 0
    with_columns = [{**row, "alt": "a", "alt2": "b"} for row in rows(manifest)]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in with_columns))


@pytest.mark.parametrize(
    ("args", "flag", "first", "second"),
    [
        (["images", "{tmp}/photos", "--out", "{tmp}/o.jsonl", "--min-size"], "--min-size", "16", "17"),
        (["images", "{tmp}/photos", "--out", "{tmp}/o.jsonl", "--min-size", "16", "--dedup-distance"],
         "--dedup-distance", "4", "0"),
        (["images", "--out", "{tmp}/o.jsonl", "--min-size", "16"], "FOLDER", "{tmp}/photos", "{tmp}/photos2"),
        (["videos", "{tmp}/clips", "--out", "{tmp}/o.jsonl", "--frames-dir", "{tmp}/f", "--min-size", "16",
          "--min-gap"], "--min-gap", "0.5", "1.0"),
        (["videos", "{tmp}/clips", "--out", "{tmp}/o.jsonl", "--frames-dir", "{tmp}/f", "--min-size", "16",
          "--cut-threshold"], "--cut-threshold", "0.5", "0.25"),
        (["views", "{tmp}/objects", "--out", "{tmp}/o.jsonl", "--min-size", "16", "--max-pairs"],
         "--max-pairs", "4", "2"),
        (["caption", "{tmp}/views.jsonl", "--out", "{tmp}/o.jsonl", "--from-column"], "--from-column", "alt",
         "alt2"),
        (["shards", "{tmp}/views.jsonl", "--out", "{tmp}/shards", "--shard-size"], "--shard-size", "2", "3"),
    ],
)  # fmt: skip
def test_a_resumed_step_refuses_other_settings(tmp_path, monkeypatch, capsys, args, flag, first, second):
    prepared(tmp_path)

    def step(value: str) -> int:
        value = value.replace("{tmp}", str(tmp_path))
        argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
        return main(["prep", *argv, value] if flag != "FOLDER" else ["prep", argv[0], value, *argv[1:]])

    monkeypatch.setattr(flexip.prep.progress, "tqdm", Interrupted)
    monkeypatch.setattr(flexip.prep.shards, "tqdm", Interrupted)
    assert step(first) == 130
    monkeypatch.undo()
    capsys.readouterr()
    assert step(second) == 2
    error = capsys.readouterr().err.strip()
    name = "input folder" if flag == "FOLDER" else flag
    old, new = (v.replace("{tmp}", str(tmp_path)) for v in (first, second))
    assert len(error.splitlines()) == 1 and f"{name} {new}" in error and f"{name} {old}" in error, error
    assert "--overwrite" in error
    assert step(first) == 0  # the same settings resume it


def test_a_relaunched_part_refuses_other_settings(tmp_path, monkeypatch, capsys):
    """A launched part that finished is kept for rank 0 to merge; a relaunch under other settings must not."""
    objects = write_views(tmp_path)
    out = tmp_path / "views.jsonl"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")

    def views(max_pairs: str) -> int:
        args = ["views", str(objects), "--out", str(out), "--min-size", "16", "--max-pairs", max_pairs]
        return main(["prep", *args])

    assert views("4") == 0
    capsys.readouterr()
    assert views("2") == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--max-pairs 2" in error and "--max-pairs 4" in error, error
    assert views("4") == 0 and "(2 done by an earlier run)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "out"),
    [
        (["images", "{tmp}/photos", "--out", "{tmp}/photos/m.jsonl", "--min-size", "16"], "photos/m.jsonl"),
        (["videos", "{tmp}/clips", "--out", "{tmp}/clips/m.jsonl", "--frames-dir", "{tmp}/clips/frames",
          "--min-size", "16", "--min-gap", "0.5"], "clips/m.jsonl"),
        (["views", "{tmp}/objects", "--out", "{tmp}/objects/m.jsonl", "--min-size", "16"], "objects/m.jsonl"),
    ],
)  # fmt: skip
def test_outputs_inside_the_input_folder_are_never_read_back(tmp_path, monkeypatch, args, out):
    write_photos(tmp_path), write_clips(tmp_path), write_views(tmp_path)
    argv = ["prep", *[a.replace("{tmp}", str(tmp_path)) for a in args]]
    outside = tmp_path / "outside" / "m.jsonl"
    elsewhere = [str(outside) if a.endswith("m.jsonl") else a for a in argv]
    elsewhere = [str(tmp_path / "outside" / "frames") if a.endswith("/frames") else a for a in elsewhere]
    assert main(elsewhere) == 0
    expected = (len(rows(outside)), sorted(Path(p["file"]).name for p in report(outside)))
    monkeypatch.setattr(flexip.prep.progress, "tqdm", Interrupted)
    assert main(argv) == 130  # its progress file is now in the input folder
    monkeypatch.undo()
    out = tmp_path / out
    for extra in ([], ["--overwrite"]):  # resumed, then again over its finished manifest and report
        assert main([*argv, *extra]) == 0
        assert (len(rows(out)), sorted(Path(p["file"]).name for p in report(out))) == expected


# 3. A mistake is one line naming it (exit 2); a damaged input is skipped and counted, or reported: no crash.


VIDEOS = ["videos", "{tmp}/clips", "--out", "{out}"]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["images", "{tmp}/photos", "--out", "{out}", "--min-size", "-1"], {}, "--min-size -1"),
        (["images", "{tmp}/photos", "--out", "{out}", "--min-size", "-1", "--mask-model", "{tmp}/none"], {},
         "--min-size -1"),
        (["images", "{tmp}/photos", "--out", "{out}", "--dedup-distance", "65"], {}, "--dedup-distance 65"),
        (["images", "{tmp}/photos", "--out", "{out}", "--dedup-distance", "-2"], {}, "--dedup-distance -2"),
        (["views", "{tmp}/objects", "--out", "{out}", "--dedup-distance", "1000000000"], {},
         "--dedup-distance 1000000000"),
        ([*VIDEOS, "--frames-dir", "{tmp}/f", "--min-gap", "nan"], {}, "--min-gap nan"),
        ([*VIDEOS, "--frames-dir", "{tmp}/f", "--min-gap", "-0.5"], {}, "--min-gap -0.5"),
        ([*VIDEOS, "--frames-dir", "{tmp}/f", "--min-gap", "inf"], {}, "--min-gap inf"),
        ([*VIDEOS, "--frames-dir", "{tmp}/f", "--cut-threshold", "nan"], {}, "--cut-threshold nan"),
        ([*VIDEOS, "--frames-dir", "{tmp}/f", "--cut-threshold", "1.5"], {}, "--cut-threshold 1.5"),
        ([*VIDEOS, "--frames-dir", "{tmp}/a-file"], {}, "--frames-dir"),
        (["caption", "{tmp}/views.jsonl", "--out", "{out}", "--model", "{tmp}/none", "--batch-size", "0"], {},
         "--batch-size 0"),
        (["shards", "{tmp}/views.jsonl", "--out", "{tmp}/damaged-shards"], {}, "shards.json"),
        (["shards", "{tmp}/views.jsonl", "{tmp}/./views.jsonl", "--out", "{tmp}/shards"], {}, "views.jsonl"),
        (["views", "{tmp}/objects", "--out", "{out}"], {"RANK": "5", "WORLD_SIZE": "2"}, "RANK 5"),
        (["images", "{tmp}/photos", "--out", "{tmp}/damaged.jsonl"], {}, "damaged.jsonl.progress.jsonl"),
        (["images", "{tmp}/photos", "--out", "{out}", "--masks", "{tmp}/photos/"], {}, "--masks"),
        ([*VIDEOS, "--frames-dir", "{tmp}/clips", "--overwrite"], {}, "--frames-dir"),
    ],
)  # fmt: skip
def test_a_mistake_is_one_line_naming_it(tmp_path, monkeypatch, capsys, args, env, message):
    write_photos(tmp_path), write_clips(tmp_path), write_views(tmp_path)
    (tmp_path / "a-file").write_text("not a folder")
    pair = {"reference": "objects/mug/view0.png", "target": "objects/mug/view1.png", "caption": "",
            "modality": "video"}  # fmt: skip
    (tmp_path / "views.jsonl").write_text(json.dumps(pair) + "\n")
    (tmp_path / "damaged-shards").mkdir()
    (tmp_path / "damaged-shards" / "shards.json").write_text('{"format": "flexip-sh')
    (tmp_path / "damaged.jsonl.progress.jsonl").write_text('{"settings": {}}\n{"key": "plain.png", "ro\n{}\n')
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "out.jsonl"
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{out}", str(out)) for a in args]
    assert main(["prep", *argv]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error, error
    assert not out.exists()


def shards_index(text: str):
    def make(tmp_path):
        folder = tmp_path / "shards"
        folder.mkdir()
        noise(0).save(tmp_path / "a.png")
        with tarfile.open(folder / "000000.tar", "w") as tar:
            tar.add(tmp_path / "a.png", "000000000.target.png")
        (folder / "shards.json").write_text(text)
        return ["prep", "check", str(folder)], 1, "shards.json"

    return make


def sample_json(text: bytes | None):
    """A shard whose sample's json is `text`, or a folder where the json should be (None)."""

    def make(tmp_path):
        folder = tmp_path / "shards"
        folder.mkdir()
        noise(0).save(tmp_path / "a.png")
        if text is None:
            (tmp_path / "a.json").mkdir()
        else:
            (tmp_path / "a.json").write_bytes(text)
        with tarfile.open(folder / "000000.tar", "w") as tar:
            tar.add(tmp_path / "a.png", "000000000.target.png")
            tar.add(tmp_path / "a.json", "000000000.json")
        return ["prep", "check", str(folder)], 1, "000000.tar:000000000"

    return make


def manifest_kind(tmp_path):
    noise(0).save(tmp_path / "a.png")
    manifest = tmp_path / "m.jsonl"
    pair = {"reference": "a.png", "target": "a.png", "caption": "", "modality": "image", "kind": ["x"]}
    manifest.write_text(json.dumps(pair) + "\n")
    return ["prep", "check", str(manifest)], 0, "1 pairs"


def clip_metadata(tmp_path):
    """A clip whose title tag is not UTF-8 (damaged): skipped and counted, the run goes on."""
    clips = tmp_path / "clips"
    clips.mkdir()
    encode_clip(clips / "good.mp4", 2.0)
    with av.open(str(clips / "tag.mp4"), "w") as container:
        container.metadata["title"] = "FLEXIPTAG"
        stream = container.add_stream("mpeg4", rate=10)
        stream.width = stream.height = 64
        for index in range(10):
            frame = np.full((64, 64, 3), index * 20, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = (clips / "tag.mp4").read_bytes()
    (clips / "tag.mp4").write_bytes(data.replace(b"FLEXIPTAG", b"FLEXI\xca\x01AG"))
    out = tmp_path / "v.jsonl"
    return videos(clips, out, tmp_path / "f"), 0, "2 clips -> "


@pytest.mark.parametrize(
    "case",
    [
        shards_index("{broken"),
        shards_index("[1]"),
        shards_index('{"shards": "x"}'),
        sample_json(b"[1, 2]"),
        sample_json(b'"text"'),
        sample_json(None),
        manifest_kind,
        clip_metadata,
    ],
)
def test_a_damaged_input_is_reported_not_a_traceback(tmp_path, capsys, case):
    args, code, message = case(tmp_path)
    assert main(args) == code
    assert message in capsys.readouterr().out
