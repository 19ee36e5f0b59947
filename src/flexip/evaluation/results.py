"""A results directory: what `flexip eval generate` writes and `score`, `rank` and `curve` read
(docs/formats.md).

generation.json   every generation setting, the benchmark protocol and the label of the method
manifest.jsonl    one line per image the method makes: where it goes and what it shows
images/<variant>/<subject>/<NN>/<sample>.png
scores.jsonl      per-image metrics (`flexip eval score`)
summary.csv/.md   metric means per dial value and subject category
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from PIL import Image

from ..atomic import atomic_write_bytes
from ..errors import FlexIPError
from ..text_files import read_json_object, read_jsonl

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


def write_manifest(directory: Path, images: list[PlannedImage]) -> None:
    write_jsonl(
        directory / MANIFEST_FILE,
        [{**asdict(image), "real_images": list(image.real_images)} for image in images],
    )


REMAKE = "run the same `flexip eval generate` again to write it anew (it keeps the images)"
# generation.json's keys that scoring reads, and the type each must have
SETTINGS_TYPES = {"label": str, "method": str, "dial_name": (str, type(None)), "benchmark": dict}


def read_settings(directory: str | os.PathLike) -> dict:
    """A results directory's generation.json, checked for what scoring reads."""
    directory = Path(directory)
    if not (directory / GENERATION_FILE).is_file() or not (directory / MANIFEST_FILE).is_file():
        raise FlexIPError(
            f"{directory} is not a results directory ({GENERATION_FILE} or {MANIFEST_FILE} is "
            "missing); make one with `flexip eval generate --out DIR`"
        )
    path = directory / GENERATION_FILE
    settings = read_json_object(path, REMAKE)
    for key, kind in SETTINGS_TYPES.items():
        if key not in settings:
            raise FlexIPError(f"{path} has no {key!r}; {REMAKE}")
        if not isinstance(settings[key], kind):
            raise FlexIPError(f"{path}: {key} is {settings[key]!r}, of the wrong type; {REMAKE}")
    if not isinstance(settings["benchmark"].get("name"), str):
        raise FlexIPError(f"{path}: benchmark has no name; {REMAKE}")
    return settings


def _text(value) -> bool:
    return isinstance(value, str)


def _index(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _paths(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, str) for item in value)


def _dial(value) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return value is None or (number and math.isfinite(value))


def _inside(value) -> bool:
    return isinstance(value, str) and not Path(value).is_absolute() and ".." not in Path(value).parts


# Each manifest field: (a check of its value, what the value must be)
FIELD_CHECKS = {
    "image": (_inside, "a path inside the results directory"),
    "subject": (_text, "text"),
    "category": (_text, "text"),
    "prompt_index": (_index, "an integer >= 0"),
    "prompt": (_text, "text"),
    "reference": (_text, "a path"),
    "real_images": (_paths, "a list of paths"),
    "sample": (_text, "text"),
    "dial": (_dial, "a finite number or null"),
}


def _planned_image(row: dict, where: str) -> PlannedImage:
    names = [field.name for field in fields(PlannedImage)]
    missing = [name for name in names if name not in row]
    unknown = [name for name in row if name not in names]
    if missing or unknown:
        problem = f"missing {missing}" if missing else f"unknown {unknown}"
        raise FlexIPError(f"{where}: {problem}; each line has {', '.join(names)}; {REMAKE}")
    for name, (check, meaning) in FIELD_CHECKS.items():
        if not check(row[name]):
            raise FlexIPError(f"{where}: {name} is {row[name]!r}, not {meaning}; {REMAKE}")
    return PlannedImage(**{**row, "real_images": tuple(row["real_images"])})


def read_manifest(directory: str | os.PathLike) -> list[PlannedImage]:
    """The images a results directory's manifest.jsonl lists, each line checked. Two lines naming the same
    image are refused, as a hand edit that would count the image twice in every mean."""
    path = Path(directory) / MANIFEST_FILE
    images, first = [], {}
    for where, row in read_jsonl(path, REMAKE):
        image = _planned_image(row, where)
        if image.image in first:
            raise FlexIPError(
                f"{where} lists {image.image} again (first on line {first[image.image]}); keep one line per "
                f"image, or {REMAKE}"
            )
        first[image.image] = where.rpartition(":")[2]
        images.append(image)
    return images


def read_generation(directory: str | os.PathLike) -> tuple[dict, list[PlannedImage]]:
    """The generation settings and the manifest of a results directory."""
    return read_settings(directory), read_manifest(directory)
