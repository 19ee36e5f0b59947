"""Streaming webdataset shards (`data.shards`, `data.cache`) in lanes, with the ratio exact per batch and an
exact resume.

The shards are cut into `lanes` lanes: shard s belongs to lane s mod L, and global batch b is drawn from lane
b mod L. Process r of W takes batches r, r + W, ... (as from a manifest) and DataLoader worker k of K every K-th
of those, so with L a multiple of W * K each lane is read by one worker of one process: processes and workers
read disjoint shards, and together they yield the one-process stream, batch for batch. `fit_lanes` chooses L
(unless `data.lanes` pins it) and K, and a resume keeps the L its checkpoint records.

In a lane each modality has its own reader, which goes through the lane's shards pass after pass (a seeded
shard order per pass) and takes that modality's samples: position p of a batch takes the next sample of the
modality `modality_at(p)` names, so the image:video ratio is the manifest's, exact per batch. A reader's place
is (pass, shard slot in that pass's order, sample index in the shard); each batch carries its lane's places
after it, the trainer keeps those of the batches it consumed, and a resumed reader starts there: nothing seen
twice, nothing skipped, at batch granularity. A sample's augmentation is drawn from (seed, key, pass), not from
its stream position, so a feature cache can hold exactly the draws of the first passes (feature_cache.py).

Each reader reads the whole of its lane's shards and skips the other modality's samples undecoded: a lane's
bytes are read once per modality per pass.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from ..errors import FlexIPError
from ..models.config import MODALITIES
from .data import MAX_CONSECUTIVE_BAD, UNREADABLE, Pair, modality_at

Place = tuple[int, int, int]  # (pass, slot in the pass's shard order, index of the next sample in that shard)
START: Place = (0, 0, 0)
# What a damaged, truncated or unreachable shard raises while it is read (tarfile, webdataset, the OS).
SHARD_ERRORS = (OSError, EOFError, ValueError, tarfile.TarError)


def load_webdataset():
    """The webdataset module (the `train` and `prep` extras), imported only when shards are used, so that
    training from a manifest does not need it."""
    try:
        import webdataset
    except ImportError as e:
        raise FlexIPError("streaming shards needs webdataset: pip install 'flexip[train]'") from e
    return webdataset


def shard_urls(spec: str) -> list[str]:
    """The shards `spec` names: a folder (its .tar files, sorted), or anything webdataset opens (a path, a
    brace pattern, a `::`-joined list, a URL)."""
    folder = Path(spec).expanduser()
    if folder.is_dir():
        urls = [str(p) for p in sorted(folder.glob("*.tar")) if not p.name.startswith(".")]
        if not urls:
            raise FlexIPError(f"{spec}: the folder holds no .tar shards; write them with `flexip prep shards`")
        return urls
    urls = load_webdataset().shardlists.expand_urls(spec)
    missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not Path(u).is_file()]
    if missing:
        raise FlexIPError(
            f"{spec}: {len(missing)} of its {len(urls)} shards do not exist (e.g. {missing[0]}); check the path or "
            "brace pattern"
        )
    return urls


def lane_urls(urls: list[str], lanes: int, lane: int) -> list[str]:
    return urls[lane::lanes]


# Fitted lanes stop at 8 where the shards and readers allow more: a stream of 8 lanes resumes on 1, 2, 4 or 8
# readers (processes x workers), and more lanes would only need more shards.
FITTED_LANES = 8


@dataclass(frozen=True)
class Lanes:
    """How a stream is cut and read: `count` lanes, `workers` DataLoader workers per process, and `note`, the
    line that says so in the run's log."""

    count: int
    workers: int
    note: str


def fit_lanes(
    shards: int, processes: int, num_workers: int, pinned: int | None, recorded: int | None, where: str
) -> Lanes:
    """The lanes of a stream of `shards` shards (`where` names them) read by `processes` processes.

    Each lane has one reader in the whole job, so processes x workers must divide the lanes, and each lane needs
    a shard. A `pinned` count (data.lanes) is checked as it is; otherwise a resume keeps the count its checkpoint
    `recorded`, and a fresh run takes the most readers the shards allow (fewer workers than `num_workers` when
    the shards are fewer than processes x num_workers) times as many as fit up to FITTED_LANES and the shards.
    Workers are then the most, up to `num_workers`, whose readers divide the lanes (0 stays 0: the process reads).
    """
    if pinned is not None:
        count, why = _check_pinned(shards, processes * max(num_workers, 1), pinned, recorded, where)
    elif recorded is not None:
        count, why = _check_recorded(shards, processes, recorded, where), "the checkpoint's"
    else:
        if processes > shards:
            raise FlexIPError(
                f"{processes} processes need a shard each (each reads shards of its own), and {where} has {shards}; "
                f"cut the data into at least {processes} shards (`flexip prep shards --shard-size`) or launch fewer "
                "processes"
            )
        step = processes * min(max(num_workers, 1), shards // processes)
        count = step * max(1, min(FITTED_LANES, shards) // step)
        why = "fitted to the shards, processes and workers; data.lanes pins them"
    workers = max((k for k in range(1, num_workers + 1) if count % (processes * k) == 0), default=0)
    note = f"{where}: {_units(shards, 'shard')} in {_units(count, 'lane')} ({why}), "
    note += f"{_units(workers, 'DataLoader worker')} per process"
    if workers < num_workers:
        note += f" (data.num_workers asks {num_workers}, but each lane has one reader)"
    return Lanes(count, workers, note)


def _units(number: int, unit: str) -> str:
    return f"{number} {unit}{'s' * (number != 1)}"


def _check_pinned(shards: int, readers: int, pinned: int, recorded: int | None, where: str) -> tuple[int, str]:
    if recorded is not None and pinned != recorded:
        raise FlexIPError(
            f"config data.lanes: {pinned}, but the checkpoint's stream was cut into {recorded} lanes; resume "
            f"with --set data.lanes={recorded}, or null (which keeps the checkpoint's)"
        )
    if pinned % readers:
        raise FlexIPError(
            f"config data.lanes: {pinned} is not a multiple of the {readers} readers (processes x DataLoader "
            f"workers); set data.lanes to a multiple of {readers}, or to null to fit it to the shards and readers"
        )
    if shards < pinned:
        raise FlexIPError(
            f"config data.lanes: {pinned} lanes need at least as many shards, {where} has {shards}; set data.lanes "
            "to null (fitted to the shards) or cut the data into more shards (`flexip prep shards --shard-size`)"
        )
    return pinned, "pinned by data.lanes"


def _check_recorded(shards: int, processes: int, recorded: int, where: str) -> int:
    if recorded % processes:
        raise FlexIPError(
            f"the checkpoint's stream was cut into {recorded} lanes, which {processes} processes cannot share "
            f"(each reads lanes of its own); resume with a number of processes that divides {recorded}"
        )
    if shards < recorded:
        raise FlexIPError(
            f"the checkpoint's stream was cut into {recorded} lanes, and {where} has {_units(shards, 'shard')}; "
            "resume with the shards it was trained on"
        )
    return recorded


def key_number(key: str) -> int:
    """A sample key as a 63-bit number, for seeding its draws."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") >> 1


def _field(sample: dict, name: str) -> str:
    """A text field of the sample's JSON; ValueError when the JSON or the field is missing or malformed."""
    meta = json.loads(sample.get("json", b"{}"))
    value = meta.get(name) if isinstance(meta, dict) else None
    if not isinstance(value, str):
        raise ValueError(f"the sample's JSON has no {name}")  # noqa: TRY004 (a bad sample: replaced and counted)
    return value


def sample_modality(sample: dict) -> int:
    """The modality index a shard sample's JSON names (ValueError if it names none)."""
    modality = _field(sample, "modality")
    if modality not in MODALITIES:
        raise ValueError(f"modality {modality!r} is not one of {', '.join(MODALITIES)}")
    return MODALITIES.index(modality)


def pair_of(sample: dict) -> Pair:
    """The training pair a shard sample holds (docs/formats.md: an invariant pair stores its target only);
    ValueError for a sample without a target, a caption or a known modality, or a video pair without its
    reference."""
    files = {name.split(".", 1)[0]: data for name, data in sample.items() if not name.startswith("__") and "." in name}
    if "target" not in files:
        raise ValueError("the sample has no target image")
    caption, modality = _field(sample, "caption"), sample_modality(sample)
    if modality != MODALITIES.index("image") and "reference" not in files:
        raise ValueError(f"the {MODALITIES[modality]} pair has no reference image")
    return Pair(
        reference=files.get("reference", files["target"]), target=files["target"], caption=caption,
        modality=modality, mask=files.get("mask"),
    )  # fmt: skip


def shard_samples(url: str) -> Iterator[dict]:
    """The samples of one shard in order, each a dict of its files' bytes plus `__key__`."""
    return load_webdataset().tariterators.tarfile_samples([{"url": url}])


class LaneReader:
    """One lane's samples of one modality, pass after pass, from a place (`Place`) on.

    `next()` returns (sample or None, pass, the place after it, problem or None): None and a problem for a
    sample or shard that cannot be read, which the caller counts and replaces.
    """

    def __init__(self, urls: list[str], modality: int, seed: int, lane: int, place: Place = START):
        self.urls, self.modality, self.seed, self.lane = urls, modality, seed, lane
        self.place = place  # after the last sample returned
        self._items = self._read(place)

    def _order(self, pass_: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 3, self.lane, self.modality, pass_]).permutation(len(self.urls))

    def _read(self, place: Place):
        pass_, slot, start = place
        while True:
            whole, found = (slot, start) == (0, 0), False  # the pass is read from its start; a sample found in it
            order = self._order(pass_)
            while slot < len(order):
                url = self.urls[order[slot]]
                index = -1
                try:
                    for index, sample in enumerate(shard_samples(url)):
                        if index < start:
                            continue
                        try:
                            match = sample_modality(sample) == self.modality
                        except ValueError as e:
                            yield None, pass_, (pass_, slot, index + 1), f"{url} sample {sample.get('__key__')}: {e}"
                            continue
                        if match:
                            found = True
                            yield sample, pass_, (pass_, slot, index + 1), None
                except SHARD_ERRORS as e:
                    yield None, pass_, (pass_, slot + 1, 0), f"{url} is unreadable after sample {index + 1} ({e})"
                slot, start = slot + 1, 0
            if whole and not found:
                raise FlexIPError(
                    f"lane {self.lane}'s {len(self.urls)} shards (e.g. {self.urls[0]}) hold no "
                    f"{MODALITIES[self.modality]} pairs: pin data.lanes lower, reshuffle the shards, or set "
                    "data.video_fraction to 0 or 1"
                )
            pass_, slot = pass_ + 1, 0

    def next(self) -> tuple[dict | None, int, Place, str | None]:
        item = next(self._items)
        self.place = item[2]
        return item


class ShardBatches(torch.utils.data.IterableDataset):
    """This process's batches from the shards, from global batch `start_batch` on; see the module docstring.

    `load(sample, pass, rng)` turns a shard sample into a training sample; it raises one of `UNREADABLE` for a
    sample that cannot be used, which is replaced by the next sample of its modality in the lane and counted.
    `collate` makes the batch, which also carries `lanes`: {lane: {modality name: place after the batch}}.
    """

    def __init__(
        self, urls: list[str], lanes: int, batch_size: int, video_fraction: float, seed: int, start_batch: int,
        rank: int, world_size: int, places: dict[str, dict[str, list[int]]] | None,
        load: Callable[[dict, int, np.random.Generator], dict], collate: Callable[[list[dict]], dict],
    ):  # fmt: skip
        self.urls, self.lanes, self.batch_size, self.seed = urls, lanes, batch_size, seed
        self.fraction = Fraction(str(video_fraction))
        self.start_batch, self.rank, self.world_size = start_batch, rank, world_size
        self.places, self.load, self.collate = places or {}, load, collate

    def _reader(self, lane: int, modality: int) -> LaneReader:
        place = self.places.get(str(lane), {}).get(MODALITIES[modality], START)
        return LaneReader(lane_urls(self.urls, self.lanes, lane), modality, self.seed, lane, tuple(place))

    def _sample(self, reader: LaneReader, position: int, skipped: list[str]) -> dict:
        for _ in range(MAX_CONSECUTIVE_BAD):
            sample, pass_, _, problem = reader.next()
            if sample is not None:
                rng = np.random.default_rng([self.seed, key_number(sample["__key__"]), pass_])
                try:
                    return {**self.load(sample, pass_, rng), "position": position}
                except UNREADABLE as e:
                    problem = f"{sample.get('__url__')} sample {sample['__key__']}: {e}"
            skipped.append(problem)
        raise FlexIPError(
            f"{len(skipped)} training samples in a row are unreadable, e.g. {skipped[0]}; check the shards"
        )

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        readers: dict[int, list[LaneReader]] = {}
        for nth in range(worker, 2**62, workers):  # this worker's share of the process's batches
            batch = self.start_batch + self.rank + nth * self.world_size
            lane = batch % self.lanes
            if lane not in readers:
                readers[lane] = [self._reader(lane, m) for m in range(len(MODALITIES))]
            skipped, samples = [], []
            first = batch * self.batch_size
            for position in range(first, first + self.batch_size):
                modality, _ = modality_at(position, self.fraction)
                samples.append(self._sample(readers[lane][modality], position, skipped))
            collated = self.collate(samples)
            collated["skipped"] = skipped
            collated["lanes"] = {str(lane): {MODALITIES[m]: list(r.place) for m, r in enumerate(readers[lane])}}
            yield collated
