"""Training at the edges: damaged samples in shards, caches, manifests and the validation references are
skipped and counted, a run always ends with its checkpoint and adapter, and the stream, the cache's settings
and a single-file atomic write hold under the cases a bug would hide in."""

from __future__ import annotations

import gc
import io
import json
import math
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import tarfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import PartialState
from PIL import Image
from safetensors.torch import save as save_tensors

from flexip.cli import main
from flexip.errors import FlexIPError
from flexip.manifest import read_manifest_records
from flexip.training import sources, trainer
from flexip.training.config import TrainConfig, load_config
from flexip.training.data import UNREADABLE, MixedBatchSampler, MixedStream, Pair, load_pair
from flexip.training.feature_cache import FEATURES, FeatureCache, encoder_settings, load_cached
from flexip.training.stream import LaneReader, ShardBatches, lane_urls, pair_of
from flexip.training.validation import validation_references

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "train" / "tiny.yaml"
SRC = Path(__file__).resolve().parents[2] / "src"


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_shards(folder: Path, samples: list[list[dict]]) -> list[str]:
    """Shards of `samples` (one list of {file name: bytes} per shard, keys numbered across shards)."""
    folder.mkdir(parents=True, exist_ok=True)
    urls, key = [], 0
    for index, shard in enumerate(samples):
        url = folder / f"{index:06d}.tar"
        with tarfile.open(url, "w") as tar:
            for sample in shard:
                for name, data in sample.items():
                    member = tarfile.TarInfo(f"{key:09d}.{name}")
                    member.size = len(data)
                    tar.addfile(member, io.BytesIO(data))
                key += 1
        urls.append(str(url))
    return urls


def meta(modality: str, **fields) -> bytes:
    return json.dumps({"caption": "a cube", "modality": modality, **fields}).encode()


# --- A bad sample is skipped and counted wherever it is met -------------------------------------------------

RGB = png(Image.new("RGB", (32, 24), (200, 40, 40)))
MASK = png(Image.new("L", (32, 24), 255))
SIXTEEN_BIT = png(Image.fromarray(np.full((24, 32), 40000, dtype=np.uint16)))
PALETTE = Image.new("P", (32, 24))
PALETTE.info["transparency"] = 0
PALETTE_T = png(PALETTE)
CMYK = io.BytesIO()
Image.new("CMYK", (32, 24), (0, 200, 200, 0)).save(CMYK, format="JPEG")
BOMB = png(Image.new("1", (20000, 20000)))  # 400 MP: over PIL's decompression-bomb limit


@pytest.mark.parametrize(
    ("sample", "usable"),
    [
        ({"json": meta("image"), "target.png": RGB, "mask.png": MASK}, True),
        ({"json": meta("video"), "target.png": RGB, "reference.png": RGB}, True),
        ({"json": meta("image"), "target.png": png(Image.new("RGB", (1, 1)))}, True),
        ({"json": meta("image"), "target.png": CMYK.getvalue()}, True),
        ({"json": meta("image"), "target.png": SIXTEEN_BIT}, True),
        ({"json": meta("image"), "target.png": PALETTE_T}, True),
        ({"json": meta("video"), "target.png": RGB}, False),  # a video pair that lost its reference frame
        ({"json": meta("video"), "reference.png": RGB}, False),
        ({"json": b'{"modality": "image"}', "target.png": RGB}, False),
        ({"json": meta("image", caption=5), "target.png": RGB}, False),
        ({"json": b"[1, 2]", "target.png": RGB}, False),
        ({"json": b"null", "target.png": RGB}, False),
        ({"json": b"\xff\xfe{", "target.png": RGB}, False),
        ({"target.png": RGB}, False),
        ({"json": meta("image"), "target.png": RGB[: len(RGB) // 2]}, False),
        ({"json": meta("image"), "target.png": b""}, False),
        ({"json": meta("image"), "target.png": b"not an image"}, False),
        ({"json": meta("image"), "target.png": BOMB}, False),
        ({"json": meta("image"), "target.png": RGB, "mask.png": png(Image.new("L", (7, 9)))}, False),
        ({"json": meta("image"), "target.png": RGB, "mask.png": b"GIF89a"}, False),
    ],
)
def test_a_shard_sample_is_usable_or_refused_as_one_unreadable_sample(sample, usable):
    """What the stream and the contact sheet do with each sample: load it, or get the error they skip on."""

    def load() -> dict:
        return load_pair(pair_of({"__key__": "000000007", **sample}), np.random.default_rng(0), 16, True)

    if usable:
        loaded = load()
        assert loaded["pixel_values"].shape == (3, 16, 16) and loaded["reference"].mode == "RGB"
    else:
        with pytest.raises(UNREADABLE):
            load()


SHAPES = {
    "moments": (8, 4, 4), "embeds": (5, 6), "clip_embeds": (3,), "dino_tokens": (2, 3), "subject": (1, 4, 4),
    "added.time_ids": (6,),
}  # fmt: skip


def features(**edits) -> bytes:
    tensors = {name: torch.zeros(2, *shape) if name in ("clip_embeds", "dino_tokens") else torch.zeros(shape)
               for name, shape in SHAPES.items()}  # fmt: skip
    for name, value in edits.items():
        name = name.replace("__", ".")
        if value is None:
            del tensors[name]
        else:
            tensors[name] = value
    stored = {name: torch.float32 if name.startswith("added.") else torch.float16 for name in tensors}
    return save_tensors({k: v.to(stored[k]) if v.is_floating_point() else v for k, v in tensors.items()})


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (features(), None),
        (features(subject=None), None),  # a pair without a mask
        (features(clip_embeds=torch.zeros(1, 3), dino_tokens=torch.zeros(1, 2, 3)), None),  # a video pair
        (features(clip_embeds=None), "no 'clip_embeds'"),
        (features(moments=None), "no 'moments'"),
        (features(added__time_ids=None), "no 'added.time_ids'"),
        (features(moments=torch.zeros(8, 5, 5)), "'moments' is (8, 5, 5)"),
        (features(embeds=torch.zeros(4, 6)), "'embeds' is (4, 6)"),
        (features(dino_tokens=torch.zeros(3)), "'dino_tokens' is (3,)"),
        (features(dino_tokens=torch.zeros(1, 2, 3)), "'dino_tokens' is (1, 2, 3)"),  # clip_embeds has two
        (features(clip_embeds=torch.zeros(3, 3), dino_tokens=torch.zeros(3, 2, 3)), "holds 3 variants"),
        (features(subject=torch.zeros(1, 2, 2)), "'subject' is (1, 2, 2)"),
        (features(moments=torch.zeros(8, 4, 4, dtype=torch.int32)), "torch.int32, not floating point"),
        (features(moments=torch.full((8, 4, 4), math.nan)), "'moments' holds NaN"),
        (features(embeds=torch.full((5, 6), math.inf)), "'embeds' holds NaN or infinite"),
        (features()[:40], "unreadable"),
        (b"", "unreadable"),
    ],
    ids=[
        "whole",
        "no-mask",
        "one-variant",
        "no-clip",
        "no-moments",
        "no-added",
        "moments-shape",
        "embeds-shape",
        "dino-rank",
        "dino-variants",
        "three-variants",
        "subject-shape",
        "int",
        "nan",
        "inf",
        "truncated",
        "empty",
    ],
)
def test_a_damaged_cache_sample_is_refused_as_one_unreadable_sample(data, problem):
    sample = {"__key__": "000000003", "json": meta("image"), "target.png": RGB, FEATURES: data}
    if problem is None:
        loaded = load_cached(sample, 1, None, variants=2, subject=True, shapes=SHAPES)
        assert loaded["moments"].shape == (8, 4, 4) and loaded["clip_embeds"].shape == (3,)
        assert loaded["added"]["time_ids"].shape == (6,) and loaded["subject"].shape == (1, 4, 4)
    else:
        with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
            load_cached(sample, 1, None, variants=2, subject=True, shapes=SHAPES)


def test_the_contact_sheet_skips_a_bad_reference_and_takes_the_next(tmp_path, caplog):
    PartialState()  # the training logger's state, as in a run
    # A shard whose first sample lacks its caption still gives the sheet a reference of each modality.
    urls = write_shards(tmp_path / "shards", [[
        {"json": b'{"modality": "video"}', "target.png": RGB, "reference.png": RGB},
        {"json": meta("video"), "target.png": RGB, "reference.png": RGB},
        {"json": meta("image"), "target.png": RGB},
    ]])  # fmt: skip
    pairs = sources.validation_pairs(sources.Source(None, urls=urls))
    assert sorted(p.modality for p in pairs) == [0, 1]
    # References that cannot be read, then a good one of each modality.
    (tmp_path / "truncated.png").write_bytes(RGB[:40])
    (tmp_path / "bomb.png").write_bytes(BOMB)
    (tmp_path / "good.png").write_bytes(RGB)
    names = ["missing.png", "truncated.png", "bomb.png", "good.png"]
    pairs = [Pair(tmp_path / n, tmp_path / n, "", m, None) for m in (0, 1) for n in names]
    references = validation_references(pairs)
    assert [r.size for r in references] == [(32, 24), (32, 24)]
    for name in names[:3]:
        assert f"the contact sheet skips {tmp_path / name}" in caplog.text


def train_from_shards(tiny_models, shards: Path, run: Path, lanes: int, workers: int = 0) -> int:
    settings = [
        "model.tiny_models=''", f"model.base={tiny_models.base}", f"model.dino_encoder={tiny_models.dinov2}",
        f"model.image_encoder={tiny_models.image_encoder}", f"data.shards={shards}", f"data.lanes={lanes}",
        f"data.num_workers={workers}", "log_with=[]", "batch_size=2", "validation.steps=1",
        "validation.every=1000", "checkpoint_every=1000",
    ]  # fmt: skip
    return main(["train", "--config", str(CONFIG), "--output-dir", str(run), "--max-steps", "2",
                 *[a for s in settings for a in ("--set", s)]])  # fmt: skip


def samples_of(shards: Path, drop_caption) -> list[list[dict]]:
    """The samples of `shards`, a list of {file: bytes} per shard, uncaptioned where `drop_caption(key)`."""
    out = []
    for url in sorted(shards.glob("*.tar")):
        with tarfile.open(url) as tar:
            shard: dict[str, dict] = {}
            for member in tar.getmembers():
                key, name = member.name.split(".", 1)
                data = tar.extractfile(member).read()
                if name == "json" and drop_caption(int(key)):
                    data = json.dumps({k: v for k, v in json.loads(data).items() if k != "caption"}).encode()
                shard.setdefault(key, {})[name] = data
        out.append(list(shard.values()))
    return out


@pytest.mark.parametrize(
    "case", ["first-sample-uncaptioned", "sheet-fails", "data-gives-out", "data-gives-out-in-a-worker"]
)
def test_a_run_ends_with_its_checkpoint_and_adapter_whatever_its_data_and_sheet_do(
    case, tiny_models, twelve_pair_shards, tmp_path, monkeypatch, caplog, capsys
):
    run = tmp_path / "run"
    if case == "first-sample-uncaptioned":  # one shard: its first sample lacks its caption
        merged = [[s for shard in samples_of(twelve_pair_shards, lambda key: key == 0) for s in shard]]
        write_shards(tmp_path / "shards", merged)
        assert train_from_shards(tiny_models, tmp_path / "shards", run, lanes=1) == 0
        assert "000000000: the sample's JSON has no caption" in caplog.text
        assert (run / "samples" / "step-00000002.png").is_file()
    elif case == "sheet-fails":

        def fail(*args, **kwargs):
            raise RuntimeError("out of memory while sampling")

        monkeypatch.setattr(trainer, "sweep", fail)
        assert train_from_shards(tiny_models, twelve_pair_shards, run, lanes=2) == 0
        assert "step 2: no contact sheet (RuntimeError: out of memory while sampling)" in caplog.text
    else:  # every even sample uncaptioned: lane 1's video pairs are all unusable, found at step 2
        write_shards(tmp_path / "shards", samples_of(twelve_pair_shards, lambda key: key % 2 == 0))
        workers = 2 if case.endswith("worker") else 0
        assert train_from_shards(tiny_models, tmp_path / "shards", run, lanes=2, workers=workers) == 2
        err = capsys.readouterr().err
        assert (
            "Traceback" not in err
            and "training samples in a row are unreadable" in err.strip().splitlines()[-1]
        )
        alive = multiprocessing.active_children()
        gc.collect()  # a leaked loader stops its workers when collected: a failure must not hang the tests
        assert not alive  # the workers ignore SIGTERM: left running, they would hang the interpreter's exit
    steps = 1 if case.startswith("data-gives-out") else 2
    assert (run / "checkpoints" / f"checkpoint-{steps:08d}" / "training_state.json").is_file()
    assert (run / "adapter" / "flexip_adapter.safetensors").is_file()


# --- Whole-input mistakes: one line before any work ---------------------------------------------------------


GOOD_LINE = {"reference": "a.png", "target": "a.png", "caption": "c", "modality": "image"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("\ufeff" + json.dumps(GOOD_LINE), None),  # saved with a BOM
        (
            json.dumps({**GOOD_LINE, "caption": "one\u2028two"}, ensure_ascii=False),
            None,
        ),  # a line separator inside
        ("[1, 2]", ":1: not a JSON object but a list"),
        ('"x"', ":1: not a JSON object but a str"),
        ("null", ":1: not a JSON object but a NoneType"),
        ("{", ":1: not valid JSON"),
        (json.dumps({**GOOD_LINE, "caption": None}), ":1: field 'caption' must be a string"),
    ],
)
def test_a_manifest_is_read_as_editors_save_it_or_refused_in_one_line(tmp_path, text, message):
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_bytes((text + "\n").encode())
    if message is None:
        assert len(read_manifest_records(manifest)) == 1
    else:
        with pytest.raises(FlexIPError, match=f"manifest {manifest}{message}"):
            read_manifest_records(manifest)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.resolution=36", "data.resolution: 36 must be a multiple of 8"),
        ("data.resolution=4", "data.resolution: 4 must be a multiple of 8"),
        ("data.resolution=-8", "data.resolution: -8 must be at least 1"),
        ("data.video_fraction=.nan", "data.video_fraction must be a finite number, got nan"),
        ("data.swap_captions=-0.5", "data.swap_captions: -0.5 must be in [0, 1]"),
        ("validation.preservation=[.nan]", "validation.preservation[0] must be a finite number, got nan"),
        ("weight_decay=-.inf", "weight_decay must be a finite number, got -inf"),
    ],
)
def test_config_values_that_cannot_mean_anything_are_refused_naming_the_key(override, message):
    with pytest.raises(
        FlexIPError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")
    ):
        load_config(CONFIG, [override])


# --- Every setting a feature cache records is checked -------------------------------------------------------

MISMATCHES = {  # a key cache.json records -> a config that differs in it
    "model.base": "model.base=other/base",
    "model.vae": "model.vae=other/vae",
    "model.image_encoder": "model.image_encoder=other/clip",
    "model.dino_encoder": "model.dino_encoder=other/dino",
    "model.dino_layer": "model.dino_layer=-3",
    "data.resolution": "data.resolution=64",
}


def test_the_table_covers_every_setting_a_cache_records():
    assert set(MISMATCHES) == set(encoder_settings(TrainConfig()))


@pytest.mark.parametrize("key", sorted(MISMATCHES))
def test_a_config_that_differs_from_the_cache_in_any_recorded_setting_is_refused(tmp_path, key):
    made = load_config(CONFIG, ["model.tiny_models=''"])
    index = {"shards": 1, "seed": made.seed, "settings": encoder_settings(made)}
    cache = FeatureCache(tmp_path, index)
    cache.check(made, ["000000.tar"])  # the config it was made with
    with pytest.raises(FlexIPError, match=f"config {key}: .* but the cache {tmp_path} was made with"):
        cache.check(load_config(CONFIG, ["model.tiny_models=''", MISMATCHES[key]]), ["000000.tar"])
    with pytest.raises(FlexIPError, match="holds 0 of the 1 shards"):  # an unfinished cache
        cache.check(made, [])
    cache.check(load_config(CONFIG, ["model.tiny_models=''", "seed=7"]), ["000000.tar"])  # another run's seed


@pytest.mark.parametrize(
    ("index", "message"),
    [
        ("[1, 2]", "is not a flexip-feature-cache version 1 index"),
        (
            '{"format": "flexip-feature-cache", "format_version": 2}',
            "is not a flexip-feature-cache version 1 index",
        ),
        ({"shards": None}, "is damaged (shards missing or invalid)"),
        ({"variants": 0}, "is damaged (variants missing or invalid)"),
        ({"seed": "0"}, "is damaged (seed missing or invalid)"),
        ({"settings": []}, "is damaged (settings missing or invalid)"),
    ],
)
def test_a_damaged_cache_index_is_refused_in_one_line(tmp_path, index, message):
    whole = {
        "format": "flexip-feature-cache",
        "format_version": 1,
        "shards": 1,
        "variants": 1,
        "seed": 0,
        "settings": {},
    }
    (tmp_path / "cache.json").write_text(index if isinstance(index, str) else json.dumps({**whole, **index}))
    with pytest.raises(
        FlexIPError, match=f"config data.cache: {tmp_path / 'cache.json'} {re.escape(message)}"
    ):
        FeatureCache.open(tmp_path)
    (tmp_path / "cache.json").write_text(json.dumps(whole))
    assert FeatureCache.open(tmp_path).index == whole


# --- The stream: its ratio at every share and batch size, and each lane's shard order -----------------------


@pytest.mark.parametrize("video_fraction", [1 / 3, 0.75, 0.375, 0.0, 1.0])
@pytest.mark.parametrize("batch_size", [3, 5])
def test_streamed_and_manifest_batches_hold_the_configured_share_of_video_pairs(
    tmp_path, video_fraction, batch_size
):
    # 4 shards of 3 image and 2 video pairs each; the batches' modalities are read from the samples.
    modalities = ("image", "image", "video", "video", "image")
    urls = write_shards(
        tmp_path, [[{"json": meta(m), "target.png": b""} for m in modalities] for _ in range(4)]
    )
    fraction = Fraction(video_fraction)
    dataset = ShardBatches(
        urls,
        2,
        batch_size,
        video_fraction,
        0,
        0,
        0,
        1,
        None,
        lambda sample, pass_, rng: {"video": json.loads(sample["json"])["modality"] == "video"},
        lambda samples: {"videos": [s["video"] for s in samples]},
    )
    modalities = [0] * 12 + [1] * 7
    stream = MixedStream(modalities, video_fraction, 0)
    manifest = MixedBatchSampler(stream, batch_size, 0, 0, 1)
    for name, batches in (
        ("shards", (b["videos"] for b in dataset)),
        ("manifest", ([modalities[i] == 1 for i, _ in batch] for batch in manifest)),
    ):
        seen = 0
        for number, videos in zip(range(1, 13), batches, strict=False):
            assert sum(videos) in (math.floor(batch_size * fraction), math.ceil(batch_size * fraction)), name
            seen += sum(videos)
            assert seen == math.floor(number * batch_size * fraction), name  # exact over every run of batches


def test_each_lane_reads_its_shards_once_per_pass_in_a_seeded_order_that_changes_per_pass(tmp_path):
    pair = [{"json": meta("image"), "target.png": b""}, {"json": meta("video"), "target.png": b""}]
    urls = write_shards(tmp_path, [pair] * 10)

    def orders(lane: int, modality: int, seed: int, passes: int = 6) -> list[tuple[int, ...]]:
        reader = LaneReader(lane_urls(urls, 2, lane), modality, seed, lane)
        shards: dict[int, list[int]] = {}
        while True:
            sample, pass_, _, _ = reader.next()
            if pass_ == passes:
                return [tuple(shards[p]) for p in range(passes)]
            shards.setdefault(pass_, []).append(int(sample["__key__"]) // 2)

    for lane in (0, 1):
        for modality in (0, 1):
            first = orders(lane, modality, seed=0)
            for order in first:  # each of the lane's shards once per pass
                assert sorted(order) == list(range(lane, 10, 2))
            assert len(set(first)) > 2  # a new order each pass
            assert orders(lane, modality, seed=0) == first  # the same for the same seed
            assert orders(lane, modality, seed=1) != first  # another for another seed


# --- A single-file atomic write killed mid-write ------------------------------------------------------------

WRITER = """
import os, sys, time
import flexip.atomic as atomic

real = os.fdopen

class Stuck:
    def __init__(self, file):
        self.file = file
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.file.close()
    def fileno(self):
        return self.file.fileno()
    def write(self, data):
        self.file.write(data[: len(data) // 2])
        self.file.flush()
        print("half written", flush=True)
        time.sleep(60)

atomic.os.fdopen = lambda fd, mode: Stuck(real(fd, mode))
atomic.atomic_write_bytes(sys.argv[1], b"new" * 100_000)
"""


def test_a_write_killed_midway_leaves_the_old_file_whole(tmp_path):
    target = tmp_path / "config.yaml"
    target.write_bytes(b"old contents\n")
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, env=env)
    try:
        assert writer.stdout.readline() == b"half written\n"
        (partial,) = [p for p in tmp_path.iterdir() if p != target]  # the temporary sibling, half written
        assert partial.stat().st_size == 150_000
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"old contents\n"
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".tmp-")] == ["config.yaml"]
