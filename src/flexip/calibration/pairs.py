"""The calibration set: (reference image, prompt) pairs, read from a training manifest or a benchmark, or built
by a caller (a training run's validation pairs, the demo world's). Nothing here imports torch.

A manifest gives each line's reference and caption (docs/formats.md, "Training manifest"; lines with an empty
caption are left out: prompt following is not measured on the null prompt), a benchmark each case's reference
and prompt (the layouts `flexip eval generate` reads). A pair that repeats (a clip's first frame with each later
frame, one caption) counts once. A cap keeps pairs spread evenly over the file, so that a manifest sorted by
subject gives many subjects rather than the first one's.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..errors import FlexIPError
from ..evaluation.benchmarks import load_benchmark
from ..manifest import read_manifest_records
from ..pipeline.images import load_reference_image
from ..text_files import read_jsonl

KINDS = (
    "a training manifest (JSONL of reference, caption, ...) or a benchmark (a JSONL of subject, reference, "
    "prompt; a DreamBench or DreamBench++ folder)"
)


@dataclass(frozen=True)
class Pair:
    reference: Image.Image = field(repr=False)  # RGB
    prompt: str
    name: str  # where the reference comes from (its path), for people


@dataclass(frozen=True)
class PairSet:
    pairs: tuple[Pair, ...]
    description: str  # what the calibration records of them (`Calibration.pair_set`)

    def __len__(self) -> int:
        return len(self.pairs)

    def fingerprint(self) -> str:
        """A digest of every reference's pixels and every prompt, in order: the same pairs give the same one
        wherever their files are."""
        digest = hashlib.sha256()
        for pair in self.pairs:
            digest.update(f"{pair.reference.size}|{len(pair.prompt)}|{pair.prompt}|".encode())
            digest.update(pair.reference.tobytes())
        return digest.hexdigest()


def evenly(items: list, count: int | None) -> list:
    """At most `count` of `items`, spread evenly from the first (all of them without a count)."""
    if count is None or count >= len(items):
        return list(items)
    return [items[index * len(items) // count] for index in range(count)]


def read_pairs(data: str | os.PathLike, count: int | None = None) -> PairSet:
    """The pairs of `data` (a training manifest or a benchmark), at most `count`, their references loaded."""
    path = Path(data)
    if not path.exists():
        raise FlexIPError(f"calibration data {path} does not exist; give {KINDS}")
    kind, found = _benchmark_pairs(path) if path.is_dir() or not _is_manifest(path) else _manifest_pairs(path)
    found = [pair for pair in dict.fromkeys(found) if pair[1].strip()]
    if not found:
        raise FlexIPError(f"calibration data {path} has no pair with a prompt; give {KINDS}")
    chosen = evenly(found, count)
    pairs = tuple(Pair(load_reference_image(reference), prompt, reference) for reference, prompt in chosen)
    spread = "" if len(chosen) == len(found) else ", evenly spaced"
    return PairSet(pairs, f"{kind} {path.resolve()}: {len(chosen)} of {len(found)} pairs{spread}")


def _is_manifest(path: Path) -> bool:
    """Whether a JSONL file is a training manifest (its lines have captions) rather than a benchmark (prompts)."""
    rows = read_jsonl(path, f"give {KINDS}", what="calibration data")
    if rows and "caption" in rows[0][1]:
        return True
    if rows and "prompt" in rows[0][1]:
        return False
    raise FlexIPError(
        f"calibration data {path} is neither: its lines have no caption nor prompt; give {KINDS}"
    )


def _manifest_pairs(path: Path) -> tuple[str, list[tuple[str, str]]]:
    records = read_manifest_records(path)
    return "training manifest", [
        (str(path.parent / record["reference"]), record["caption"]) for record in records
    ]


def _benchmark_pairs(path: Path) -> tuple[str, list[tuple[str, str]]]:
    if path.is_file():
        layout = "jsonl"
    elif (path / "prompts.json").is_file():
        layout = "dreambench"
    elif (path / "images").is_dir() and (path / "captions").is_dir():
        layout = "dreambench++"
    else:
        raise FlexIPError(f"calibration data {path} is a folder but no benchmark; give {KINDS}")
    benchmark = load_benchmark(layout, path)
    return f"benchmark ({layout})", [(case.reference, case.prompt) for case in benchmark.cases]
