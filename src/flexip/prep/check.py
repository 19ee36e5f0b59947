"""`flexip prep check`: what a manifest or a shard folder holds, and what is wrong with it.

Errors are what would make training fail or silently lose data: a malformed manifest, a file it names that is
missing, a shard that cannot be read or a sample without its target or metadata, a planned shard that is not
there. Missing captions are reported but are not errors (they may simply not be written yet).
"""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FlexIPError
from ..manifest import PATH_FIELDS, read_manifest_records
from ..models.config import MODALITIES
from .shards import INDEX, read_index, shard_name

SHOWN = 3  # example problems named per input


@dataclass
class Check:
    """What one input holds (`facts`, a line for people) and its errors."""

    path: Path
    facts: str = ""
    errors: list[str] = field(default_factory=list)


def check(paths: list[Path]) -> list[Check]:
    results = []
    for path in map(Path, paths):
        if path.is_dir() or path.suffix == ".tar":
            results.append(check_shards(path))
        elif not path.exists():
            results.append(Check(path, errors=[f"{path} does not exist"]))
        else:
            results.append(check_manifest(path))
    return results


def _mix(modalities: Counter, total: int, captioned: int) -> str:
    shares = ", ".join(f"{name} {modalities.get(name, 0)} ({modalities.get(name, 0) / max(total, 1):.0%})" for name in MODALITIES)
    return f"{shares}; captioned {captioned}/{total}"


def check_manifest(path: Path) -> Check:
    result = Check(path)
    try:
        rows = read_manifest_records(path)
    except FlexIPError as e:
        result.errors.append(str(e))
        return result
    files, missing = set(), []
    for number, row in enumerate(rows, start=1):
        for name in PATH_FIELDS:
            if name in row:
                file = path.parent / row[name]
                if file not in files and not file.is_file():
                    missing.append(f"line {number}: {name} {row[name]} not found")
                files.add(file)
    size = sum(f.stat().st_size for f in files if f.is_file())
    kinds = Counter(str(row.get("kind", "unknown")) for row in rows)  # a field readers ignore: any JSON value
    captioned = sum(bool(row["caption"].strip()) for row in rows)
    result.facts = (
        f"{len(rows)} pairs: {_mix(Counter(r['modality'] for r in rows), len(rows), captioned)}; kinds "
        f"{', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))}; {len({r.get('source') for r in rows})} sources; "
        f"{len(files)} files, {size / 1e6:.1f} MB"
    )
    if missing:
        result.errors.append(f"{len(missing)} missing files, e.g. {'; '.join(missing[:SHOWN])}")
    return result


def check_shards(path: Path) -> Check:
    result = Check(path)
    if path.is_dir():
        tars = sorted(path.glob("*.tar"))
        index = path / INDEX
        if index.is_file():
            try:
                plan = read_index(index)
            except FlexIPError as e:
                result.errors.append(str(e))
            else:
                # Counted from the shards present, not by visiting every planned one: the count may be edited.
                planned = plan["shards"]
                indices = (int(tar.stem) for tar in tars if tar.stem.isdigit())
                present = {shard_name(i) for i in indices if i < planned} & {tar.name for tar in tars}
                if missing := planned - len(present):
                    first = range(min(planned, len(present) + SHOWN))  # holds SHOWN missing ones, or all
                    names = [shard_name(i) for i in first if shard_name(i) not in present]
                    example = ", ".join(names[:SHOWN])
                    result.errors.append(f"{missing} of {planned} planned shards missing, e.g. {example}")
        if not tars:
            result.errors.append(f"no .tar shards in {path}")
            return result
    else:
        tars = [path]
    modalities, samples, captioned, size, bad = Counter(), 0, 0, 0, []
    for tar in tars:
        try:
            with tarfile.open(tar) as archive:
                groups: dict[str, dict[str, tarfile.TarInfo]] = {}
                for member in (m for m in archive.getmembers() if m.isfile()):
                    key, _, extension = member.name.partition(".")
                    groups.setdefault(key, {})[extension] = member
                for key, members in groups.items():
                    samples += 1
                    size += sum(m.size for m in members.values())
                    if not any(e.startswith("target.") for e in members) or "json" not in members:
                        bad.append(f"{tar.name}:{key} lacks its target or json")
                        continue
                    meta = json.loads(archive.extractfile(members["json"]).read())
                    if not isinstance(meta, dict):
                        bad.append(f"{tar.name}:{key} json is not an object")
                        continue
                    if meta.get("modality") not in MODALITIES or not isinstance(meta.get("caption"), str):
                        bad.append(f"{tar.name}:{key} json needs a caption and a modality in {MODALITIES}")
                        continue
                    modalities[meta["modality"]] += 1
                    captioned += bool(meta["caption"].strip())
        except (tarfile.TarError, OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            bad.append(f"{tar.name} is unreadable ({e})")
    result.facts = f"{len(tars)} shards, {samples} samples: {_mix(modalities, samples, captioned)}; {size / 1e6:.1f} MB"
    if bad:
        result.errors.append(f"{len(bad)} bad samples or shards, e.g. {'; '.join(bad[:SHOWN])}")
    return result
