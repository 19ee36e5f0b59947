"""Runs that stop and continue, and inputs split between machines or launched processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import flexip.prep.images
from flexip.cli import main
from prep_media import write_clips, write_photos


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def images(photos: Path, out: Path, *extra: str) -> int:
    return main(["prep", "images", str(photos), "--out", str(out), "--min-size", "16", *extra])


def test_an_interrupted_run_continues_where_it_stopped(tmp_path, monkeypatch, capsys):
    photos = write_photos(tmp_path)
    whole = tmp_path / "whole" / "images.jsonl"  # the same name: the rows name the `<stem>-files` folder
    images(photos, whole)
    out = tmp_path / "run" / "images.jsonl"
    calls, original = [], flexip.prep.images.open_picture

    def interrupted(path, min_size):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return original(path, min_size)

    monkeypatch.setattr(flexip.prep.images, "open_picture", interrupted)
    assert images(photos, out) == 130
    progress = tmp_path / "run" / "images.jsonl.progress.jsonl"
    assert not out.exists() and len(lines(progress)) == 5  # nothing half-written; settings, four photos done
    with open(progress, "a") as file:
        file.write('{"key": "sub/exact-co')  # a line cut short by a crash
    monkeypatch.setattr(flexip.prep.images, "open_picture", original)
    calls.clear()
    assert images(photos, out) == 0
    assert "(4 done by an earlier run)" in capsys.readouterr().out
    assert out.read_text() == whole.read_text() and not progress.exists()
    assert lines(out.with_name("images.jsonl.report.jsonl")) == lines(whole.with_name("images.jsonl.report.jsonl"))
    # Finished: a second run refuses to replace it, unless told to.
    assert images(photos, out) == 2
    assert images(photos, out, "--overwrite") == 0 and out.read_text() == whole.read_text()


@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_and_world_size_cover_the_input_exactly_once(tmp_path, world_size):
    photos = write_photos(tmp_path)
    images(photos, tmp_path / "whole.jsonl", "--dedup-distance", "-1")
    whole = [json.loads(line)["source"] for line in lines(tmp_path / "whole.jsonl")]
    parts = []
    for rank in range(world_size):
        out = tmp_path / f"part{rank}.jsonl"
        assert images(photos, out, "--dedup-distance", "-1", "--rank", str(rank), "--world-size", str(world_size)) == 0
        parts.append([json.loads(line)["source"] for line in lines(out)])
    assert all(parts) and sum(parts, []) == whole  # disjoint, contiguous, in order


def test_launched_processes_write_parts_and_rank_zero_merges(tmp_path, monkeypatch, capsys):
    clips = write_clips(tmp_path)

    def videos(out: Path) -> int:
        return main(["prep", "videos", str(clips), "--out", str(out), "--frames-dir", str(tmp_path / "frames"),
                     "--min-size", "16", "--min-gap", "0.5"])  # fmt: skip

    assert videos(tmp_path / "single.jsonl") == 0
    out = tmp_path / "launched.jsonl"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr("flexip.prep.split.POLL_SECONDS", 0.01)
    # The frames of the single run are there: a launched run needs its own frames folder, as any fresh run.
    assert videos(out) == 2 and "already holds frames" in capsys.readouterr().err
    tmp_path.joinpath("frames").rename(tmp_path / "single-frames")
    assert videos(out) == 0
    assert (tmp_path / "launched.jsonl.part-1-of-2").exists() and not out.exists()
    assert "rank 0 merges" in capsys.readouterr().out
    monkeypatch.setenv("RANK", "0")
    assert videos(out) == 0
    assert lines(out) == lines(tmp_path / "single.jsonl")
    assert lines(tmp_path / "launched.jsonl.report.jsonl") == lines(tmp_path / "single.jsonl.report.jsonl")
    assert not list(tmp_path.glob("launched.jsonl.part-*"))


def test_rank_zero_gives_up_when_a_peer_stops(tmp_path, monkeypatch, capsys):
    photos = write_photos(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr("flexip.prep.split.STALL_SECONDS", 0.05)
    monkeypatch.setattr("flexip.prep.split.POLL_SECONDS", 0.01)
    assert images(photos, tmp_path / "images.jsonl") == 2
    assert "part-1-of-2" in capsys.readouterr().err
    # Its own part is safe: the relaunch only waits for the missing one.
    assert json.loads(lines(tmp_path / "images.jsonl.part-0-of-2")[0])["modality"] == "image"
