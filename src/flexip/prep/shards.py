"""`flexip prep shards`: manifests -> webdataset tar shards that a trainer can stream (docs/formats.md).

The rows of all inputs are put in one seeded shuffled order (so each shard mixes sources and modalities) and cut
into shards of `shard_size` samples: shard i holds positions i*size .. (i+1)*size - 1, its samples keyed by
position. `shards.json` records the plan; a re-run with the same inputs keeps every finished shard, and the
shards are split between processes in contiguous blocks. Each shard is written under a temporary name and
renamed when complete, so a shard that exists is whole. Image files are copied byte for byte (no re-encoding).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..atomic import atomic_write_bytes, check_writable
from ..errors import FlexIPError
from ..manifest import PATH_FIELDS, read_manifest_records
from .progress import Summary, problem, report_path
from .split import Part, part_path

FORMAT = "flexip-shards"
FORMAT_VERSION = 1
INDEX = "shards.json"
SHUFFLE_SEED = 0  # fixed: the same inputs always give the same shards, whoever writes them


def shard_name(index: int) -> str:
    return f"{index:06d}.tar"


def write_shards(
    manifests: list[Path], out: Path, *, shard_size: int = 1000, part: Part = Part(), overwrite: bool = False
) -> Summary:
    """Write this process's shards of `manifests` into the folder `out`; the report is `<out>.report.jsonl`."""
    import webdataset

    if shard_size < 1:
        raise FlexIPError(f"--shard-size {shard_size}: give 1 or more samples per shard")
    out = check_writable(Path(out), "--out")
    if out.exists() and not out.is_dir():
        raise FlexIPError(f"--out {out} is a file; give a folder for the shards")
    given = [Path(m).resolve() for m in manifests]
    if twice := next((m for i, m in enumerate(manifests) if given[i] in given[:i]), None):
        raise FlexIPError(f"manifest {twice} is given twice: its pairs would be packed twice; give it once")
    entries = [(Path(m).parent, row) for m in manifests for row in read_manifest_records(m)]
    order = np.random.default_rng(SHUFFLE_SEED).permutation(len(entries))
    count = math.ceil(len(entries) / shard_size)
    plan = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "shard_size": shard_size, "samples": len(entries),
        "shards": count, "pattern": f"{{{shard_name(0)[:-4]}..{shard_name(count - 1)[:-4]}}}.tar",
        "shuffle_seed": SHUFFLE_SEED, "modalities": dict(Counter(row["modality"] for _, row in entries)),
        "inputs": [{"manifest": str(m), "sha256": hashlib.sha256(Path(m).read_bytes()).hexdigest()} for m in manifests],
    }  # fmt: skip
    _claim(out, plan, overwrite)

    report = report_path(part_path(out, part.rank, part.world_size) if part.world_size > 1 else out)
    block = part.block(count)
    done = [] if overwrite else [i for i in block if (out / shard_name(i)).exists()]
    if not done:
        report.unlink(missing_ok=True)  # a fresh start of this part: an earlier report is of other shards
    problems, written = Counter(), 0
    with tqdm(total=len(block), initial=len(done), desc=f"shards{part.label}", unit="shard") as bar:
        for index in (i for i in block if i not in done):
            positions = range(index * shard_size, min((index + 1) * shard_size, len(entries)))
            tmp = out / f".tmp-{shard_name(index)}"  # one writer per shard; a killed run's leftover is overwritten
            skipped = []
            # 0o666: the kernel applies the user's umask, as for any file they create.
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666), "wb") as file:
                # mtime 0: the same inputs give byte-identical shards, whichever process or day writes them.
                with webdataset.TarWriter(file, encoder=False, mtime=0.0) as tar:
                    for position in positions:
                        root, row = entries[order[position]]
                        try:
                            tar.write(_sample(position, root, row))
                            written += 1
                        except OSError as e:
                            skipped.append(problem(e.filename or root, "missing", f"{e.strerror}; sample skipped"))
            os.replace(tmp, out / shard_name(index))
            if skipped:
                with open(report, "a") as log:
                    log.writelines(json.dumps(p) + "\n" for p in skipped)
                problems.update(p["kind"] for p in skipped)
            bar.update()
    planned_done = sum(min(shard_size, len(entries) - i * shard_size) for i in done)
    return Summary(out, len(block), len(done), written + planned_done, problems, complete=True)


def read_index(path: Path) -> dict:
    """A shard folder's `shards.json`, checked enough to be read; FlexIPError naming it if it is damaged."""
    try:
        plan = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FlexIPError(f"{path} is damaged ({e}); write them again: prep shards --overwrite") from e
    if not isinstance(plan, dict) or not isinstance(plan.get("shards"), int) or plan["shards"] < 0:
        raise FlexIPError(f"{path} is damaged (not a shard plan); write them again: prep shards --overwrite")
    return plan


def _claim(out: Path, plan: dict, overwrite: bool) -> None:
    """Write `shards.json`, or check that the one there is this plan's: a re-run must not mix two corpora."""
    index = out / INDEX
    if index.exists() and not overwrite:
        earlier = read_index(index)
        if earlier != plan:
            raise FlexIPError(
                f"{_difference(earlier, plan)} ({index}); run it again with the same manifests and "
                "--shard-size to resume, pass --overwrite to replace the shards, or choose another folder"
            )
        return
    if not index.exists() and not overwrite and out.is_dir():
        if others := [p.name for p in out.iterdir() if not p.name.startswith(".")]:
            raise FlexIPError(
                f"--out {out} is not empty (e.g. {others[0]}) and holds no {INDEX}; give an empty or new folder, "
                "or pass --overwrite"
            )
    atomic_write_bytes(index, (json.dumps(plan, indent=1) + "\n").encode())


def _difference(earlier: dict, plan: dict) -> str:
    """What differs between the plan of the shards in a folder and this run's, for the refusal."""
    size, earlier_size = plan["shard_size"], earlier.get("shard_size")
    if earlier_size != size:
        return f"--shard-size {size} differs from the earlier run's --shard-size {earlier_size}"
    names = ", ".join(entry["manifest"] for entry in plan["inputs"])
    inputs = earlier.get("inputs") if isinstance(earlier.get("inputs"), list) else []
    earlier_names = ", ".join(str(entry.get("manifest")) for entry in inputs if isinstance(entry, dict))
    if earlier_names != names:
        return f"manifests {names} differ from the earlier run's manifests {earlier_names}"
    if earlier.get("inputs") != plan["inputs"]:
        return f"manifests {names} changed since the earlier run packed them"
    return f"the shards there follow another plan (format version {earlier.get('format_version')})"


def _sample(position: int, root: Path, row: dict) -> dict:
    """One webdataset sample: the pair's files as they are on disk, and the row's other fields as JSON."""
    sample = {"__key__": f"{position:09d}"}
    names = {"target": row["target"], "mask": row.get("mask")}
    if row["reference"] != row["target"]:
        names["reference"] = row["reference"]  # an invariant pair's reference is its target: stored once
    for name, path in names.items():
        if path:
            suffix = Path(path).suffix.lower().lstrip(".") or "png"
            sample[f"{name}.{suffix}"] = (root / path).read_bytes()
    sample["json"] = json.dumps({k: v for k, v in row.items() if k not in PATH_FIELDS}).encode()
    return sample
