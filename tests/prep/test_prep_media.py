"""`flexip prep images|videos|views` on media made in the test: the pairs, the skips and their reasons, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures import rows
from flexip.cli import main
from flexip.training.data import PairDataset, read_manifest
from prep_media import write_clips, write_masks, write_photos, write_views


def report(out: Path) -> dict[str, str]:
    """file name (relative to the test folder) -> problem kind."""
    return {Path(p["file"]).name: p["kind"] for p in rows(out.with_name(out.name + ".report.jsonl"))}


def load_every_pair(manifest: Path) -> None:
    """What training's dataset does with each pair: it must load every one without skipping."""
    pairs = read_manifest(manifest)
    dataset = PairDataset(pairs, resolution=16, seed=0, target_masks=True)
    for index in range(len(pairs)):
        assert dataset[(index, index)]["skipped"] == []


def test_images_give_one_invariant_pair_per_usable_distinct_photo(tmp_path, capsys):
    photos, masks = write_photos(tmp_path), write_masks(tmp_path)
    out = tmp_path / "data" / "images.jsonl"
    assert main(["prep", "images", str(photos), "--out", str(out), "--min-size", "16", "--masks", str(masks)]) == 0
    pairs = {row["source"]: row for row in rows(out)}
    # The first of the three copies of one picture is kept; odd modes are converted; broken files skipped.
    assert sorted(pairs) == ["cmyk.jpg", "grey16.png", "palette.gif", "plain.png", "rotated.jpg",
                             "sub/exact-copy.jpg", "transparent.png"]  # fmt: skip
    assert report(out) == {
        "original.jpg": "duplicate", "recompressed.jpg": "duplicate", "truncated.jpg": "damaged",
        "notes.md": "not-an-image", "empty.png": "not-an-image", "tiny.png": "too-small", "cmyk.png": "bad-mask",
    }  # fmt: skip
    assert all(row["modality"] == "image" and row["reference"] == row["target"] for row in pairs.values())
    # A plain photo is used where it is, with its mask and sidecar caption; the others are written upright.
    assert pairs["plain.png"]["target"] == "../photos/plain.png" and pairs["plain.png"]["mask"] == "../masks/plain.png"
    assert pairs["plain.png"]["caption"] == "a photo with its own caption"
    assert pairs["plain.png"]["caption_from"] == "sidecar" and pairs["cmyk.jpg"]["caption"] == ""
    with Image.open(out.parent / pairs["rotated.jpg"]["target"]) as upright:
        assert upright.size == (40, 64) and not upright.getexif().get(0x0112)
    with Image.open(out.parent / pairs["rotated.jpg"]["mask"]) as mask:  # the cut-out's alpha
        assert mask.mode == "L" and mask.size == (40, 64) and mask.getpixel((20, 30)) == 255 and mask.getpixel((0, 0)) == 0
    with Image.open(out.parent / pairs["grey16.png"]["target"]) as grey:
        assert grey.mode == "RGB" and np.asarray(grey).max() > 200  # scaled, not clipped to white
    assert "mask" not in pairs["cmyk.jpg"]
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert "13 photos -> 7 image pairs" in summary and "2 duplicate" in summary and "1 damaged" in summary
    load_every_pair(out)


def test_dedup_distance_is_the_test_and_minus_one_turns_it_off(tmp_path):
    photos = write_photos(tmp_path)
    exact = tmp_path / "exact.jsonl"
    main(["prep", "images", str(photos), "--out", str(exact), "--min-size", "16", "--dedup-distance", "0"])
    assert report(exact)["original.jpg"] == "duplicate" and "recompressed.jpg" not in report(exact)
    off = tmp_path / "off.jsonl"
    main(["prep", "images", str(photos), "--out", str(off), "--min-size", "16", "--dedup-distance", "-1"])
    assert len(rows(off)) == 9


def test_videos_pair_frames_of_one_shot_and_skip_broken_clips(tmp_path):
    clips = write_clips(tmp_path)
    out, frames = tmp_path / "data" / "videos.jsonl", tmp_path / "data" / "frames"
    args = ["prep", "videos", str(clips), "--out", str(out), "--frames-dir", str(frames), "--min-size", "16",
            "--min-gap", "0.5", "--max-pairs", "6"]  # fmt: skip
    assert main(args) == 0
    pairs = rows(out)
    assert {row["source"] for row in pairs} == {"cut.mp4", "steady.mp4"}
    assert report(out) == {"truncated.mp4": "damaged", "readme.mp4": "not-a-video"}
    for clip in ("cut.mp4", "steady.mp4"):
        own = [row for row in pairs if row["source"] == clip]
        assert len(own) == 6 and all(row["modality"] == "video" and row["kind"] == "frames" for row in own)
        assert all(row["times"][0] < row["times"][1] for row in own)
    # The cut at 2 s: no pair has one frame before it and one after; both shots give pairs.
    cut = [row["times"] for row in pairs if row["source"] == "cut.mp4"]
    assert all((a < 2.0) == (b < 2.0) for a, b in cut)
    assert any(b < 2.0 for a, b in cut) and any(a >= 2.0 for a, b in cut)
    # The farthest pairs of the steady clip first; only paired frames written; the sidecar is its caption.
    steady = [row for row in pairs if row["source"] == "steady.mp4"]
    assert steady[0]["times"] == [0.0, 3.5] and steady[0]["caption"].startswith("a white square")
    written = sorted(p.relative_to(out.parent).as_posix() for p in frames.rglob("*.jpg"))
    assert written == sorted({row[k] for row in pairs for k in ("reference", "target")})
    load_every_pair(out)


def test_a_steady_shot_gives_no_near_identical_pairs(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    from prep_media import encode_clip

    encode_clip(clips / "still.mp4", 2.0)  # the square moves, but at 64 bits every pair counts as identical
    out = tmp_path / "still.jsonl"
    args = ["prep", "videos", str(clips), "--out", str(out), "--frames-dir", str(tmp_path / "f"), "--min-size", "16",
            "--dedup-distance", "64"]  # fmt: skip
    assert main(args) == 0
    assert rows(out) == [] and report(out) == {"still.mp4": "no-pairs"}


def test_views_are_variant_pairs_of_different_views_of_one_object(tmp_path):
    views = write_views(tmp_path)
    out = tmp_path / "views.jsonl"
    assert main(["prep", "views", str(views), "--out", str(out), "--min-size", "16", "--max-pairs", "4"]) == 0
    pairs = rows(out)
    assert all(row["modality"] == "video" and row["kind"] == "views" for row in pairs)
    assert all(row["reference"] != row["target"] for row in pairs)
    mug = [(Path(r["reference"]).stem, Path(r["target"]).stem) for r in pairs if r["source"] == "mug"]
    assert mug == [("view0", "view1"), ("view1", "view2"), ("view2", "view0"), ("view0", "view2")]  # rounds
    assert len([r for r in pairs if r["source"] == "lamp"]) == 2
    assert report(out) == {"broken.png": "damaged", "single": "no-pairs"}
    load_every_pair(out)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prep", "images", "{tmp}/nowhere", "--out", "{tmp}/o.jsonl"], "does not exist"),
        (["prep", "images", "{tmp}/emptydir", "--out", "{tmp}/o.jsonl"], "holds no files"),
        (["prep", "images", "{tmp}/photos", "--out", "{tmp}/taken.jsonl"], "already exists"),
        (["prep", "images", "{tmp}/photos", "--out", "/proc/o.jsonl"], "cannot write"),
        (["prep", "images", "{tmp}/photos", "--out", "{tmp}/o.jsonl", "--rank", "2", "--world-size", "2"], "rank"),
        (["prep", "images", "{tmp}/photos", "--out", "{tmp}/o.jsonl", "--mask-model", "{tmp}/nowhere"], "--mask-model"),
        (["prep", "videos", "{tmp}/photos", "--out", "{tmp}/v.jsonl", "--frames-dir", "{tmp}/photos"],
         "itself"),
        (["prep", "caption", "{tmp}/taken.jsonl", "--in-place", "--model", "{tmp}/nowhere"], "--model"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_naming_it(tmp_path, capsys, args, message):
    write_photos(tmp_path)
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "taken.jsonl").write_text('{"reference": "a.png", "target": "a.png", "caption": "", "modality": "image"}\n')
    assert main([a.replace("{tmp}", str(tmp_path)) for a in args]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error, error
    assert (tmp_path / "taken.jsonl").read_text().count("\n") == 1  # untouched
