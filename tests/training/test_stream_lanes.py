"""Stream lanes (`data.lanes`, training/stream.py `fit_lanes`): fitted to the shards and the launch unless pinned,
recorded in the checkpoints for the resume, and refused in one line where a number cannot work."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from fixtures import losses
from flexip.cli import main
from flexip.errors import FlexIPError
from flexip.training.stream import fit_lanes

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "train" / "tiny.yaml"


@pytest.mark.parametrize(
    ("shards", "processes", "num_workers", "lanes", "workers"),
    [
        (1000, 1, 4, 8, 4),  # readers dividing 8 and enough shards: 8 lanes
        (1000, 2, 4, 8, 4),
        (1000, 8, 8, 64, 8),  # more readers than 8: one lane each
        (1000, 3, 1, 6, 1),
        (6, 1, 0, 6, 0),  # the process itself reads: one reader
        (6, 1, 4, 4, 4),
        (5, 2, 2, 4, 2),
        (3, 1, 4, 3, 3),  # fewer shards than readers: fewer workers
        (1, 1, 4, 1, 1),
    ],
)
def test_fitted_lanes_are_the_most_readers_the_shards_allow_times_what_fits_up_to_8(
    shards, processes, num_workers, lanes, workers
):
    fitted = fit_lanes(shards, processes, num_workers, None, None, "data.shards")
    assert (fitted.count, fitted.workers) == (lanes, workers)


def test_a_resume_keeps_the_recorded_lanes_with_the_workers_that_divide_them():
    resumed = fit_lanes(3, 1, 4, None, 2, "data.shards")  # fresh, these would fit 3 lanes and 3 workers
    assert (resumed.count, resumed.workers) == (2, 2)
    assert "in 2 lanes (the checkpoint's), 2 DataLoader workers per process (data.num_workers asks 4" in resumed.note


@pytest.mark.parametrize(
    ("shards", "processes", "num_workers", "pinned", "recorded", "what", "fix"),
    [
        (6, 1, 2, 3, None, "data.lanes: 3 is not a multiple of the 2 readers", "set data.lanes to a multiple of 2"),
        (6, 1, 0, 8, None, "data.lanes: 8 lanes need at least as many shards, data.shards has 6", "to null"),
        (6, 1, 0, 1, 2, "data.lanes: 1, but the checkpoint's stream was cut into 2", "--set data.lanes=2, or null"),
        (1, 2, 0, None, None, "2 processes need a shard each", "cut the data into at least 2 shards"),
        (6, 2, 0, None, 3, "cut into 3 lanes, which 2 processes cannot share", "processes that divides 3"),
        (1, 1, 0, None, 2, "cut into 2 lanes, and data.shards has 1 shard", "resume with the shards it was trained"),
    ],
)
def test_lanes_that_cannot_work_are_refused_naming_the_number_and_the_fix(
    shards, processes, num_workers, pinned, recorded, what, fix
):
    with pytest.raises(FlexIPError) as refused:
        fit_lanes(shards, processes, num_workers, pinned, recorded, "data.shards")
    message = str(refused.value)
    assert what in message and fix in message and "\n" not in message


@pytest.fixture(scope="module")
def small_data(tiny_models, twelve_pair_shards, tmp_path_factory) -> dict[tuple[str, int], Path]:
    """The twelve pairs in 1 shard and in 3, and a feature cache of each: {(source, shards): folder}."""
    root, manifest = tmp_path_factory.mktemp("small-data"), twelve_pair_shards.parent / "data" / "manifest.jsonl"
    models = [f"model.base={tiny_models.base}", f"model.image_encoder={tiny_models.image_encoder}",
              f"model.dino_encoder={tiny_models.dinov2}", "model.tiny_models=''"]  # fmt: skip
    folders = {}
    for count in (1, 3):
        shards, cache = root / f"shards-{count}", root / f"cache-{count}"
        assert main(["prep", "shards", str(manifest), "--out", str(shards), "--shard-size", str(12 // count)]) == 0
        assert main(["prep", "cache", str(shards), "--config", str(CONFIG), "--out", str(cache),
                     *[a for m in models for a in ("--set", m)]]) == 0  # fmt: skip
        folders["shards", count], folders["cache", count] = shards, cache
    return folders


def train(tiny_models, data: Path, source: str, run: Path, max_steps: int, *extra: str, resume=None) -> int:
    """`flexip train` with tiny.yaml as it is (its data.lanes and num_workers defaults), from `data`."""
    settings = [
        "model.tiny_models=''", f"model.base={tiny_models.base}", f"model.image_encoder={tiny_models.image_encoder}",
        f"model.dino_encoder={tiny_models.dinov2}", f"data.{source}={data}", "log_with=[]",
        "log_every=1", "batch_size=2", "validation.steps=1", "validation.prompts=[it]", "validation.preservation=[1]",
        *extra,
    ]  # fmt: skip
    args = ["train", "--config", str(CONFIG), "--output-dir", str(run), "--max-steps", str(max_steps)]
    return main([*args, *(["--resume", resume] if resume else []), *[a for s in settings for a in ("--set", s)]])


def stream_lanes(run: Path, step: int) -> int:
    state = json.loads((run / "checkpoints" / f"checkpoint-{step:08d}" / "training_state.json").read_text())
    return state["stream"]["lanes"]


@pytest.mark.parametrize(("source", "shards"), [("shards", 1), ("cache", 1), ("shards", 3)])
def test_one_or_three_shards_train_with_the_default_lanes(tiny_models, small_data, tmp_path, source, shards):
    run = tmp_path / "run"
    # A shard or cache part per lane; one shard keeps one of data.num_workers' (the dataclass default) 4 workers.
    workers = ["data.num_workers=4"] if shards == 1 and source == "shards" else []
    assert train(tiny_models, small_data[source, shards], source, run, 1, *workers) == 0
    assert stream_lanes(run, 1) == shards


def test_a_resume_keeps_the_lanes_its_checkpoint_recorded(tiny_models, small_data, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="flexip.training.trainer")
    cache, whole, split = small_data["cache", 3], tmp_path / "whole", tmp_path / "split"
    assert train(tiny_models, cache, "cache", whole, 3) == 0
    assert train(tiny_models, cache, "cache", split, 1) == 0
    assert stream_lanes(split, 1) == 3  # a cache of 3 parts read by one process: 3 lanes
    # With two workers a fresh run would fit 2 lanes: the resume keeps 3, read by one worker, and continues the
    # stream exactly.
    assert train(tiny_models, cache, "cache", split, 3, "data.num_workers=2", resume="latest") == 0
    assert "data.cache: 3 shards in 3 lanes (the checkpoint's), 1 DataLoader worker per process" in caplog.text
    assert stream_lanes(split, 3) == 3
    expected, resumed = losses(whole), losses(split)
    assert [resumed[s] for s in (2, 3)] == [expected[s] for s in (2, 3)]
