"""A results directory: what `flexip eval generate` writes and `score`, `rank` and `curve` read
(docs/formats.md).

generation.json   every generation setting, the benchmark protocol and the label of the method
manifest.jsonl    one line per image the method makes: where it goes and what it shows
images/<variant>/<subject>/<NN>/<sample>.png
scores.jsonl      per-image metrics (`flexip eval score`)
summary.csv/.md   metric means per dial value and subject category
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from ..atomic import atomic_write_bytes
from ..errors import FlexIPError

GENERATION_FILE = "generation.json"
MANIFEST_FILE = "manifest.jsonl"
SCORES_FILE = "scores.jsonl"
SUMMARY_FILE = "summary"  # .csv and .md


@dataclass(frozen=True)
class PlannedImage:
    """One image of a method's results, as a line of manifest.jsonl."""

    image: str  # path relative to the results directory
    subject: str
    category: str
    prompt_index: int
    prompt: str
    reference: str  # the reference image the method saw
    real_images: tuple[str, ...]  # all the subject's real images (for --identity all)
    sample: str  # the seed, or the file name of an imported image
    dial: float | None  # the preservation value or adapter scale; None for a method without a dial


def readable_image(path: Path) -> bool:
    """Whether `path` is a whole image file (a truncated or garbled one is not): what counts as made."""
    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, SyntaxError, ValueError):  # PIL's errors for missing, truncated and garbled files
        return False
    return True


def write_json(path: Path, data: dict) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=1) + "\n").encode())


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(row) + "\n" for row in rows).encode())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_manifest(directory: Path, images: list[PlannedImage]) -> None:
    write_jsonl(
        directory / MANIFEST_FILE,
        [{**asdict(image), "real_images": list(image.real_images)} for image in images],
    )


def read_generation(directory: str | os.PathLike) -> tuple[dict, list[PlannedImage]]:
    """The generation settings and the manifest of a results directory."""
    directory = Path(directory)
    if not (directory / GENERATION_FILE).is_file() or not (directory / MANIFEST_FILE).is_file():
        raise FlexIPError(
            f"{directory} is not a results directory ({GENERATION_FILE} or {MANIFEST_FILE} is "
            "missing); make one with `flexip eval generate --out DIR`"
        )
    settings = json.loads((directory / GENERATION_FILE).read_text())
    images = [
        PlannedImage(**{**row, "real_images": tuple(row["real_images"])})
        for row in read_jsonl(directory / MANIFEST_FILE)
    ]
    return settings, images


def read_summary(directory: str | os.PathLike) -> list[dict]:
    """The rows of summary.csv over all categories, dial values as floats (None without a dial)."""
    path = Path(directory) / f"{SUMMARY_FILE}.csv"
    if not path.is_file():
        raise FlexIPError(f"{path} does not exist; run `flexip eval score {directory}` first")
    with path.open(newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["category"] == "all"]
    return [{**row, "dial": float(row["dial"]) if row["dial"] else None} for row in rows]
