"""Where a run's samples come from: a manifest of files, streamed shards, or a feature cache of those shards.

Each gives the trainer the same three things: a DataLoader of this process's batches from a stream position on,
the pairs the validation sheet takes its references from, and the function that turns a batch into the UNet's
inputs (the frozen encoders for images, the cached features for a cache).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import FlexIPError
from ..models.config import MODALITIES
from .checkpoint import TrainingState
from .config import TrainConfig
from .data import MixedBatchSampler, MixedStream, Pair, PairDataset, collate, load_pair, read_manifest
from .feature_cache import FeatureCache, collate_cached, encode_cached_batch, load_cached
from .objective import encode_batch
from .signals import ignore_stop_signals
from .stream import SHARD_ERRORS, Lanes, ShardBatches, fit_lanes, pair_of, shard_samples, shard_urls

VALIDATION_SHARDS = 4  # shards searched for the validation sheet's references before giving up on a modality


@dataclass
class Source:
    """One run's data: `pairs` and their `stream` for a manifest, `urls` (and `cache`) and their `lanes` for
    shards."""

    config: TrainConfig
    pairs: list[Pair] | None = None
    stream: MixedStream | None = None
    urls: list[str] | None = None
    cache: FeatureCache | None = None
    shapes: dict[str, tuple] | None = None  # a cache's features for the loaded models (feature_shapes)
    lanes: Lanes | None = None

    @property
    def encode(self) -> Callable:
        """(models, batch, dropout, generator) -> EncodedBatch."""
        return encode_cached_batch if self.cache is not None else encode_batch


def open_source(config: TrainConfig, num_processes: int, recorded_lanes: int | None = None) -> Source:
    """The configured data, checked against the run's shape (batch size, processes, workers) before any work;
    `recorded_lanes`: the lanes of the stream a resumed checkpoint recorded."""
    data = config.data
    if data.shards or data.cache:
        key = "data.cache" if data.cache else "data.shards"
        cache = FeatureCache.open(data.cache) if data.cache else None
        urls = shard_urls(data.cache or data.shards)
        if cache is not None:
            cache.check(config, urls)
        lanes = fit_lanes(len(urls), num_processes, data.num_workers, data.lanes, recorded_lanes, key)
        return Source(config, urls=urls, cache=cache, lanes=lanes)
    pairs = read_manifest(data.manifest)
    stream = MixedStream([p.modality for p in pairs], data.video_fraction, config.seed)  # refuses a missing modality
    batch = config.batch_size * num_processes
    if batch > len(pairs):
        raise FlexIPError(
            f"config batch_size: {config.batch_size} per process x {num_processes} processes = {batch} pairs a "
            f"step, more than the manifest's {len(pairs)} ({data.manifest}); use at most "
            f"{max(len(pairs) // num_processes, 1)}, or add pairs"
        )
    return Source(config, pairs=pairs, stream=stream)


def validation_pairs(source: Source) -> list[Pair]:
    """The pairs the validation sheet may take references from: the manifest, or the first shards' samples."""
    if source.pairs is not None:
        return source.pairs
    pairs, seen = [], set()
    for url in source.urls[:VALIDATION_SHARDS]:
        # A damaged shard or sample: the data loader reports it; the sheet takes the next one.
        with contextlib.suppress(*SHARD_ERRORS):
            for sample in itertools.islice(shard_samples(url), 64):
                try:
                    pair = pair_of(sample)
                except ValueError:
                    continue
                if pair.modality not in seen:
                    seen.add(pair.modality)
                    pairs.append(pair)
        if len(seen) == len(MODALITIES):
            break
    return pairs


def _load_images(sample: dict, pass_: int, rng: np.random.Generator, resolution: int, target_masks: bool) -> dict:
    return load_pair(pair_of(sample), rng, resolution, target_masks)


def data_loader(source: Source, accelerator, state: TrainingState) -> torch.utils.data.DataLoader:
    """Batches from the stream position `state` reached, this process's share of them."""
    config, data = source.config, source.config.data
    rank, world = accelerator.process_index, accelerator.num_processes
    target_masks = config.subject_loss_weight > 0
    if source.urls is None:
        sampler = MixedBatchSampler(source.stream, config.batch_size, state.samples, rank, world)
        dataset = PairDataset(source.pairs, data.resolution, config.seed, data.swap_captions, target_masks)
        loading, workers = {"batch_sampler": sampler, "collate_fn": collate}, data.num_workers
    else:
        if source.cache is not None:
            load = functools.partial(
                load_cached, variants=source.cache.variants, subject=target_masks, shapes=source.shapes
            )
            collate_batch = collate_cached
        else:
            load = functools.partial(_load_images, resolution=data.resolution, target_masks=target_masks)
            collate_batch = collate
        dataset = ShardBatches(
            source.urls, source.lanes.count, config.batch_size, data.video_fraction, config.seed,
            state.samples // config.batch_size, rank, world, state.stream.get("places"), load, collate_batch,
        )  # fmt: skip
        loading, workers = {"batch_size": None}, source.lanes.workers
    return torch.utils.data.DataLoader(
        dataset, **loading, num_workers=workers, worker_init_fn=ignore_stop_signals,
        pin_memory=accelerator.device.type == "cuda", prefetch_factor=data.prefetch_factor if workers else None,
    )  # fmt: skip
