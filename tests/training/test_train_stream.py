"""Training from streamed webdataset shards (`data.shards`): the stream's order, its split between processes and
workers, exact resume, bad samples, and equality with training from files."""

from __future__ import annotations

import io
import json
import tarfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures import losses
from flexip.cli import main
from flexip.training import sources
from flexip.training.data import PairDataset, modality_at
from flexip.training.stream import ShardBatches, key_number, pair_of, shard_samples, shard_urls

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "train" / "tiny.yaml"


@pytest.fixture
def shards(twelve_pair_shards) -> Path:
    return twelve_pair_shards


def train_args(models, output_dir: Path, max_steps: int, *extra: str, resume: str | None = None) -> list[str]:
    overrides = [
        "model.tiny_models=''", f"model.base={models.base}", f"model.image_encoder={models.image_encoder}",
        f"model.dino_encoder={models.dinov2}", "log_with=[]", "log_every=1", "validation.every=1000",
        "learning_rate=1e-2", "batch_size=2", "data.lanes=2", *extra,
    ]  # fmt: skip
    args = ["train", "--config", str(CONFIG), "--output-dir", str(output_dir), "--max-steps", str(max_steps)]
    args += ["--resume", resume] if resume else []
    return args + [a for o in overrides for a in ("--set", o)]


def keys_and_passes(sample: dict, pass_: int, rng) -> dict:
    return {"key": sample["__key__"], "pass": pass_, "modality": json.loads(sample["json"])["modality"]}


def gathered(samples: list[dict]) -> dict:
    return {"samples": samples, "positions": [s["position"] for s in samples]}


def stream(shards: Path, batches: int, rank: int = 0, world: int = 1, start: int = 0, places=None, lanes=2) -> list:
    """The first `batches` batches process `rank` of `world` reads: [(position, key, pass, modality)] each."""
    dataset = ShardBatches(
        shard_urls(str(shards)), lanes, 2, 0.5, 0, start, rank, world, places, keys_and_passes, gathered
    )
    out = []
    for batch, _ in zip(dataset, range(batches), strict=False):
        out.append([(s["position"], s["key"], s["pass"], s["modality"]) for s in batch["samples"]])
    return out


def test_the_ratio_is_exact_per_batch_and_no_sample_repeats_within_its_pass(shards):
    batches = stream(shards, 12)
    for batch in batches:
        expected = ["video" if modality_at(p, Fraction(1, 2))[0] else "image" for p, *_ in batch]
        assert [m for *_, m in batch] == expected
    seen = [(key, pass_) for batch in batches for _, key, pass_, _ in batch]
    assert len(set(seen)) == len(seen)  # a reader's pass takes each of its samples once
    assert {key for key, _ in seen} == {f"{i:09d}" for i in range(12)}
    # Each reader's next pass visits its samples again, in another order.
    first, second = ([k for k, p in seen if p == n] for n in (0, 1))
    assert set(second) <= set(first) and second != first[: len(second)]


def test_two_processes_and_two_workers_read_disjoint_lanes_that_together_are_the_one_process_stream(shards):
    one = stream(shards, 8)
    rank0, rank1 = stream(shards, 4, rank=0, world=2), stream(shards, 4, rank=1, world=2)
    assert [b for pair in zip(rank0, rank1, strict=True) for b in pair] == one
    assert not {k for b in rank0[:3] for _, k, _, _ in b} & {k for b in rank1[:3] for _, k, _, _ in b}
    # DataLoader workers split a process's batches the same way, and come back in order.
    dataset = ShardBatches(shard_urls(str(shards)), 2, 2, 0.5, 0, 0, 0, 1, None, keys_and_passes, gathered)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2)
    with_workers = []
    for batch, _ in zip(loader, range(8), strict=False):
        with_workers.append([(s["position"], s["key"], s["pass"], s["modality"]) for s in batch["samples"]])
    assert with_workers == one


def test_a_stream_restarted_at_its_lanes_places_continues_where_it_stopped(shards):
    urls = shard_urls(str(shards))
    dataset = ShardBatches(urls, 2, 2, 0.5, 0, 0, 0, 1, None, keys_and_passes, gathered)
    places = {}
    for batch, _ in zip(dataset, range(5), strict=False):
        places.update(batch["lanes"])
    rest = stream(shards, 4, start=5, places=places)
    assert rest == stream(shards, 9)[5:]


def test_lanes_that_readers_would_share_or_that_lack_shards_are_refused(tiny_models, shards, tmp_path, capsys):
    assert main(train_args(tiny_models, tmp_path / "a", 1, f"data.shards={shards}", "data.lanes=3",
                           "data.num_workers=2")) == 2  # fmt: skip
    assert "data.lanes: 3 is not a multiple of the 2 readers" in capsys.readouterr().err
    assert main(train_args(tiny_models, tmp_path / "b", 1, f"data.shards={shards}", "data.lanes=8")) == 2
    assert "8 lanes need at least as many shards, data.shards has 6" in capsys.readouterr().err
    missing = f"{shards}/{{000000..000009}}.tar"
    assert main(train_args(tiny_models, tmp_path / "c", 1, f"data.shards={missing}")) == 2
    assert "4 of its 10 shards do not exist" in capsys.readouterr().err


def test_training_from_shards_equals_training_from_a_manifest_of_the_same_samples_in_stream_order(
    tiny_models, shards, tmp_path, monkeypatch
):
    steps = 8  # 16 positions: more than one pass over the 12 samples
    order = [s for batch in stream(shards, steps) for s in batch]
    assert assert_passes(order) == {0, 1}
    # The stream's samples as files, one manifest row per position, in stream order.
    samples = {s["__key__"]: s for url in shard_urls(str(shards)) for s in shard_samples(url)}
    rows = []
    for position, key, _, _ in order:
        pair = pair_of(samples[key])
        files = {}
        for name in ("reference", "target", "mask"):
            data = getattr(pair, name)
            if data is not None:
                (tmp_path / f"{key}.{name}.png").write_bytes(data)
                files[name] = f"{key}.{name}.png"
        rows.append({**files, "caption": pair.caption, "modality": ["image", "video"][pair.modality]})
    manifest = tmp_path / "stream.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))

    assert main(train_args(tiny_models, tmp_path / "shards", steps, f"data.shards={shards}")) == 0

    # Replayed through the manifest's path: position p reads row p, with the augmentation the shard draws.
    class InStreamOrder:
        def __init__(self, modalities, video_fraction, seed):
            pass

        def __getitem__(self, position):
            return position

    class WithTheStreamsDraws(PairDataset):
        def draws(self, position):
            _, key, pass_, _ = order[position]
            return np.random.default_rng([self.seed, key_number(key), pass_])

    monkeypatch.setattr(sources, "MixedStream", InStreamOrder)
    monkeypatch.setattr(sources, "PairDataset", WithTheStreamsDraws)
    assert main(train_args(tiny_models, tmp_path / "files", steps, f"data.manifest={manifest}")) == 0
    assert losses(tmp_path / "shards") == losses(tmp_path / "files")


def assert_passes(order) -> set[int]:
    return {pass_ for _, _, pass_, _ in order}


def test_resuming_from_shards_continues_the_stream_exactly(tiny_models, shards, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    source = f"data.shards={shards}"
    assert main(train_args(tiny_models, whole, 7, source, "checkpoint_every=100")) == 0
    assert main(train_args(tiny_models, split, 3, source, "checkpoint_every=3")) == 0
    state = json.loads((split / "checkpoints" / "checkpoint-00000003" / "training_state.json").read_text())
    assert state["samples"] == 6 and state["stream"]["lanes"] == 2 and set(state["stream"]["places"]) == {"0", "1"}
    # Resumed with two workers (the stream does not depend on them), on to step 7.
    assert main(train_args(tiny_models, split, 7, source, "data.num_workers=2", resume="latest")) == 0
    expected, resumed = losses(whole), losses(split)
    assert [resumed[s] for s in range(4, 8)] == [expected[s] for s in range(4, 8)]


def test_a_resume_with_other_lanes_is_refused(tiny_models, shards, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(tiny_models, run, 2, f"data.shards={shards}", "checkpoint_every=2")) == 0
    args = train_args(tiny_models, run, 3, f"data.shards={shards}", "data.lanes=1", resume="latest")
    assert main(args) == 2
    assert "the checkpoint's stream was cut into 2 lanes; resume with --set data.lanes=2" in capsys.readouterr().err


def test_bad_samples_inside_a_shard_are_replaced_and_counted(tiny_models, shards, tmp_path, caplog):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for url in shard_urls(str(shards)):
        with tarfile.open(url) as source, tarfile.open(damaged / Path(url).name, "w") as copy:
            for member in source.getmembers():
                data = source.extractfile(member).read()
                if member.name == "000000004.target.png":  # an image pair's only image: truncated
                    data = data[: len(data) // 3]
                member.size = len(data)
                copy.addfile(member, io.BytesIO(data))
    assert (damaged / "000002.tar").is_file()
    run = tmp_path / "run"
    assert main(train_args(tiny_models, run, 8, f"data.shards={damaged}", "checkpoint_every=8")) == 0
    state = json.loads((run / "checkpoints" / "checkpoint-00000008" / "training_state.json").read_text())
    assert state["skipped"] >= 1  # once per pass that reached it
    assert "000000004" in caplog.text
    assert len(losses(run)) == 8


def test_streaming_refuses_caption_swapping(tiny_models, shards, tmp_path, capsys):
    assert main(train_args(tiny_models, tmp_path, 1, f"data.shards={shards}", "data.swap_captions=0.5")) == 2
    assert "data.swap_captions draws captions from the whole data set" in capsys.readouterr().err


def test_validation_takes_a_reference_of_each_modality_from_the_first_shards(shards):
    pairs = sources.validation_pairs(sources.Source(None, urls=shard_urls(str(shards))))
    assert sorted(p.modality for p in pairs) == [0, 1]


def test_shards_and_a_cache_together_are_refused(tiny_models, shards, tmp_path, capsys):
    assert main(train_args(tiny_models, tmp_path, 1, f"data.shards={shards}", f"data.cache={shards}")) == 2
    assert "data.shards and data.cache are both set" in capsys.readouterr().err
