"""`flexip prep shards` and `prep check`, and prepared manifests training in `flexip train`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import webdataset

from fixtures import rows
from flexip.cli import main
from prep_media import write_clips, write_photos

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "train" / "tiny.yaml"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """data/images.jsonl and data/videos.jsonl prepared from generated media."""
    root = tmp_path_factory.mktemp("prepared")
    data = root / "data"
    main(["prep", "images", str(write_photos(root)), "--out", str(data / "images.jsonl"), "--min-size", "16"])
    main(["prep", "videos", str(write_clips(root)), "--out", str(data / "videos.jsonl"), "--frames-dir",
          str(data / "frames"), "--min-size", "16", "--min-gap", "0.5"])  # fmt: skip
    return data


def test_shards_hold_every_pair_once_and_a_rerun_keeps_finished_shards(prepared, tmp_path, capsys):
    manifests = [prepared / "images.jsonl", prepared / "videos.jsonl"]
    out = tmp_path / "shards"
    args = ["prep", "shards", *map(str, manifests), "--out", str(out), "--shard-size", "5"]
    assert main(args) == 0
    plan = json.loads((out / "shards.json").read_text())
    total = sum(len(rows(m)) for m in manifests)
    assert plan["samples"] == total and plan["shards"] == -(-total // 5) and plan["pattern"] == "{000000..000004}.tar"
    samples = list(webdataset.WebDataset(str(out / plan["pattern"]), shardshuffle=False))
    assert len(samples) == total and len({s["__key__"] for s in samples}) == total
    stored = []
    for sample in samples:
        meta = json.loads(sample["json"])
        files = {k for k in sample if not k.startswith("__") and k != "json"}
        # An invariant pair's reference is its target, stored once; a video pair has both frames.
        target = next(k for k in files if k.startswith("target."))
        assert files == ({"target.jpg", "reference.jpg"} if meta["modality"] == "video" else {target})
        stored.append((sample.get("reference.jpg", sample[target]), sample[target], json.dumps(meta, sort_keys=True)))
    expected = [
        ((m.parent / row["reference"]).read_bytes(), (m.parent / row["target"]).read_bytes(),
         json.dumps({k: v for k, v in row.items() if k not in ("reference", "target", "mask")}, sort_keys=True))
        for m in manifests for row in rows(m)
    ]  # fmt: skip
    assert sorted(stored) == sorted(expected)
    # A lost shard is written again, the others are kept as they are.
    (out / "000002.tar").unlink()
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    assert main(args) == 0
    assert "(4 done by an earlier run)" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar") if p.name in stamps} == stamps
    # Other inputs into the same folder are refused.
    assert main([*args[:-1], "4"]) == 2
    # Split in two: each rank writes its own shards, together all of them once.
    split = tmp_path / "split"
    for rank in (0, 1):
        assert main(["prep", "shards", *map(str, manifests), "--out", str(split), "--shard-size", "5",
                     "--rank", str(rank), "--world-size", "2"]) == 0  # fmt: skip
    assert sorted(p.read_bytes() for p in split.glob("*.tar")) == sorted(p.read_bytes() for p in out.glob("*.tar"))


def test_check_counts_and_fails_only_on_errors(prepared, tmp_path, capsys):
    out = tmp_path / "shards"
    main(["prep", "shards", str(prepared / "videos.jsonl"), "--out", str(out), "--shard-size", "4"])
    capsys.readouterr()
    assert main(["prep", "check", str(prepared / "images.jsonl"), str(prepared / "videos.jsonl"), str(out)]) == 0
    text = capsys.readouterr().out
    assert "7 pairs: image 7 (100%), video 0 (0%); captioned 1/7" in text  # uncaptioned is not an error
    assert "4 shards, 16 samples: image 0 (0%), video 16 (100%); captioned 8/16" in text
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"reference": "gone.png", "target": "gone.png", "caption": "", "modality": "image"}\n')
    (out / "000001.tar").unlink()
    assert main(["prep", "check", str(broken), str(out), str(tmp_path / "none.jsonl")]) == 1
    text = capsys.readouterr().out
    assert "1 missing files" in text and "1 of 4 planned shards missing" in text and "3 inputs, 3 with errors" in text


def test_prepared_manifests_train(prepared, tiny_models, tmp_path):
    from test_train import tiny_overrides

    both = prepared / "all.jsonl"  # beside the others: their paths stay right
    both.write_text((prepared / "images.jsonl").read_text() + (prepared / "videos.jsonl").read_text())
    run = tmp_path / "run"
    overrides = tiny_overrides(tiny_models, both, run, "max_steps=2", "checkpoint_every=2", "batch_size=2")
    assert main(["train", "--config", str(CONFIG), *[a for o in overrides for a in ("--set", o)]]) == 0
    metrics = rows(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2] and all(m["skipped_samples"] == 0 for m in metrics)
